/** Everything the HTTP routes and background loops share, built once per manager. */

import type { AuditLog } from './audit/audit';
import type { LoginThrottle } from './auth/throttle';
import type { Users } from './auth/users';
import type { ManagerConfig } from './config';
import type { Containers } from './containers/containers';
import type { Datastore } from './db/datastore';
import type { EventBus } from './events/bus';
import type { AgentClient } from './hosts/agent-client';
import type { Hosts } from './hosts/hosts';
import type { ManagerKey } from './hosts/manager-key';
import type { ImageService } from './images/image-service';
import type { ManagerMetrics } from './metrics/manager-metrics';
import type { Networks } from './networks/networks';
import type { PortForwards } from './networks/port-forwards';
import type { Operations } from './operations/operations';
import type { Reconciler } from './reconciler/reconciler';
import type { Scheduler } from './scheduler/scheduler';
import type { Snapshots } from './snapshots/snapshots';
import type { Templates } from './templates/templates';
import type { Vms } from './vms/vms';
import type { Volumes } from './volumes/volumes';

export interface Services {
  config: ManagerConfig;
  store: Datastore;
  bus: EventBus;
  ops: Operations;
  vms: Vms;
  images: ImageService;
  volumes: Volumes;
  templates: Templates;
  snapshots: Snapshots;
  containers: Containers;
  networks: Networks;
  portForwards: PortForwards;
  users: Users;
  hosts: Hosts;
  audit: AuditLog;
  throttle: LoginThrottle;
  managerKey: ManagerKey;
  scheduler: Scheduler;
  agents: AgentClient;
  reconciler: Reconciler;
  metrics: ManagerMetrics;
  version: string;
}
