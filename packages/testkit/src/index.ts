export * from './firecracker-sim';
export * from './guest';
