export * from './firecracker-sim';
export * from './guest';
export * from './processes';
