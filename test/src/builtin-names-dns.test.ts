/**
 * Without an allowlist the gateway forwards DNS, but its own names are its
 * own: found by booting a real VM (test/vm), where host.containers.internal
 * was forwarded upstream and came back NXDOMAIN.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import dnsPacket from 'dns-packet';
import { ipv4, parseIPv6 } from '../../netstack/addr.js';
import { firstQuestionName } from '../../src/builtin-names-dns.js';
import { NULL_LOGGER } from '../../src/log.js';
import { DEFAULT_NAT_OPTIONS, Nat } from '../../src/nat/index.js';
import { FakeStack } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** An upstream on loopback that answers every A query with 10.9.9.9 and counts what it was asked. */
async function upstream(): Promise<{ port: number; asked: string[] }> {
  const asked: string[] = [];
  const sock: UdpSocket = createSocket('udp4');
  sock.on('message', (msg, rinfo) => {
    const q = dnsPacket.decode(msg);
    const name = q.questions?.[0]?.name ?? '';
    asked.push(name);
    const answer = dnsPacket.encode({ type: 'response', id: q.id, flags: dnsPacket.RECURSION_DESIRED, questions: q.questions, answers: [{ type: 'A', name, ttl: 60, data: '10.9.9.9' }] });
    sock.send(answer, rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => sock.close(() => r())));
  return { port: sock.address().port, asked };
}

async function ask(nat: Nat, stack: FakeStack, name: string, n: number, type: 'A' | 'AAAA' = 'A'): Promise<string[]> {
  const q = dnsPacket.encode({ type: 'query', id: n, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });
  nat.onUdp({ src: GUEST, srcPort: 40000 + n, dst: DEFAULT_NAT_OPTIONS.gatewayIp, dstPort: 53, payload: q });
  const sent = await stack.waitUdp(n);
  return (dnsPacket.decode(sent[n - 1]!.payload).answers ?? []).map((a) => String((a as { data: unknown }).data));
}

describe('the gateway answers its own names when forwarding', () => {
  it('host.containers.internal and gateway.containers.internal locally (any case), everything else upstream', async () => {
    const up = await upstream();
    const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: up.port }] }, NULL_LOGGER);
    const stack = new FakeStack();
    nat.attach(stack);
    cleanups.push(() => nat.close());
    expect(await ask(nat, stack, 'host.containers.internal', 1)).toEqual(['192.168.127.254']);
    expect(await ask(nat, stack, 'Gateway.Containers.Internal', 2)).toEqual(['192.168.127.1']);
    expect(await ask(nat, stack, 'example.test', 3)).toEqual(['10.9.9.9']);
    expect(up.asked).toEqual(['example.test']);
  });

  it('on an IPv6 link the names answer AAAA with the IPv6 gateway and host alias (issue 19); without IPv6, NODATA', async () => {
    const up = await upstream();
    const P = (t: string) => parseIPv6(t)!;
    const ipv6 = { gatewayIp: P('fd6d:6f61:7400::1'), hostIp: P('fd6d:6f61:7400::fe'), prefix: P('fd6d:6f61:7400::'), hostLoopback: '::1' };
    for (const [opts, want] of [[{ ipv6 }, [['fd6d:6f61:7400::fe'], ['fd6d:6f61:7400::1']]], [{}, [[], []]]] as const) {
      const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: up.port }], ...opts }, NULL_LOGGER);
      const stack = new FakeStack();
      nat.attach(stack);
      cleanups.push(() => nat.close());
      expect(await ask(nat, stack, 'host.containers.internal', 1, 'AAAA')).toEqual(want[0]);
      expect(await ask(nat, stack, 'gateway.containers.internal', 2, 'AAAA')).toEqual(want[1]);
    }
    expect(up.asked).toEqual([]);
  });

  it('firstQuestionName reads plain names and refuses what it cannot read', () => {
    const q = dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'A.b.C', class: 'IN' }] });
    expect(firstQuestionName(q)).toBe('a.b.c');
    expect(firstQuestionName(q.subarray(0, 14))).toBeNull();
    expect(firstQuestionName(new Uint8Array(12))).toBeNull();
  });
});
