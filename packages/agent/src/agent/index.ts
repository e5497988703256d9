export { AGENT_VERSION, type Agent, type AgentOptions, type AgentStopReason, createAgent } from './agent';
export { AGENT_BODY_LIMIT, buildAgentApi, CONSOLE_TAIL_DEFAULT, CONSOLE_TAIL_MAX } from './api';
export { DriverSet } from './driver-set';
export { AgentIdentity, identityPath, loadIdentity, saveIdentity } from './identity';
export type { AgentLogger } from './logger';
export { ManagerClient, ManagerRequestError, parseJoinToken } from './manager-client';
export type { ConsoleOpener, VmConsole } from './vm-console';
export { DEFAULT_RESTART_BACKOFF, type RestartBackoff } from './vm-runtime';
