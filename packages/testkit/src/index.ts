export * from './firecracker-sim';
export * from './guest';
export * from './netns';
export * from './oci-registry';
export * from './processes';
