import { describe, expect, it } from 'vitest';
import { takenPorts } from './listeners';

const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:D2A4 0100007F:1538 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
`;
const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
`;
const udp = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 014D000A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   108        0 5 2 0000000000000000 0
`;

describe('takenPorts', () => {
  it('lists listening TCP ports (not connections) and bound UDP ports', () => {
    expect(takenPorts(tcp, 'tcp')).toEqual(new Set([8080, 5432]));
    expect(takenPorts(tcp6, 'tcp')).toEqual(new Set([22]));
    expect(takenPorts(udp, 'udp')).toEqual(new Set([53]));
    expect(takenPorts('', 'tcp')).toEqual(new Set());
  });
});
