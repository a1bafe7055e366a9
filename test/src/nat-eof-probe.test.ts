/**
 * A server that answers and closes: its FIN waits behind the answer in the
 * socket, but libuv reports it one loop turn after the bytes. The NAT probes
 * the flow's first short read (src/nat/host-eof-probe.ts) so that the guest's
 * FIN leaves with the answer, in one segment (issue 16: new connections per
 * second). The probe reads behind libuv's back: bytes it finds must reach the
 * guest in order, and an error must stay an error (a reset is not an end).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { connect, createServer, Socket, type AddressInfo } from 'node:net';
import { ipv4 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { DEFAULT_NAT_OPTIONS, Nat } from '../../src/nat/index.js';
import { probeHostEnd } from '../../src/nat/host-eof-probe.js';
import { TcpPipe } from '../../src/nat/tcp-pipe.js';
import { FakePendingTcp, FakeStack, FakeTcpSocket, waitFor } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A loopback server; `onConn` gets each accepted socket. */
async function listen(onConn: (s: Socket) => void): Promise<number> {
  const conns = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => {
    conns.add(s);
    s.on('error', () => {});
    onConn(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return (server.address() as AddressInfo).port;
}

function makeNat(): Nat {
  const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }] }, NULL_LOGGER);
  nat.attach(new FakeStack());
  cleanups.push(() => nat.close());
  return nat;
}

let nextPort = 42000;
async function dial(nat: Nat, port: number): Promise<FakeTcpSocket> {
  const p = new FakePendingTcp({ src: GUEST, srcPort: nextPort++, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: port });
  nat.onTcpSyn(p);
  const o = await p.decided;
  if (o.kind !== 'accepted') throw new Error(`expected accept, got ${o.kind}`);
  return o.socket;
}

/** Records, for each write to the guest, whether end() had been called by the end of that turn's callbacks (a microtask). */
function watchWrites(sock: FakeTcpSocket): { endedWithWrite: boolean[] } {
  const seen = { endedWithWrite: [] as boolean[] };
  const write = sock.write.bind(sock);
  sock.write = (data: Uint8Array): number => {
    const i = seen.endedWithWrite.push(false) - 1;
    queueMicrotask(() => (seen.endedWithWrite[i] = sock.endCalled));
    return write(data);
  };
  return seen;
}

/** A connected client socket, paused before it connects (libuv never reads it), and the server's side. */
async function quietPair(): Promise<{ client: Socket; server: Socket }> {
  let server!: Socket;
  const accepted = new Promise<void>((resolve) => {
    void listen((s) => {
      server = s;
      resolve();
    }).then((port) => {
      const client = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      client.pause();
      client.on('error', () => {});
      cleanups.push(() => void client.destroy());
      pair.client = client;
    });
  });
  const pair = {} as { client: Socket; server: Socket };
  await accepted;
  await waitFor(() => pair.client !== undefined && !pair.client.connecting, 'client connected');
  pair.server = server;
  return pair;
}

describe('a server that answers and closes (issue 16, new connections)', () => {
  it("sends the guest's FIN in the same turn as the answer, so they share a segment", async () => {
    const port = await listen((s) => s.end('k'));
    const nat = makeNat();
    const sock = await dial(nat, port);
    const seen = watchWrites(sock);
    await waitFor(() => sock.endCalled, 'FIN to guest');
    expect(sock.receivedConcat().toString()).toBe('k');
    expect(seen.endedWithWrite).toEqual([true]);
    sock.guestFin();
    await waitFor(() => nat.stats().tcpFlows === 0, 'flow removed');
    expect(sock.closedWith).toBe('closed');
    expect(sock.abortCalled).toBe(false);
  });

  it('a server that answers and stays open: no FIN, later bytes and the FIN still arrive in order', async () => {
    let server!: Socket;
    const port = await listen((s) => {
      server = s;
      s.write('hello');
    });
    const nat = makeNat();
    const sock = await dial(nat, port);
    await waitFor(() => sock.receivedConcat().toString() === 'hello', 'first answer');
    await new Promise((r) => setTimeout(r, 20));
    expect(sock.endCalled).toBe(false);
    server.write(' again');
    await waitFor(() => sock.receivedConcat().toString() === 'hello again', 'second answer');
    expect(sock.endCalled).toBe(false);
    server.end(' bye');
    await waitFor(() => sock.endCalled, 'FIN to guest');
    expect(sock.receivedConcat().toString()).toBe('hello again bye');
    expect(sock.abortCalled).toBe(false);
  });

  // Red before the probe: libuv, seeing POLLHUP after a short read, reports EOF without reading,
  // so bytes followed by a reset reached the guest as a clean FIN (the reset lost).
  it('a server that answers and resets at once: the guest is reset, never ended cleanly', async () => {
    const port = await listen((s) => {
      // Once the flow is open (a reset before it would refuse the dial): bytes and RST in one turn.
      setTimeout(() => {
        s.write('partial');
        s.resetAndDestroy();
      }, 30);
    });
    const nat = makeNat();
    const sock = await dial(nat, port);
    await waitFor(() => sock.closedWith !== undefined, 'guest side closed');
    expect(sock.abortCalled).toBe(true);
    expect(sock.endCalled).toBe(false);
    expect(sock.closedWith).toBe('aborted');
    await waitFor(() => nat.stats().tcpFlows === 0, 'flow removed');
  });
});

describe('probeHostEnd', () => {
  it('reports nothing waiting, then waiting bytes, then the end, then the end again; libuv still sees bytes and end in order', async () => {
    const { client, server } = await quietPair();
    expect(probeHostEnd(client).kind).toBe('nothing');
    await new Promise<void>((r) => server.write('xyz', () => r()));
    const r = probeHostEnd(client);
    expect(r.kind).toBe('bytes');
    expect(r.kind === 'bytes' && Buffer.from(r.bytes).toString()).toBe('xyz');
    server.write('tail');
    server.end();
    await waitFor(() => server.writableFinished, 'server FIN sent');
    // The end is sticky: the probe finds it, and so does libuv's own read afterwards, after the bytes the probe left.
    const got: string[] = [];
    client.on('data', (c: Buffer) => got.push(c.toString()));
    const ended = new Promise<void>((resolve) => client.once('end', () => resolve()));
    client.resume();
    await ended;
    expect(got.join('')).toBe('tail');
    expect(probeHostEnd(client).kind).toBe('nothing'); // ended in Node's view: no more probing
  });

  it('finds a queued FIN behind nothing and reports a reset as an error (ECONNRESET), not an end', async () => {
    const a = await quietPair();
    a.server.end();
    await waitFor(() => a.server.writableFinished, 'server FIN sent');
    expect(probeHostEnd(a.client).kind).toBe('end');
    expect(probeHostEnd(a.client).kind).toBe('end');

    const b = await quietPair();
    b.server.resetAndDestroy();
    await waitFor(() => b.server.destroyed, 'server reset');
    await new Promise((r) => setTimeout(r, 20)); // the RST crosses loopback within the close(2); generous
    const r = probeHostEnd(b.client);
    expect(r.kind).toBe('error');
    expect(r.kind === 'error' && (r.error as NodeJS.ErrnoException).code).toBe('ECONNRESET');
  });

  it('a pipe hands bytes the probe found to the guest, in order after the read before them', async () => {
    const { client, server } = await quietPair();
    await new Promise<void>((r) => server.write('more', () => r()));
    const pipe = new TcpPipe(client, { waitForConnect: false, onFinished: () => {} });
    const guest = new FakeTcpSocket({ src: GUEST, srcPort: 41999, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: 80 }, pipe.handlers, 64 * 1024, false);
    pipe.bind(guest);
    client.resume(); // libuv starts reading on a later tick: the probe below runs first
    pipe.hostBytes(Buffer.from('first '));
    pipe.afterShortRead();
    guest.consume();
    expect(guest.receivedConcat().toString()).toBe('first more');
    expect(guest.endCalled).toBe(false);
  });

  it('reads no more than it is allowed (what the guest takes whole): a nearly full send ring gets what fits, nothing is held aside', async () => {
    const { client, server } = await quietPair();
    await new Promise<void>((r) => server.write('0123456789', () => r()));
    expect(probeHostEnd(client, 0).kind).toBe('nothing'); // a zero-length read cannot tell an end from no data
    const pipe = new TcpPipe(client, { waitForConnect: false, onFinished: () => {} });
    const guest = new FakeTcpSocket({ src: GUEST, srcPort: 41998, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: 80 }, pipe.handlers, 8, false);
    pipe.bind(guest);
    client.resume();
    pipe.hostBytes(Buffer.from('abcde')); // 3 bytes of room left
    pipe.afterShortRead();
    expect(guest.bufferedAmount).toBe(8);
    expect(pipe.heldBytes).toBe(0);
    guest.consume();
    expect(guest.receivedConcat().toString()).toBe('abcde012');
    // libuv reads the rest, in order.
    await waitFor(() => (guest.consume(), guest.receivedConcat().toString() === 'abcde0123456789'), 'rest of the bytes');
  });
});
