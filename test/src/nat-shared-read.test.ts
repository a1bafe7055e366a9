/**
 * Dialed host sockets share one read buffer (TcpFlowTable, Node's `onread`).
 * Whatever a flow keeps past the read callback (the chunk its guest could not
 * take yet) must be a copy: here two flows are held at once while the other
 * one's reads reuse the buffer, and both must still deliver their own bytes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { ipv4 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { DEFAULT_NAT_OPTIONS, Nat } from '../../src/nat/index.js';
import { FakePendingTcp, FakeStack, type FakeTcpSocket, waitFor } from './nat-fake-stack.js';

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
