export * from './byte-ring';
export * from './console-hub';
export * from './console-log';
