export * from './drivers/pipeline';
export * from './drivers/types';
