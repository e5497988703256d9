export { dnsmasqConf, parseLeases } from './dnsmasq';
export {
  type BlockingChain,
  type FirewallWarning,
  findBlockingChains,
  firewallWarnings,
} from './firewall-check';
export {
  type DiscoveredAddresses,
  type EnsuredNetwork,
  type EnsuredTap,
  type HostChange,
  HostNetwork,
  type HostNetworkOptions,
  nicSpec,
  type ReconcileFailure,
  type ReconcileReport,
} from './host-network';
export { HostCommandError, type HostRunner, hostRunner, inNetns, netnsPath } from './host-runner';
export { bridgeMac, HostNames, macFor } from './names';
export {
  type HostNetworkInput,
  HostNetworking,
  type HostNetworkingInput,
  HostNetworkSpec,
  type HostPortForwardInput,
  HostPortForwardSpec,
  type HostTapInput,
  HostTapSpec,
  NetworkKind,
} from './spec';
