export {
  type CommandResult,
  execIn,
  httpGet,
  NetnsLab,
  runIn,
  sweepStaleNamespaces,
  type VethEnd,
} from './netns-lab';
