/**
 * Dialed host sockets share one read buffer (TcpFlowTable, Node's `onread`).
 * Whatever a flow keeps past the read callback (the chunk its guest could not
 * take yet) must be a copy: here two flows are held at once while the other
 * one's reads reuse the buffer, and both must still deliver their own bytes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, Socket, type AddressInfo } from 'node:net';
import { ipv4 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { DEFAULT_NAT_OPTIONS, Nat } from '../../src/nat/index.js';
import { FakePendingTcp, FakeStack, FakeTcpSocket, waitFor } from './nat-fake-stack.js';
import { TcpPipe } from '../../src/nat/tcp-pipe.js';

const GUEST = ipv4(192, 168, 127, 2);
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function accepted(p: FakePendingTcp): Promise<FakeTcpSocket> {
  const o = await p.decided;
  if (o.kind !== 'accepted') throw new Error(`expected accept, got ${o.kind}`);
  return o.socket;
}

describe('NAT host reads through the shared buffer', () => {
  it('two flows held by slow guests at once each deliver exactly their own bytes', async () => {
    const payloads = [randomBytes(3 * 1024 * 1024), randomBytes(3 * 1024 * 1024)];
    let next = 0;
    const conns = new Set<Socket>();
    const server = createServer({ allowHalfOpen: true }, (s) => {
      conns.add(s);
      s.on('error', () => {});
      s.end(payloads[next++]!);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => {
      for (const c of conns) c.destroy();
      return new Promise<void>((r) => server.close(() => r()));
    });
    const port = (server.address() as AddressInfo).port;
    const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }] }, NULL_LOGGER);
    nat.attach(new FakeStack());
    cleanups.push(() => nat.close());

    const socks: FakeTcpSocket[] = [];
    for (let i = 0; i < 2; i++) {
      const p = new FakePendingTcp({ src: GUEST, srcPort: 41000 + i, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: port }, { capacity: 4096, autoConsume: false });
      nat.onTcpSyn(p);
      socks.push(await accepted(p));
      // Connect one at a time so that flow i gets payload i.
      await waitFor(() => socks[i]!.bufferedAmount === 4096, `guest ${i} buffer full`);
    }
    // Both flows now hold a chunk each; drain them alternately in small steps,
    // so that one flow's reads land in the shared buffer while the other still holds bytes.
    while (socks.some((s) => !s.endCalled || s.bufferedAmount > 0)) {
      for (const s of socks) s.consume();
      await new Promise((r) => setImmediate(r));
    }
    expect(sha(socks[0]!.receivedConcat())).toBe(sha(payloads[0]!));
    expect(sha(socks[1]!.receivedConcat())).toBe(sha(payloads[1]!));
  }, 30_000);
});

describe('a host read that would not fit the guest\'s send buffer (issue 16)', () => {
  it('stops reading before the buffer is too full for a whole read, instead of copying the rest aside; resumes on drain, bytes exact', async () => {
    const host = new Socket(); // never connected: the test hands the pipe its reads, as the shared-buffer callback does
    cleanups.push(() => void host.destroy());
    const pipe = new TcpPipe(host, { waitForConnect: false, onFinished: () => {} });
    const guest = new FakeTcpSocket({ src: GUEST, srcPort: 41000, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: 80 }, pipe.handlers, 256 * 1024, false);
    guest.waitForRoom = () => {
      if (guest.writableSpace >= guest.capacity / 2) return false;
      (guest as unknown as { shortWrite: boolean }).shortWrite = true;
      return true;
    };
    pipe.bind(guest);
    const shared = new Uint8Array(64 * 1024);
    const sent: Uint8Array[] = [];
    let paused = 0;
    const realPause = host.pause.bind(host);
    host.pause = () => {
      paused++;
      return realPause();
    };
    // Reads of 60,000 bytes: four fit 256 KiB, the fifth would not (16,144 bytes free).
    for (let i = 0; i < 4; i++) {
      shared.set(randomBytes(60_000));
      sent.push(shared.slice(0, 60_000));
      pipe.hostBytes(shared.subarray(0, 60_000));
    }
    expect(guest.bufferedAmount).toBe(240_000);
    expect(paused).toBe(1); // stopped before the read that would not fit
    expect(pipe.heldBytes).toBe(0); // and nothing copied aside
    const resumed = new Promise<void>((r) => host.once('resume', () => r()));
    guest.consume(200_000);
    await resumed; // onDrain resumed reading
    shared.set(randomBytes(60_000));
    sent.push(shared.slice(0, 60_000));
    pipe.hostBytes(shared.subarray(0, 60_000));
    guest.consume();
    expect(sha(Buffer.concat(guest.received))).toBe(sha(Buffer.concat(sent)));
  });
});

describe('host read size (h16-big)', () => {
  /** Largest single write a flow's host reads made into its guest socket, for a 4 MiB download into a send ring of `capacity`. */
  async function largestRead(capacity: number, totalBufferBytes?: number): Promise<number> {
    const payload = randomBytes(4 * 1024 * 1024);
    const conns = new Set<Socket>();
    const server = createServer({ allowHalfOpen: true }, (s) => {
      conns.add(s);
      s.on('error', () => {});
      s.end(payload);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => {
      for (const c of conns) c.destroy();
      return new Promise<void>((r) => server.close(() => r()));
    });
    const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], ...(totalBufferBytes !== undefined ? { totalBufferBytes } : {}) }, NULL_LOGGER);
    nat.attach(new FakeStack());
    cleanups.push(() => nat.close());
    const p = new FakePendingTcp(
      { src: GUEST, srcPort: 41100, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: (server.address() as AddressInfo).port },
      { capacity, autoConsume: true },
    );
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    let largest = 0;
    const write = sock.write.bind(sock);
    sock.write = (data: Uint8Array): number => {
      largest = Math.max(largest, data.length);
      return write(data);
    };
    await waitFor(() => sock.endCalled && sock.bufferedAmount === 0, 'download complete', 20_000);
    expect(sha(sock.receivedConcat())).toBe(sha(payload));
    return largest;
  }

  it('reads more than 64 KiB at once while the guest send ring has room for a whole large read', async () => {
    expect(await largestRead(2 * 1024 * 1024)).toBeGreaterThan(64 * 1024);
  }, 30_000);

  it('reads at most 64 KiB at once into a send ring too small for a large read (what a pipe may hold stays one small read)', async () => {
    expect(await largestRead(200 * 1024)).toBeLessThanOrEqual(64 * 1024);
  }, 30_000);

  it('reads at most 64 KiB at once when the buffer budget has no room for a large read, even into a large send ring (the budget\'s overshoot stays one small read)', async () => {
    expect(await largestRead(2 * 1024 * 1024, 200 * 1024)).toBeLessThanOrEqual(64 * 1024);
  }, 30_000);
});
