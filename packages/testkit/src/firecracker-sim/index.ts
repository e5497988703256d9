export { type SimulatorBinaryOptions, writeJailerBinary, writeSimulatorBinary } from './binary';
export { type FcResponse, fcRequest } from './client';
export { GUEST_PAGE_SIZE } from './guest-memory';
export { independentSpecValidator } from './independent-validator';
export {
  appendJournal,
  type JournalEntry,
  type JournalEvent,
  type JournalRequest,
  journalRequests,
  readJournal,
  type SimPhase,
} from './journal';
export { tinyElfKernel, writeTinyElfKernel } from './kernel-fixture';
export { type LaunchedSim, type LaunchOptions, launchSimulator } from './launch';
export {
  type BodyValidator,
  createBodyValidator,
  FIRECRACKER_SIM_VERSIONS,
  type FirecrackerSimVersion,
  type FirecrackerSpec,
  firecrackerSpecPath,
  isSimVersion,
  loadFirecrackerSpec,
  matchOperation,
  type SpecOperation,
  strictSchema,
} from './spec';
export { GUEST_TICK_MS, type GuestState, RING_PAGES, readGuestTick } from './ticking-guest';
