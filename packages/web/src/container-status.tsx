/** How a container's status and ports read in lists and pages. */
import type { Container, ContainerStatus } from './types';
import { Badge, type Tone } from './ui';

/** Statuses in the order the filter offers them. */
export const CONTAINER_STATUSES: ContainerStatus[] = [
  'running',
  'paused',
  'starting',
  'created',
  'exited',
  'failed',
];

const STATUS_TONE: Record<ContainerStatus, Tone> = {
  created: 'muted',
  starting: 'busy',
  running: 'ok',
  paused: 'warn',
  exited: 'muted',
  failed: 'err',
};

/** The status; an exit shows its code, red when it is not 0. */
export function ContainerStatusBadge({ c }: { c: Pick<Container, 'status' | 'exit_code'> }) {
  const exited = c.status === 'exited' && c.exit_code !== null;
  const tone = exited && c.exit_code !== 0 ? 'err' : STATUS_TONE[c.status];
  return (
    <Badge tone={tone} title={exited ? `the process exited with code ${c.exit_code}` : undefined}>
      <span className="dot" aria-hidden="true" />
      {exited ? `exited (${c.exit_code})` : c.status}
    </Badge>
  );
}

/** "8080→80/tcp" */
export const formatPort = (p: Container['ports'][number]) =>
  `${p.host_port}→${p.container_port}/${p.protocol}`;
