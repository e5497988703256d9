export * from '@nqvm/api/kernel';
export * from './agent';
export * from './config';
export * from './drivers/firecracker';
export * from './drivers/pipeline';
export * from './drivers/types';
