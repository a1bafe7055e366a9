import { afterEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, Socket, type AddressInfo, type Server } from 'node:net';
import fc from 'fast-check';
import { ipv4, type IPv4 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { classifyDestination, DEFAULT_NAT_OPTIONS, Nat, type NatOptions } from '../../src/nat/index.js';
import { FakePendingTcp, FakeStack, FakeTcpSocket, waitFor } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
const HOST_ALIAS = DEFAULT_NAT_OPTIONS.hostIp;

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

async function listen(onConn: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const conns = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => {
    conns.add(s);
    s.on('error', () => {}); // resets are part of several tests
    onConn(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy(); // a paused server socket would never notice its peer leave
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { server, port: (server.address() as AddressInfo).port };
}

let nextGuestPort = 40000;
function syn(dstPort: number, dst: IPv4 = HOST_ALIAS, socketOpts?: { capacity: number; autoConsume: boolean }): FakePendingTcp {
  return new FakePendingTcp({ src: GUEST, srcPort: nextGuestPort++, dst, dstPort }, socketOpts);
}

async function accepted(p: FakePendingTcp): Promise<FakeTcpSocket> {
  const o = await p.decided;
  if (o.kind !== 'accepted') throw new Error(`expected accept, got ${o.kind}`);
  return o.socket;
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Feeds `data` from the fake guest in segment-sized pieces, respecting pause(). */
async function guestSendAll(sock: FakeTcpSocket, data: Uint8Array, segment = 16 * 1024): Promise<void> {
  for (let off = 0; off < data.length; off += segment) {
    while (sock.paused) await new Promise((r) => setTimeout(r, 1));
    sock.guestSend(data.subarray(off, off + segment));
    if ((off / segment) % 16 === 0) await new Promise((r) => setImmediate(r));
  }
}

describe('NAT TCP', () => {
  it('relays several MiB both ways intact (sha256), then closes and forgets the flow', async () => {
    const up = randomBytes(3 * 1024 * 1024 + 17);
    const down = randomBytes(5 * 1024 * 1024 + 3);
    let serverGot = '';
    const { port } = await listen((s) => {
      const h = createHash('sha256');
      s.on('data', (c) => h.update(c));
      s.on('end', () => {
        serverGot = h.digest('hex');
      });
      s.end(down);
    });
    const { nat } = makeNat();
    const p = syn(port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    expect(nat.stats().tcpFlows).toBe(1);
    await guestSendAll(sock, up);
    sock.guestFin();
    await waitFor(() => sock.endCalled, 'FIN to guest', 20_000);
    await waitFor(() => serverGot !== '', 'server end', 20_000);
    expect(serverGot).toBe(sha(up));
    expect(sha(sock.receivedConcat())).toBe(sha(down));
    await waitFor(() => nat.stats().tcpFlows === 0, 'flow removed');
    expect(sock.closedWith).toBe('closed');
    expect(sock.abortCalled).toBe(false);
    expect(nat.stats().tcp.bytesToHost).toBe(up.length);
    expect(nat.stats().tcp.bytesToGuest).toBe(down.length);
  }, 30_000);

  it('answers a SYN to a closed port with refuse() (RST), without accepting', async () => {
    const { port, server } = await listen(() => {});
    await new Promise<void>((r) => server.close(() => r()));
    const { nat } = makeNat();
    const p = syn(port);
    nat.onTcpSyn(p);
    expect((await p.decided).kind).toBe('refused');
    expect(nat.stats().tcpFlows).toBe(0);
    expect(nat.stats().tcp.refused).toBe(1);
  });

  it('does not answer the SYN before the host dial completed', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const { port } = await listen(() => {});
    const { nat } = makeNat();
    const p = syn(port);
    nat.onTcpSyn(p);
    // Immediately after the SYN nothing is decided yet: the dial is in flight.
    expect(p.outcome).toBeUndefined();
    expect(nat.stats().tcp.dialing).toBe(1);
    release();
    await gate;
    expect((await p.decided).kind).toBe('accepted');
  });

  it('refuses link-local, broadcast, multicast, 0.0.0.0, loopback and other virtual-subnet addresses without dialing', async () => {
    const { nat } = makeNat();
    const cases: [IPv4, string][] = [
      [ipv4(169, 254, 169, 254), 'link-local'],
      [ipv4(255, 255, 255, 255), 'broadcast'],
      [ipv4(192, 168, 127, 255), 'broadcast'],
      [ipv4(192, 168, 127, 0), 'network-address'],
      [ipv4(192, 168, 127, 77), 'virtual-network'],
      [ipv4(224, 0, 0, 251), 'multicast'],
      [ipv4(0, 0, 0, 0), 'unspecified'],
      [ipv4(127, 0, 0, 1), 'loopback'],
      [ipv4(240, 0, 0, 1), 'reserved'],
    ];
    for (const [dst, reason] of cases) {
      expect(classifyDestination(dst, nat.options)).toEqual({ kind: 'refused', reason });
      const p = syn(80, dst);
      nat.onTcpSyn(p);
      expect(p.outcome?.kind).toBe('refused'); // synchronously: no dial happened
    }
    expect(nat.stats().tcp.dialing).toBe(0);
    // Gateway: only :53 is served.
    const g = syn(80, nat.options.gatewayIp);
    nat.onTcpSyn(g);
    expect(g.outcome?.kind).toBe('refused');
  });

  it('classifies link-local as a host destination only when allowed', () => {
    const rules = { ...DEFAULT_NAT_OPTIONS, allowLinkLocal: true };
    expect(classifyDestination(ipv4(169, 254, 169, 254), rules)).toEqual({ kind: 'host', address: '169.254.169.254' });
    expect(classifyDestination(ipv4(169, 254, 169, 254), DEFAULT_NAT_OPTIONS).kind).toBe('refused');
  });

  it('property: public unicast addresses are dialed as themselves, the host alias as 127.0.0.1', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 223 }), fc.nat(255), fc.nat(255), fc.nat(255), (a, b, c, d) => {
        const ip = ipv4(a, b, c, d);
        const got = classifyDestination(ip, DEFAULT_NAT_OPTIONS);
        if (ip === DEFAULT_NAT_OPTIONS.hostIp) return got.kind === 'host' && got.address === '127.0.0.1';
        if (ip === DEFAULT_NAT_OPTIONS.gatewayIp) return got.kind === 'gateway';
        const special = a === 127 || (a === 169 && b === 254) || (a === 192 && b === 168 && c === 127);
        if (special) return got.kind === 'refused';
        return got.kind === 'host' && got.address === `${a}.${b}.${c}.${d}`;
      }),
    );
  });

  it('half-close guest -> host: guest FIN ends the host write side, host can still answer', async () => {
    const { port } = await listen((s) => {
      const chunks: Buffer[] = [];
      s.on('data', (c) => chunks.push(c));
      s.on('end', () => {
        // The guest finished sending; reply after its FIN, then close.
        s.end(Buffer.concat([Buffer.from('got:'), ...chunks]));
      });
    });
    const { nat } = makeNat();
    const p = syn(port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    sock.guestSend(Buffer.from('hello'));
    sock.guestFin();
    await waitFor(() => sock.endCalled, 'host FIN reaching the guest');
    expect(sock.receivedConcat().toString()).toBe('got:hello');
    await waitFor(() => nat.stats().tcpFlows === 0, 'flow removed');
    expect(sock.closedWith).toBe('closed');
  });

  it('half-close host -> guest: host FIN ends the guest side, guest can still send', async () => {
    let serverGot = '';
    const { port } = await listen((s) => {
      s.end('bye'); // host finishes first
      s.on('data', (c) => (serverGot += c.toString()));
    });
    const { nat } = makeNat();
    const p = syn(port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    await waitFor(() => sock.endCalled, 'FIN to guest');
    expect(sock.receivedConcat().toString()).toBe('bye');
    expect(sock.closedWith).toBeUndefined();
    sock.guestSend(Buffer.from('still talking'));
    await waitFor(() => serverGot === 'still talking', 'guest bytes after host FIN');
    sock.guestFin();
    await waitFor(() => nat.stats().tcpFlows === 0, 'flow removed');
  });

  it('a dial that never completes leaves the SYN unanswered after connectTimeoutMs (ignored, counted), and the flow is forgotten', async () => {
    const hung: Socket[] = [];
    // A host socket that neither connects nor fails (a filtering firewall on the way).
    const connectHost = (): Socket => {
      const s = new Socket();
      hung.push(s);
      return s;
    };
    const { nat } = makeNat({ connectTimeoutMs: 80, connectHost });
    const pendings = [syn(9), syn(9), syn(9)];
    for (const p of pendings) nat.onTcpSyn(p);
    expect(nat.stats().tcpFlows).toBe(3);
    const outcomes = await Promise.all(pendings.map((p) => p.decided));
    expect(outcomes.map((o) => o.kind)).toEqual(['ignored', 'ignored', 'ignored']);
    expect(nat.stats().tcp.timedOut).toBe(3);
    expect(nat.stats().tcpFlows).toBe(0);
    expect(hung.every((s) => s.destroyed)).toBe(true);
  });

  it('host closes first, guest sends its last bytes and FIN at once: the server gets every byte, then a clean end (no reset)', async () => {
    const last = randomBytes(3 * 1024 * 1024); // more than a socket buffer: some of it is still queued when the guest side closes
    const got: Buffer[] = [];
    let serverEnded = false;
    let serverError: Error | undefined;
    const { port } = await listen((s) => {
      s.end('k'); // the server closes first (the churn case: Moat's side sends the first FIN)
      // Not read at first: the kernel's buffers fill and Moat's socket still holds bytes when the guest's FIN comes.
      s.pause();
      setTimeout(() => s.resume(), 300);
      s.on('data', (c: Buffer) => got.push(c));
      s.on('end', () => (serverEnded = true));
      s.on('error', (e) => (serverError = e));
    });
    const { nat } = makeNat();
    const p = syn(port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    await waitFor(() => sock.endCalled, 'FIN to guest');
    await guestSendAll(sock, last);
    sock.guestFin();
    await waitFor(() => nat.stats().tcpFlows === 0, 'flow removed');
    await waitFor(() => serverEnded || serverError !== undefined, 'server end');
    expect(serverError).toBeUndefined();
    expect(sha(Buffer.concat(got))).toBe(sha(last));
    expect(sock.closedWith).toBe('closed');
  });

  it('backpressure host -> guest: a guest that takes little pauses the host socket; memory stays bounded', async () => {
    const total = 8 * 1024 * 1024;
    const data = randomBytes(total);
    let serverSocket: Socket | undefined;
    let writeReturnedFalse = false;
    const { port } = await listen((s) => {
      serverSocket = s;
      writeReturnedFalse = !s.write(data);
      s.end();
    });
    const { nat } = makeNat();
    const capacity = 4096;
    const p = syn(port, HOST_ALIAS, { capacity, autoConsume: false });
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    await waitFor(() => sock.bufferedAmount === capacity, 'guest buffer full');
    await new Promise((r) => setTimeout(r, 300));
    // The NAT did not read the whole 8 MiB into memory: the server still holds most of it.
    expect(writeReturnedFalse).toBe(true);
    expect(serverSocket!.writableLength).toBeGreaterThan(total / 4);
    expect(sock.bufferedAmount).toBe(capacity);
    expect(sock.receivedBytes).toBe(0);
    // At most one host read chunk (64 KiB) waits in the NAT.
    expect(nat.stats().tcp.heldBytes).toBeGreaterThan(0);
    expect(nat.stats().tcp.heldBytes).toBeLessThanOrEqual(64 * 1024);
    // The guest reads: everything arrives, in order.
    sock.autoConsume = true;
    while (!sock.endCalled || sock.bufferedAmount > 0) {
      sock.consume();
      await new Promise((r) => setImmediate(r));
    }
    expect(sock.maxBuffered).toBeLessThanOrEqual(capacity);
    expect(sha(sock.receivedConcat())).toBe(sha(data));
  }, 30_000);

  it('backpressure guest -> host: a host that does not read pauses the guest side', async () => {
    let serverSocket: Socket | undefined;
    const { port } = await listen((s) => {
      serverSocket = s;
      s.pause();
    });
    const { nat } = makeNat({ perFlowBufferBytes: 64 * 1024 });
    const p = syn(port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    const data = randomBytes(16 * 1024 * 1024);
    let off = 0;
    while (!sock.paused && off < data.length) {
      sock.guestSend(data.subarray(off, off + 16384));
      off += 16384;
      await new Promise((r) => setImmediate(r));
    }
    expect(sock.paused).toBe(true);
    expect(off).toBeLessThan(data.length); // paused long before everything was pushed
    // Let the host read: the guest side is resumed.
    const got: Buffer[] = [];
    serverSocket!.on('data', (c) => got.push(c));
    serverSocket!.resume();
    await waitFor(() => !sock.paused, 'guest resumed after drain');
    expect(sock.pauseCount).toBeGreaterThanOrEqual(1);
  }, 30_000);

  it('a host reset mid-flow aborts the guest side (RST)', async () => {
    const { port } = await listen((s) => {
      s.write('partial');
      setTimeout(() => s.resetAndDestroy(), 50);
    });
    const { nat } = makeNat();
    const p = syn(port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    await waitFor(() => sock.abortCalled, 'abort()');
    expect(sock.closedWith).toBe('aborted');
    expect(sock.endCalled).toBe(false);
    await waitFor(() => nat.stats().tcpFlows === 0, 'flow removed');
  });

  it('a guest RST resets the host socket', async () => {
    let serverErr: string | undefined;
    let serverClosed = false;
    const { port } = await listen((s) => {
      s.on('error', (e: NodeJS.ErrnoException) => (serverErr = e.code));
      s.on('close', () => (serverClosed = true));
    });
    const { nat } = makeNat();
    const p = syn(port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    await new Promise((r) => setTimeout(r, 20)); // let the server start reading
    sock.guestReset();
    await waitFor(() => serverClosed, 'server socket closed');
    expect(serverErr).toBe('ECONNRESET');
    await waitFor(() => nat.stats().tcpFlows === 0, 'flow removed');
  });

  it('resetGuest() closes every flow and bounds the flow count', async () => {
    let serverCloses = 0;
    const { port } = await listen((s) => {
      s.on('error', () => {});
      s.on('close', () => serverCloses++);
    });
    const { nat } = makeNat({ maxTcpFlows: 3 });
    const socks: FakeTcpSocket[] = [];
    for (let i = 0; i < 3; i++) {
      const p = syn(port);
      nat.onTcpSyn(p);
      socks.push(await accepted(p));
    }
    const over = syn(port);
    nat.onTcpSyn(over);
    expect(over.outcome?.kind).toBe('refused');
    expect(nat.stats().tcpFlows).toBe(3);
    nat.resetGuest();
    await waitFor(() => serverCloses === 3, 'host sockets closed');
    await waitFor(() => nat.stats().tcpFlows === 0, 'table empty');
    for (const s of socks) expect(s.closedWith).toBe('aborted');
  });

  it('drops ICMP for non-virtual addresses and counts it', () => {
    const { nat } = makeNat();
    nat.onIcmp(GUEST, ipv4(8, 8, 8, 8), new Uint8Array([8, 0, 0, 0, 0, 1, 0, 1]));
    expect(nat.stats().icmpDropped).toBe(1);
  });
});
