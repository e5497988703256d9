export * from './agent-protocol';
export * from './errors';
export * from './schemas';
