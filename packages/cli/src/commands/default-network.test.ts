import { describe, expect, it } from 'vitest';
import { hostRoutes, pickDefaultSubnet } from './default-network';

describe('the default network subnet', () => {
  it('is the first candidate that no route overlaps', () => {
    expect(pickDefaultSubnet([])).toBe('10.213.0.0/24');
    expect(pickDefaultSubnet([{ dst: 'default' }, { dst: '192.168.1.0/24' }])).toBe('10.213.0.0/24');
    expect(pickDefaultSubnet([{ dst: '10.213.0.0/16' }, { dst: '10.214.0.77' }])).toBe('10.215.0.0/24');
    expect(pickDefaultSubnet([{ dst: '10.0.0.0/8' }])).toBe('172.30.0.0/24');
    expect(pickDefaultSubnet([{ dst: '10.0.0.0/8' }, { dst: '172.16.0.0/12' }])).toBeNull();
  });

  it('avoids the routes of this machine', async () => {
    const routes = await hostRoutes();
    const picked = pickDefaultSubnet(routes);
    expect(picked).not.toBeNull();
    expect(pickDefaultSubnet([...routes, { dst: picked! }])).not.toBe(picked);
  });
});
