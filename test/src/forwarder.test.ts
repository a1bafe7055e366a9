import { afterEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { ipv4 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { PortForwarder } from '../../src/forwarder.js';
import { Nat } from '../../src/nat/index.js';
import { ForwardError } from '../../src/port-forwards.js';
import { FakeStack, type FakeTcpSocket, udpDatagram, waitFor } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
const GATEWAY = ipv4(192, 168, 127, 1);

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A port that was free a moment ago (listen on 0, close). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function setup(): { fwd: PortForwarder; stack: FakeStack; nat: Nat } {
  const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }] }, NULL_LOGGER);
  const stack = new FakeStack();
  nat.attach(stack);
  const fwd = new PortForwarder({ gatewayIp: GATEWAY, firstPort: 50000, lastPort: 50003 }, NULL_LOGGER, nat);
  fwd.attach(stack);
  cleanups.push(() => nat.close());
  cleanups.push(() => fwd.close());
  return { fwd, stack, nat };
}

async function dial(port: number): Promise<Socket> {
  const c = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  c.on('error', () => {});
  await new Promise<void>((r, j) => {
    c.once('connect', () => r());
    c.once('error', j);
  });
  cleanups.push(() => void c.destroy());
  return c;
}

async function guestSide(stack: FakeStack, n: number): Promise<FakeTcpSocket> {
  await waitFor(() => stack.connects.length >= n, 'connectTcp');
  return stack.connects[n - 1]!.socket;
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('PortForwarder', () => {
  it('expose/list/unexpose, duplicate and unknown are errors', async () => {
    const { fwd } = setup();
    const port = await freePort();
    const spec = { local: `127.0.0.1:${port}`, remote: '192.168.127.2:80', protocol: 'tcp' as const };
    await fwd.expose(spec);
    expect(fwd.list()).toEqual([spec]);
    await expect(fwd.expose(spec)).rejects.toMatchObject({ kind: 'conflict' });
    await expect(fwd.expose({ ...spec, remote: 'nonsense' })).rejects.toBeInstanceOf(ForwardError);
    await expect(fwd.unexpose({ local: `127.0.0.1:${port}`, protocol: 'udp' })).rejects.toMatchObject({ kind: 'not-found' });
    await fwd.unexpose({ local: spec.local, protocol: 'tcp' });
    expect(fwd.list()).toEqual([]);
    // The listener is gone.
    await expect(dial(port)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    // A listen error (port in use) rejects and leaves nothing behind.
    const busy = createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => busy.close(() => r())));
    const busyLocal = `127.0.0.1:${(busy.address() as AddressInfo).port}`;
    await expect(fwd.expose({ ...spec, local: busyLocal })).rejects.toMatchObject({ code: 'EADDRINUSE' });
    expect(fwd.list()).toEqual([]);
  });

  it('TCP: relays both ways from the gateway to the guest, with half-close', async () => {
    const { fwd, stack } = setup();
    const port = await freePort();
    await fwd.expose({ local: `127.0.0.1:${port}`, remote: '192.168.127.2:8080', protocol: 'tcp' });
    const client = await dial(port);
    const up = randomBytes(2 * 1024 * 1024);
    client.end(up); // host client sends then half-closes
    const g = await guestSide(stack, 1);
    expect(stack.connects[0]!.endpoints).toMatchObject({ from: GATEWAY, to: GUEST, toPort: 8080 });
    expect(stack.connects[0]!.endpoints.fromPort).toBeGreaterThanOrEqual(50000);
    // Nothing reaches the guest before its handshake completes.
    await new Promise((r) => setTimeout(r, 50));
    expect(g.receivedBytes).toBe(0);
    g.state = 'ESTABLISHED';
    g.handlers.onConnect!();
    await waitFor(() => g.endCalled, 'client FIN reaches the guest', 10_000);
    expect(sha(g.receivedConcat())).toBe(sha(up));
    // Guest answers after the client's FIN, then closes.
    const down = randomBytes(1024 * 1024);
    const got: Buffer[] = [];
    client.on('data', (c) => got.push(c));
    const clientEnded = new Promise<void>((r) => client.on('end', () => r()));
    for (let off = 0; off < down.length; off += 16384) g.guestSend(down.subarray(off, off + 16384));
    g.guestFin();
    await clientEnded;
    expect(sha(Buffer.concat(got))).toBe(sha(down));
    await waitFor(() => fwd.stats().tcpConnections === 0, 'connection forgotten');
  }, 30_000);

  it('TCP: a guest refusal resets the host connection and frees the gateway port', async () => {
    const { fwd, stack } = setup();
    const port = await freePort();
    await fwd.expose({ local: `127.0.0.1:${port}`, remote: '192.168.127.2:81', protocol: 'tcp' });
    const client = await dial(port);
    const closed = new Promise<void>((r) => client.on('close', () => r()));
    const g = await guestSide(stack, 1);
    g.close('refused');
    await closed;
    await waitFor(() => fwd.stats().tcpConnections === 0, 'connection forgotten');
    // The allocator has 4 ports; 5 sequential connections work only if ports are released.
    for (let i = 2; i <= 6; i++) {
      const c = await dial(port);
      const done = new Promise<void>((r) => c.on('close', () => r()));
      (await guestSide(stack, i)).close('refused');
      await done;
    }
    await waitFor(() => fwd.stats().tcpConnections === 0, 'all forgotten');
  });

  it('TCP: unexpose closes live connections', async () => {
    const { fwd, stack } = setup();
    const port = await freePort();
    await fwd.expose({ local: `127.0.0.1:${port}`, remote: '192.168.127.2:22', protocol: 'tcp' });
    const client = await dial(port);
    const closed = new Promise<void>((r) => client.on('close', () => r()));
    const g = await guestSide(stack, 1);
    g.handlers.onConnect!();
    await fwd.unexpose({ local: `127.0.0.1:${port}`, protocol: 'tcp' });
    await closed;
    expect(g.abortCalled).toBe(true);
  });

  it('UDP: host datagrams go to the guest from a gateway port; guest replies come back via the NAT', async () => {
    const { fwd, stack, nat } = setup();
    const port = await freePort();
    await fwd.expose({ local: `127.0.0.1:${port}`, remote: '192.168.127.2:5353', protocol: 'udp' });
    const client = createSocket('udp4');
    cleanups.push(() => new Promise<void>((r) => client.close(() => r())));
    await new Promise<void>((r) => client.bind(0, '127.0.0.1', r));
    const reply = new Promise<Buffer>((r) => client.once('message', (m) => r(m)));
    client.send(Buffer.from('question'), port, '127.0.0.1');
    const [sent] = await stack.waitUdp(1);
    expect(sent).toMatchObject({ from: GATEWAY, to: GUEST, toPort: 5353 });
    expect(sent!.payload.toString()).toBe('question');
    // A reply from a different guest port is not accepted through this mapping.
    nat.onUdp(udpDatagram({ src: GUEST, srcPort: 9999, dst: GATEWAY, dstPort: sent!.fromPort }, Buffer.from('spoof')));
    nat.onUdp(udpDatagram({ src: GUEST, srcPort: 5353, dst: GATEWAY, dstPort: sent!.fromPort }, Buffer.from('answer')));
    expect((await reply).toString()).toBe('answer');
    expect(fwd.stats().udpPeers).toBe(1);
    await fwd.unexpose({ local: `127.0.0.1:${port}`, protocol: 'udp' });
    expect(fwd.stats().udpPeers).toBe(0);
    // The gateway port is no longer claimed: the NAT refuses (counts) it.
    const before = nat.stats().udpRefused;
    nat.onUdp(udpDatagram({ src: GUEST, srcPort: 5353, dst: GATEWAY, dstPort: sent!.fromPort }, Buffer.from('late')));
    expect(nat.stats().udpRefused).toBe(before + 1);
  });
});
