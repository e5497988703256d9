export * from './agent-protocol';
export * from './env';
export * from './errors';
export * from './request-signature';
export * from './schemas';
