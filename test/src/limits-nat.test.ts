/**
 * The NAT's limits with a fake stack (where driving them from a real guest is
 * impractical or slow): held connections (peek buffers), DNS queries in
 * flight at the NAT whatever the GatewayDns, and UDP flows refusing the
 * newest rather than cutting a busy one.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { connect as netConnect, createServer, type AddressInfo, type NetConnectOpts, type Socket } from 'node:net';
import { ipv4, parseIPv4, type IPv4 } from '../../netstack/addr.js';
import { parseRules } from '../../dns/rules.js';
import type { ResolvedAddresses, Resolver } from '../../dns/preresolve.js';
import { AllowlistRuntime } from '../../src/egress/allowlist-runtime.js';
import { DEFAULT_EGRESS_OPTIONS } from '../../src/egress/egress.js';
import type { DnsTcpSession } from '../../src/dns-forward.js';
import type { GatewayDns, GatewayDnsStats } from '../../src/gateway-dns.js';
import { NULL_LOGGER } from '../../src/log.js';
import { Nat } from '../../src/nat/index.js';
import { FakePendingTcp, FakeStack, udpDatagram, waitFor } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
const GATEWAY = ipv4(192, 168, 127, 1);
const HOST_ALIAS = ipv4(192, 168, 127, 254);
/** Never dialed: connectHost refuses anything but loopback. */
const FRONTED = '198.51.100.7';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

class MapResolver implements Resolver {
  async resolve4(name: string): Promise<ResolvedAddresses> {
    if (name === 'www.t.test') return { addresses: ['127.0.0.1'], ttl: 60 };
    throw Object.assign(new Error(`${name}: not found`), { code: 'ENOTFOUND' });
  }
  async resolve6(): Promise<ResolvedAddresses> {
    return { addresses: [], ttl: 60 };
  }
}

let nextPort = 42000;
function syn(dst: string, dstPort: number): FakePendingTcp {
  return new FakePendingTcp({ src: GUEST, srcPort: nextPort++, dst: parseIPv4(dst)! as IPv4, dstPort });
}

describe('NAT limits', () => {
  it('--max-held-connections: the newest connection beyond it is refused; the held ones still go through', async () => {
    const srv = createServer((s) => {
      s.on('error', () => {});
      s.on('data', (d) => {
        if (d.includes('\r\n\r\n')) s.end('ok');
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => srv.close(() => r())));
    const port = (srv.address() as AddressInfo).port;
    const runtime = await AllowlistRuntime.start(
      {
        rules: parseRules([`www.t.test:${port}`]),
        resolver: new MapResolver(),
        gatewayIpv4: '192.168.127.1',
        hostAliasIpv4: '192.168.127.254',
        sinkhole: 'zero',
        guestSubnet: { network: '192.168.127.0', prefix: 24 },
        admitResolved: ['127.0.0.0/8'],
        hostAliasExempt: false,
        allowLinkLocal: false,
        egress: { ...DEFAULT_EGRESS_OPTIONS },
        now: () => performance.now(),
      },
      NULL_LOGGER,
    );
    const connectHost = (o: NetConnectOpts): Socket => {
      const host = (o as { host?: string }).host ?? '';
      if (!host.startsWith('127.')) throw new Error(`test refused to dial ${host}`);
      return netConnect(o);
    };
    const limited: string[] = [];
    const nat = new Nat(
      { dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], connectHost, maxHeldConnections: 2, onLimit: (l) => limited.push(l) },
      NULL_LOGGER,
      runtime.dns,
      runtime.egress,
    );
    nat.attach(new FakeStack());
    cleanups.push(async () => {
      await nat.close();
      await runtime.close();
    });

    const held = [syn(FRONTED, port), syn(FRONTED, port)];
    for (const p of held) nat.onTcpSyn(p);
    const third = syn(FRONTED, port);
    nat.onTcpSyn(third);
    expect((await third.decided).kind).toBe('refused');
    expect(limited).toEqual(['peek']);
    expect(nat.stats()).toMatchObject({ held: 2, heldRefused: 1 });

    for (const p of held) {
      const o = await p.decided;
      if (o.kind !== 'accepted') throw new Error(`expected accept, got ${o.kind}`);
      o.socket.guestSend(Buffer.from('GET / HTTP/1.1\r\nHost: www.t.test\r\n\r\n'));
      await waitFor(() => {
        o.socket.consume();
        return o.socket.receivedConcat().toString() === 'ok';
      }, 3000);
    }
    // Once dialed they are ordinary flows: the held slots are free again.
    expect(nat.stats().held).toBe(0);
  });

  it('--dns-max-in-flight: queries beyond it are answered SERVFAIL at once, whichever GatewayDns answers', async () => {
    const answers: ((a: Uint8Array | undefined) => void)[] = [];
    const slowDns: GatewayDns = {
      resolve: () => new Promise((r) => answers.push(r)),
      openTcpSession: () => {
        throw new Error('not used');
      },
      stats: (): GatewayDnsStats => ({ mode: 'allowlist', queries: 0, answered: 0 }),
      close: async () => {},
    } as unknown as GatewayDns & { openTcpSession(): DnsTcpSession };
    const limited: string[] = [];
    const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], dnsMaxInFlight: 2, onLimit: (l) => limited.push(l) }, NULL_LOGGER, slowDns);
    const stack = new FakeStack();
    nat.attach(stack);
    cleanups.push(() => nat.close());
    const query = (id: number): Uint8Array => {
      const q = Buffer.from([0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x61, 0, 0, 1, 0, 1]);
      q.writeUInt16BE(id, 0);
      return q;
    };
    for (let id = 1; id <= 3; id++) nat.onUdp(udpDatagram({ src: GUEST, srcPort: 5000 + id, dst: GATEWAY, dstPort: 53 }, query(id)));
    const [servfail] = await stack.waitUdp(1);
    expect(servfail!.toPort).toBe(5003);
    expect(Buffer.from(servfail!.payload).readUInt16BE(0)).toBe(3);
    expect(servfail!.payload[3]! & 0x0f).toBe(2); // SERVFAIL
    expect(nat.stats()).toMatchObject({ dnsInFlight: 2, dnsRefused: 1 });
    expect(limited).toEqual(['dnsInFlight']);
    // The two in flight are answered when their answers come; the slots free up.
    for (const a of answers) a(query(9));
    await stack.waitUdp(3);
    expect(nat.stats().dnsInFlight).toBe(0);
  });

  it('--max-udp-flows: a new flow beyond it is dropped and counted; the busy flows keep their sockets', async () => {
    const limited: string[] = [];
    const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], maxUdpFlows: 2, onLimit: (l) => limited.push(l) }, NULL_LOGGER);
    nat.attach(new FakeStack());
    cleanups.push(() => nat.close());
    for (const srcPort of [6001, 6002, 6003]) nat.onUdp(udpDatagram({ src: GUEST, srcPort, dst: HOST_ALIAS, dstPort: 9 }, Buffer.from('x')));
    expect(nat.stats().udp).toMatchObject({ flows: 2, opened: 2, refused: 1, evicted: 0 });
    expect(limited).toEqual(['udpFlows']);
    // A datagram of a flow that exists still goes.
    nat.onUdp(udpDatagram({ src: GUEST, srcPort: 6001, dst: HOST_ALIAS, dstPort: 9 }, Buffer.from('y')));
    expect(nat.stats().udp).toMatchObject({ flows: 2, datagramsToHost: 3, refused: 1 });
  });
});
