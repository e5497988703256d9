export * from './build';
export * from './client';
export * from './errors';
export * from './protocol';
