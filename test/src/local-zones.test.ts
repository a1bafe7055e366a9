import { describe, expect, it } from 'vitest';
import dnsPacket from 'dns-packet';
import { LocalZones, LocalZonesError, MAX_RECORDS, MAX_ZONES, parseZoneJson, gvproxyDefaultZones } from '../../src/local-zones.js';
import { LocalZonesDns } from '../../src/local-zones-dns.js';
import type { DnsTcpSession } from '../../src/dns-forward.js';
import type { DnsVia, GatewayDns, GatewayDnsStats } from '../../src/gateway-dns.js';

/** The gateway DNS behind the local zones: counts what reaches it (under an allowlist, the allowlist's DNS and its pins). */
class InnerDns implements GatewayDns {
  asked: string[] = [];
  async resolve(query: Uint8Array, _via: DnsVia): Promise<Uint8Array | undefined> {
    const q = dnsPacket.decode(Buffer.from(query));
    this.asked.push(`${q.questions![0]!.name}/${q.questions![0]!.type}`);
    return dnsPacket.encode({ type: 'response', id: q.id, flags: 0x8180 | 3, questions: q.questions });
  }
  openTcpSession(): DnsTcpSession {
    throw new Error('not used');
  }
  stats(): GatewayDnsStats {
    return { mode: 'allowlist', queries: this.asked.length, answered: this.asked.length };
  }
  async close(): Promise<void> {}
}

function query(name: string, type: 'A' | 'AAAA' | 'TXT' = 'A', id = 4242): Uint8Array {
  return dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });
}

async function ask(dns: LocalZonesDns, name: string, type: 'A' | 'AAAA' | 'TXT' = 'A') {
  const bytes = await dns.resolve(query(name, type), 'udp');
  return dnsPacket.decode(Buffer.from(bytes!));
}

const zone = (body: unknown) => parseZoneJson(body);

describe('local zones (gvproxy /services/dns semantics)', () => {
  it('answers a record, else the DefaultIP, else NXDOMAIN; TTL 0; the question echoed as sent (0x20)', async () => {
    const zones = new LocalZones(gvproxyDefaultZones('192.168.127.1', '192.168.127.254'));
    zones.add(zone({ Name: 'apps.test.', DefaultIP: '10.9.9.9', Records: [{ Name: 'api', IP: '10.1.1.1' }] }));
    const inner = new InnerDns();
    const dns = new LocalZonesDns(inner, zones);
    const host = await ask(dns, 'HoSt.Containers.Internal');
    expect(host.questions![0]!.name).toBe('HoSt.Containers.Internal');
    expect(host.id).toBe(4242);
    expect(host.rcode).toBe('NOERROR');
    expect(host.flags! & dnsPacket.RECURSION_DESIRED).toBeTruthy();
    expect(host.answers).toEqual([expect.objectContaining({ type: 'A', name: 'HoSt.Containers.Internal', ttl: 0, data: '192.168.127.254' })]);
    expect((await ask(dns, 'api.apps.test')).answers![0]!.data).toBe('10.1.1.1');
    expect((await ask(dns, 'anything.else.apps.test')).answers![0]!.data).toBe('10.9.9.9');
    const nx = await ask(dns, 'nobody.docker.internal');
    expect(nx.rcode).toBe('NXDOMAIN');
    expect(nx.answers).toEqual([]);
    // Nothing of that reached the gateway's own DNS.
    expect(inner.asked).toEqual([]);
  });

  it('other types, names outside every zone, and the zone apex go to the gateway DNS (gvproxy: upstream)', async () => {
    const inner = new InnerDns();
    const dns = new LocalZonesDns(inner, new LocalZones(gvproxyDefaultZones('192.168.127.1', '192.168.127.254')));
    await ask(dns, 'host.containers.internal', 'AAAA');
    await ask(dns, 'example.com');
    await ask(dns, 'containers.internal');
    expect(inner.asked).toEqual(['host.containers.internal/AAAA', 'example.com/A', 'containers.internal/A']);
  });

  it('adding to an existing zone puts the new records first and takes the new DefaultIP (gvproxy addZone); names match without the dot and case', () => {
    const zones = new LocalZones();
    zones.add(zone({ Name: 'x.test.', Records: [{ Name: 'a', IP: '10.0.0.1' }] }));
    zones.add(zone({ name: 'X.TEST', records: [{ name: 'a', ip: '10.0.0.2' }, { name: 'b', ip: '10.0.0.3' }], defaultIP: '10.0.0.9' }));
    expect(zones.toJson()).toEqual([
      { Name: 'X.TEST', Records: [{ Name: 'a', IP: '10.0.0.2' }, { Name: 'b', IP: '10.0.0.3' }, { Name: 'a', IP: '10.0.0.1' }], DefaultIP: '10.0.0.9' },
    ]);
    expect(zones.lookup('a.x.test')).toEqual({ ip: '10.0.0.2' });
    // A zone added without records lists them as null (Go's nil slice).
    zones.add(zone({ Name: 'empty.test.' }));
    expect(zones.toJson()[1]).toEqual({ Name: 'empty.test.', Records: null, DefaultIP: '' });
  });

  it('refuses what Moat will not serve, naming the field: Regexp, IPv6, a bad IP, unknown keys, a non-name', () => {
    const bad: [unknown, RegExp][] = [
      [{ Name: 'a.', Records: [{ Name: 'x', IP: '10.0.0.1', Regexp: '.*' }] }, /Records\[0\]\.Regexp: regular-expression records are not supported/],
      [{ Name: 'a.', Records: [{ Name: 'x', IP: 'fd00::1' }] }, /Records\[0\]\.IP: must be an IPv4 address/],
      [{ Name: 'a.', DefaultIP: '300.1.1.1' }, /DefaultIP: must be an IPv4 address/],
      [{ Name: 'a.', Records: [{ Name: 'x' }] }, /Records\[0\]\.IP: an IPv4 address is required/],
      [{ Name: 'a.', Recrods: [] }, /unknown key "Recrods"/],
      [{ Name: 'a b.' }, /Name: "a b\." is not a DNS name/],
      [[], /must be a JSON object/],
    ];
    for (const [body, message] of bad) {
      expect(() => zone(body)).toThrow(LocalZonesError);
      expect(() => zone(body)).toThrow(message);
    }
    // gvproxy's client may send "Regexp": null (older versions): that is no regexp.
    expect(zone({ Name: 'a.', Records: [{ Name: 'x', IP: '10.0.0.1', Regexp: null }] }).records).toEqual([{ name: 'x', ip: '10.0.0.1' }]);
  });

  it(`is bounded: ${MAX_ZONES} zones and ${MAX_RECORDS} records; past a bound nothing changes`, () => {
    const zones = new LocalZones();
    for (let i = 0; i < MAX_ZONES; i++) zones.add(zone({ Name: `z${i}.test.`, Records: [{ Name: 'a', IP: '10.0.0.1' }] }));
    expect(() => zones.add(zone({ Name: 'one-more.test.' }))).toThrow(/at most 64 zones/);
    expect(zones.size).toBe(MAX_ZONES);
    // Merging into an existing zone is still possible, up to the record bound.
    const many = Array.from({ length: MAX_RECORDS - MAX_ZONES }, (_, i) => ({ Name: `r${i}`, IP: '10.0.0.2' }));
    zones.add(zone({ Name: 'z0.test.', Records: many }));
    const before = JSON.stringify(zones.toJson());
    expect(() => zones.add(zone({ Name: 'z1.test.', Records: [{ Name: 'b', IP: '10.0.0.3' }] }))).toThrow(/at most 4096 records/);
    expect(JSON.stringify(zones.toJson())).toBe(before);
  });

  it('with no zones every query goes straight to the gateway DNS', async () => {
    const inner = new InnerDns();
    const dns = new LocalZonesDns(inner, new LocalZones());
    await ask(dns, 'host.containers.internal');
    expect(inner.asked).toEqual(['host.containers.internal/A']);
  });
});
