export * from './byte-ring';
export * from './console-hub';
export * from './console-log';
export * from './console-room';
