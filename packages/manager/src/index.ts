export * from './config';
export { type Datastore, openDatastore } from './db/datastore';
export { dropAll } from './db/migrations';
export * from './manager';
