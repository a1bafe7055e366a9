/**
 * How TcpPipe writes guest bytes to its host socket (src/nat/host-write-batch.ts):
 * a lone frame's bytes at once, a batch's bytes in one uncork at its end,
 * bytes outside any batch corked until the callback's microtasks.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { beginHostWrites, endHostWrites, LONE_FRAME_BYTES } from '../../src/nat/host-write-batch.js';
import { TcpPipe } from '../../src/nat/tcp-pipe.js';

/** The parts of a net.Socket TcpPipe uses, recording cork/uncork/write in order. */
class FakeHostSocket extends EventEmitter {
  readonly calls: string[] = [];
  destroyed = false;
  writableEnded = false;
  writableLength = 0;
  private corks = 0;
  cork(): void {
    this.corks++;
    this.calls.push('cork');
  }
  uncork(): void {
    this.corks--;
    this.calls.push('uncork');
  }
  write(chunk: Uint8Array, cb?: () => void): boolean {
    this.calls.push(`write ${chunk.length}${this.corks > 0 ? ' (corked)' : ''}`);
    if (cb) queueMicrotask(cb);
    return true;
  }
  pause(): void {}
  resume(): void {}
  end(): void {}
  resetAndDestroy(): void {
    this.destroyed = true;
  }
}

function pipe(): { host: FakeHostSocket; guest: (n: number) => void } {
  const host = new FakeHostSocket();
  const p = new TcpPipe(host as unknown as Socket, { waitForConnect: false, onFinished: () => {} });
  return { host, guest: (n) => p.handlers.onData(new Uint8Array(n)) };
}

const microtasks = () => new Promise<void>((r) => setImmediate(r));
/** A batch of n guest frames of `bytes` each (only their number and sizes matter here). */
const frames = (n: number, bytes = 130) => Array.from({ length: n }, () => new Uint8Array(bytes));

describe('TcpPipe host writes', () => {
  it("writes a lone frame's bytes at once, uncorked", async () => {
    const { host, guest } = pipe();
    beginHostWrites(frames(1));
    try {
      guest(64);
      expect(host.calls).toEqual(['write 64']);
    } finally {
      endHostWrites();
    }
    await microtasks();
    expect(host.calls).toEqual(['write 64']);
  });

  it("corks through a batch of several frames and uncorks each socket once, when the batch ends", () => {
    const a = pipe();
    const b = pipe();
    beginHostWrites(frames(3));
    try {
      a.guest(1448);
      b.guest(100);
      a.guest(1448);
      expect(a.host.calls).toEqual(['cork', 'write 1448 (corked)', 'write 1448 (corked)']);
      expect(b.host.calls).toEqual(['cork', 'write 100 (corked)']);
    } finally {
      endHostWrites();
    }
    // Synchronously at the end of the batch: no microtask in between.
    expect(a.host.calls.at(-1)).toBe('uncork');
    expect(b.host.calls.at(-1)).toBe('uncork');
    expect(a.host.calls.filter((c) => c === 'uncork')).toHaveLength(1);
  });

  it('corks through a batch of one large frame (bulk: the stack ACKs the guest before the host write)', () => {
    const { host, guest } = pipe();
    beginHostWrites(frames(1, LONE_FRAME_BYTES));
    try {
      guest(LONE_FRAME_BYTES - 54);
      expect(host.calls).toEqual([`cork`, `write ${LONE_FRAME_BYTES - 54} (corked)`]);
    } finally {
      endHostWrites();
    }
    expect(host.calls.at(-1)).toBe('uncork');
  });

  it('outside a batch (a rate limit or drain resuming the guest) corks until the microtasks run', async () => {
    const { host, guest } = pipe();
    guest(10);
    guest(20);
    expect(host.calls).toEqual(['cork', 'write 10 (corked)', 'write 20 (corked)']);
    await microtasks();
    expect(host.calls).toEqual(['cork', 'write 10 (corked)', 'write 20 (corked)', 'uncork']);
  });

  it('a socket whose uncork throws does not leave the batch\'s other sockets corked; the error still surfaces', () => {
    const a = pipe();
    const b = pipe();
    a.host.uncork = () => {
      throw new Error('boom');
    };
    beginHostWrites(frames(2));
    a.guest(5);
    b.guest(6);
    expect(() => endHostWrites()).toThrow('boom');
    expect(b.host.calls).toEqual(['cork', 'write 6 (corked)', 'uncork']);
    // The next batch is a fresh one.
    const c = pipe();
    beginHostWrites(frames(1));
    c.guest(7);
    endHostWrites();
    expect(c.host.calls).toEqual(['write 7']);
  });

  it('a socket destroyed during the batch is not uncorked; the next batch starts clean', () => {
    const a = pipe();
    beginHostWrites(frames(2));
    a.guest(5);
    a.host.destroyed = true;
    endHostWrites();
    expect(a.host.calls).toEqual(['cork', 'write 5 (corked)']);
    const b = pipe();
    beginHostWrites(frames(1));
    b.guest(7);
    endHostWrites();
    expect(b.host.calls).toEqual(['write 7']);
  });
});
