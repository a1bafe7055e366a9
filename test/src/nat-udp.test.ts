import { afterEach, describe, expect, it } from 'vitest';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import type { AddressInfo } from 'node:net';
import { ipv4, type IPv4 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { DEFAULT_NAT_OPTIONS, Nat, type NatOptions } from '../../src/nat/index.js';
import { FakeStack, udpDatagram, waitFor } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
const HOST_ALIAS = DEFAULT_NAT_OPTIONS.hostIp;
const GATEWAY = DEFAULT_NAT_OPTIONS.gatewayIp;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function makeNat(opts: Partial<NatOptions> = {}): { nat: Nat; stack: FakeStack } {
  const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], ...opts }, NULL_LOGGER);
  const stack = new FakeStack();
  nat.attach(stack);
  cleanups.push(() => nat.close());
  return { nat, stack };
}

/** A UDP echo server on 127.0.0.1 that records the source port of every datagram. */
async function echoServer(): Promise<{ port: number; sources: number[]; sock: UdpSocket }> {
  const sock = createSocket('udp4');
  const sources: number[] = [];
  sock.on('message', (msg, rinfo) => {
    sources.push(rinfo.port);
    sock.send(Buffer.concat([Buffer.from('echo:'), msg]), rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => sock.close(() => r())));
  return { port: (sock.address() as AddressInfo).port, sources, sock };
}

function send(nat: Nat, srcPort: number, dst: IPv4, dstPort: number, text: string): void {
  nat.onUdp(udpDatagram({ src: GUEST, srcPort, dst, dstPort }, Buffer.from(text)));
}

describe('NAT UDP', () => {
  it('relays a datagram to the host and the reply back to the guest, from the address it wrote to', async () => {
    const echo = await echoServer();
    const { nat, stack } = makeNat();
    send(nat, 5000, HOST_ALIAS, echo.port, 'ping');
    const [reply] = await stack.waitUdp(1);
    expect(reply!.payload.toString()).toBe('echo:ping');
    expect(reply!.from).toBe(HOST_ALIAS);
    expect(reply!.fromPort).toBe(echo.port);
    expect(reply!.to).toBe(GUEST);
    expect(reply!.toPort).toBe(5000);
    // A second datagram of the same flow reuses the host socket.
    send(nat, 5000, HOST_ALIAS, echo.port, 'again');
    await stack.waitUdp(2);
    expect(echo.sources[0]).toBe(echo.sources[1]);
    expect(nat.stats().udpFlows).toBe(1);
    expect(nat.stats().udp.opened).toBe(1);
  });

  it('gives distinct guest flows distinct host sockets', async () => {
    const echo = await echoServer();
    const { nat, stack } = makeNat();
    send(nat, 5001, HOST_ALIAS, echo.port, 'a');
    send(nat, 5002, HOST_ALIAS, echo.port, 'b');
    const replies = await stack.waitUdp(2);
    expect(new Set(replies.map((r) => r.toPort))).toEqual(new Set([5001, 5002]));
    expect(new Set(echo.sources).size).toBe(2);
    expect(nat.stats().udpFlows).toBe(2);
  });

  it('closes a flow after the idle timeout', async () => {
    const echo = await echoServer();
    const { nat, stack } = makeNat({ udpIdleTimeoutMs: 150 });
    send(nat, 5003, HOST_ALIAS, echo.port, 'x');
    await stack.waitUdp(1);
    expect(nat.stats().udpFlows).toBe(1);
    await waitFor(() => nat.stats().udpFlows === 0, 'idle expiry', 2000);
    expect(nat.stats().udp.expired).toBe(1);
    // A new datagram opens a new flow (new host source port).
    send(nat, 5003, HOST_ALIAS, echo.port, 'y');
    await stack.waitUdp(2);
    expect(echo.sources[1]).not.toBe(echo.sources[0]);
  });

  it('keeps at most maxUdpFlows flows, evicting the least recently used', async () => {
    const echo = await echoServer();
    const { nat, stack } = makeNat({ maxUdpFlows: 2, udpEvictIdleMs: 0 });
    send(nat, 6001, HOST_ALIAS, echo.port, '1');
    await stack.waitUdp(1);
    send(nat, 6002, HOST_ALIAS, echo.port, '2');
    await stack.waitUdp(2);
    send(nat, 6001, HOST_ALIAS, echo.port, '1 again'); // 6001 is now the most recent
    await stack.waitUdp(3);
    send(nat, 6003, HOST_ALIAS, echo.port, '3'); // evicts 6002
    await stack.waitUdp(4);
    expect(nat.stats().udpFlows).toBe(2);
    expect(nat.stats().udp.evicted).toBe(1);
    send(nat, 6001, HOST_ALIAS, echo.port, '1 kept');
    await stack.waitUdp(5);
    expect(echo.sources[4]).toBe(echo.sources[0]); // 6001 survived
    expect(nat.stats().udp.opened).toBe(3);
  });

  it('drops broadcast, subnet broadcast, multicast and link-local datagrams', () => {
    const { nat, stack } = makeNat();
    for (const dst of [ipv4(255, 255, 255, 255), ipv4(192, 168, 127, 255), ipv4(224, 0, 0, 251), ipv4(169, 254, 169, 254)]) {
      send(nat, 7000, dst, 9999, 'no');
    }
    expect(nat.stats().udpRefused).toBe(4);
    expect(nat.stats().udpFlows).toBe(0);
    expect(stack.udpSent).toHaveLength(0);
  });

  it('routes guest datagrams to a claimed gateway port to the claimant, and only while claimed', () => {
    const { nat } = makeNat();
    const got: string[] = [];
    const release = nat.claimGatewayUdp(40001, (d) => got.push(Buffer.from(d.payload).toString()));
    expect(() => nat.claimGatewayUdp(40001, () => {})).toThrow();
    send(nat, 7001, GATEWAY, 40001, 'reply');
    expect(got).toEqual(['reply']);
    release();
    send(nat, 7001, GATEWAY, 40001, 'late');
    expect(got).toEqual(['reply']);
    expect(nat.stats().udpRefused).toBe(1);
  });

  it('resetGuest() closes every UDP flow', async () => {
    const echo = await echoServer();
    const { nat, stack } = makeNat();
    send(nat, 7100, HOST_ALIAS, echo.port, 'a');
    send(nat, 7101, HOST_ALIAS, echo.port, 'b');
    await stack.waitUdp(2);
    nat.resetGuest();
    expect(nat.stats().udpFlows).toBe(0);
  });
});
