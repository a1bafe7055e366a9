/**
 * TcpPipe, guest -> host: when the guest side is paused for the host socket.
 *
 * The host socket here is a Duplex whose writes either complete at once (a
 * kernel that takes the whole writev) or wait until the test lets them (a host
 * that does not read), so the decision is observed exactly, with no timing.
 */
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { TcpPipe } from '../../src/nat/tcp-pipe.js';
import { FakeTcpSocket } from './nat-fake-stack.js';

const SEGMENT = 64 * 1024;

class FakeHost extends Duplex {
  /** Bytes the "kernel" took, in order. */
  readonly taken: Buffer[] = [];
  /** How many writev/write calls reached the "kernel". */
  calls = 0;
  /** While true, writes wait for release() (a host that does not read). */
  stalled = false;
  private waiting: (() => void)[] = [];

  constructor(highWaterMark: number) {
    super({ writableHighWaterMark: highWaterMark, allowHalfOpen: true });
  }

  override _read(): void {}

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.take([chunk], cb);
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (e?: Error | null) => void): void {
    this.take(
      chunks.map((c) => c.chunk),
      cb,
    );
  }

  private take(chunks: Buffer[], cb: () => void): void {
    this.calls++;
    // Copy: the pipe recycles its copies once the write completed.
    const done = (): void => {
      for (const c of chunks) this.taken.push(Buffer.from(c));
      cb();
    };
    if (this.stalled) this.waiting.push(done);
    else done();
  }

  /** The host reads again: every waiting write completes. */
  release(): void {
    this.stalled = false;
    for (const w of this.waiting.splice(0)) w();
  }

  resetAndDestroy(): this {
    return this.destroy();
  }
}

function pipeWith(highWaterMark: number): { host: FakeHost; guest: FakeTcpSocket } {
  const host = new FakeHost(highWaterMark);
  const pipe = new TcpPipe(host as unknown as Socket, { waitForConnect: false, onFinished: () => {} });
  const guest = new FakeTcpSocket({ src: 0, srcPort: 40000, dst: 0, dstPort: 80 } as never, pipe.handlers, 1 << 20, true);
  pipe.bind(guest);
  return { host, guest };
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe('TcpPipe guest -> host', () => {
  it('one input batch larger than the flow buffer goes out in one writev without pausing the guest, when the host takes it', async () => {
    const { host, guest } = pipeWith(4 * SEGMENT);
    const sent: Uint8Array[] = [];
    for (let round = 0; round < 3; round++) {
      // One TAP batch: 8 full segments in the same turn (twice the flow buffer).
      for (let i = 0; i < 8; i++) {
        const seg = pattern(SEGMENT, round * 8 + i);
        sent.push(seg);
        guest.guestSend(seg);
      }
      await turn();
    }
    expect(guest.pauseCount).toBe(0);
    expect(host.calls).toBe(3);
    expect(sha(Buffer.concat(host.taken))).toBe(sha(Buffer.concat(sent)));
  });

  it('a view larger than a copy slab (a paused ring delivering at once) arrives intact', async () => {
    const { host, guest } = pipeWith(4 * SEGMENT);
    const big = pattern(1024 * 1024 + 17, 5);
    guest.guestSend(big);
    await turn();
    expect(sha(Buffer.concat(host.taken))).toBe(sha(big));
  });

  it('a host that does not read pauses the guest after the batch; the host socket holds at most the flow buffer plus that batch, however long the guest keeps sending', async () => {
    const hwm = 4 * SEGMENT;
    const { host, guest } = pipeWith(hwm);
    host.stalled = true;
    const sent: Uint8Array[] = [];
    let seed = 0;
    // The guest keeps offering batches of 8 segments; once paused its bytes wait on its side (its window closes).
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 8; i++) {
        const seg = pattern(SEGMENT, seed++);
        sent.push(seg);
        guest.guestSend(seg);
      }
      await turn();
      expect(host.writableLength).toBeLessThanOrEqual(hwm + 8 * SEGMENT);
    }
    expect(guest.paused).toBe(true);
    expect(guest.pauseCount).toBe(1);
    expect(host.writableLength).toBe(8 * SEGMENT);
    expect(guest.queuedFromGuest).toBe(49 * 8 * SEGMENT);
    // The host reads again: the guest is resumed and every byte arrives once, in order.
    host.release();
    while (guest.queuedFromGuest > 0 || host.writableLength > 0) {
      host.release();
      await turn();
    }
    expect(sha(Buffer.concat(host.taken))).toBe(sha(Buffer.concat(sent)));
  });
});
