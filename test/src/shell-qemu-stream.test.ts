import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QemuStreamServer, type GuestSink } from '../../src/transport/qemu-stream.js';
import { ListenError } from '../../src/transport/listen.js';
import { captureLogger, frameStream, outputBatch, released, waitFor } from './shell-fakes.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mv6-qemu-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

class RecordingSink implements GuestSink {
  batches: Uint8Array[][] = [];
  gone = 0;
  input(frames: readonly Uint8Array[]): void {
    this.batches.push(frames.map((f) => new Uint8Array(f)));
  }
  guestGone(): void {
    this.gone++;
  }
  get frames(): Uint8Array[] {
    return this.batches.flat();
  }
}

function dial(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => resolve(s));
    s.once('error', reject);
  });
}

function collect(sock: Socket): { bytes: () => Buffer } {
  const parts: Buffer[] = [];
  sock.on('data', (d: Buffer) => parts.push(d));
  return { bytes: () => Buffer.concat(parts) };
}

function closed(sock: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (sock.destroyed) resolve();
    else sock.once('close', () => resolve());
  });
}

describe('QemuStreamServer', () => {
  it('delivers frames from a guest and writes output batches back in framing', async () => {
    const sink = new RecordingSink();
    const { log } = captureLogger();
    const srv = new QemuStreamServer(sink, log);
    const path = join(dir, 'q.sock');
    const urls = await srv.listen([{ kind: 'unix', path, url: `unix://${path}` }]);
    expect(urls).toEqual([`unix://${path}`]);
    try {
      const guest = await dial(path);
      const got = collect(guest);
      const frames = [new Uint8Array(60).fill(1), new Uint8Array(1514).fill(2)];
      guest.write(frameStream(frames));
      await waitFor(() => sink.frames.length === 2);
      expect(sink.frames).toEqual(frames);
      expect(srv.stats).toMatchObject({ framesIn: 2, bytesIn: 1574, guestConnected: true, connections: 1 });

      const out = [new Uint8Array(42).fill(7), new Uint8Array(100).fill(8), new Uint8Array(70).fill(9)];
      const releasedBefore = released.count;
      srv.send(outputBatch(out, 2)); // two chunks: the cork/uncork path
      srv.send(outputBatch([out[0]!], 1)); // one chunk: the single-write path
      const expected = Buffer.concat([frameStream(out), frameStream([out[0]!])]);
      await waitFor(() => got.bytes().length === expected.length);
      expect(got.bytes().equals(expected)).toBe(true);
      // Each written batch hands its memory back to the stack once the socket is done with it.
      await waitFor(() => released.count === releasedBefore + 2);
      expect(srv.stats).toMatchObject({ framesOut: 4, bytesOut: 42 + 100 + 70 + 42 });

      guest.destroy();
      await waitFor(() => sink.gone === 1);
      expect(srv.guestConnected).toBe(false);
      const beforeDrop = released.count;
      srv.send(outputBatch(out));
      expect(srv.stats.outputDroppedNoGuest).toBe(3);
      expect(released.count).toBe(beforeDrop + 1); // dropped batches are released at once
    } finally {
      await srv.close();
    }
    expect(existsSync(path)).toBe(false);
  });

  for (const [name, bytes] of [
    ['zero length', Uint8Array.of(0, 0, 0, 0)],
    ['length 65550', Uint8Array.of(0, 1, 0, 14, 1, 2, 3)],
    ['length 0xffffffff', Uint8Array.of(0xff, 0xff, 0xff, 0xff)],
  ] as const) {
    it(`drops the connection and counts it on a bad length (${name}), keeping earlier frames`, async () => {
      const sink = new RecordingSink();
      const { log, lines } = captureLogger();
      const srv = new QemuStreamServer(sink, log);
      const urls = await srv.listen([{ kind: 'tcp', host: '127.0.0.1', port: 0, url: 'tcp://127.0.0.1:0' }]);
      const port = Number(urls[0]!.split(':').pop());
      expect(port).toBeGreaterThan(0);
      try {
        const guest = await new Promise<Socket>((resolve) => {
          const s = connect(port, '127.0.0.1', () => resolve(s));
        });
        guest.on('error', () => {});
        const good = new Uint8Array(60).fill(3);
        guest.write(Buffer.concat([frameStream([good]), bytes]));
        await closed(guest);
        await waitFor(() => sink.gone === 1);
        expect(srv.stats.framingErrors).toBe(1);
        expect(sink.frames).toEqual([good]);
        expect(lines.some((l) => l.msg === 'guest broke QEMU stream framing; dropping the connection')).toBe(true);
        // The service keeps listening: a new guest works.
        const again = await new Promise<Socket>((resolve) => {
          const s = connect(port, '127.0.0.1', () => resolve(s));
        });
        again.write(frameStream([good]));
        await waitFor(() => sink.frames.length === 2);
        again.destroy();
      } finally {
        await srv.close();
      }
    });
  }

  it('replaces the active guest with a new connection and resets once per guest', async () => {
    const sink = new RecordingSink();
    const { log, lines } = captureLogger();
    const srv = new QemuStreamServer(sink, log);
    const path = join(dir, 'q.sock');
    await srv.listen([{ kind: 'unix', path, url: `unix://${path}` }]);
    try {
      const first = await dial(path);
      await waitFor(() => srv.stats.connections === 1);
      const second = await dial(path);
      const got = collect(second);
      await closed(first);
      await waitFor(() => srv.stats.connections === 2);
      expect(sink.gone).toBe(1);
      expect(srv.stats.replacedConnections).toBe(1);
      expect(lines.some((l) => l.msg === 'new guest connection replaces the active one')).toBe(true);
      srv.send(outputBatch([new Uint8Array(20).fill(4)]));
      await waitFor(() => got.bytes().length === 24);
      second.destroy();
      await waitFor(() => sink.gone === 2);
    } finally {
      await srv.close();
    }
  });

  it('drops output (counted) instead of queueing without bound when the guest does not read', async () => {
    const sink = new RecordingSink();
    const { log } = captureLogger('info');
    const srv = new QemuStreamServer(sink, log, { maxQueuedBytes: 256 * 1024 });
    const path = join(dir, 'q.sock');
    await srv.listen([{ kind: 'unix', path, url: `unix://${path}` }]);
    try {
      const guest = await dial(path);
      guest.pause(); // a guest that never reads
      await waitFor(() => srv.guestConnected);
      const frame = new Uint8Array(65000);
      for (let i = 0; i < 200; i++) srv.send(outputBatch([frame]));
      expect(srv.stats.outputDroppedBackpressure).toBeGreaterThan(0);
      expect(srv.stats.framesOut + srv.stats.outputDroppedBackpressure).toBe(200);
      // Input still flows while output is being dropped.
      guest.write(frameStream([new Uint8Array(60).fill(5)]));
      await waitFor(() => sink.frames.length === 1);
      guest.destroy();
    } finally {
      await srv.close();
    }
  });

  it('replaces a stale socket file but refuses a live server or a non-socket file', async () => {
    const { log } = captureLogger();
    // Stale: a process that listened and was killed (SIGKILL leaves the socket file behind).
    const stalePath = join(dir, 'stale.sock');
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stalePath)})`], {
      stdio: 'ignore',
    });
    await waitFor(() => existsSync(stalePath));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(existsSync(stalePath)).toBe(true);
    const srv1 = new QemuStreamServer(new RecordingSink(), log);
    await srv1.listen([{ kind: 'unix', path: stalePath, url: `unix://${stalePath}` }]);
    const probe = await dial(stalePath);
    probe.destroy();

    const srv2 = new QemuStreamServer(new RecordingSink(), log);
    await expect(srv2.listen([{ kind: 'unix', path: stalePath, url: `unix://${stalePath}` }])).rejects.toThrow(
      /another server is listening/,
    );
    await srv1.close();

    const filePath = join(dir, 'regular');
    writeFileSync(filePath, 'keep me');
    const srv3 = new QemuStreamServer(new RecordingSink(), log);
    const err = await srv3.listen([{ kind: 'unix', path: filePath, url: `unix://${filePath}` }]).catch((e) => e);
    expect(err).toBeInstanceOf(ListenError);
    expect((err as Error).message).toMatch(/is not a socket/);
    expect(existsSync(filePath)).toBe(true);
  });
});

describe('QemuStreamServer: bounded work per turn', () => {
  /** Guest bytes the link hands the sink in each event-loop turn while a guest floods it over loopback TCP. */
  async function perTurnBytes(turnBudgetBytes: number): Promise<{ max: number; total: number; yields: number }> {
    let turn = 0;
    let done = false;
    const tick = (): void => {
      turn++;
      if (!done) setImmediate(tick);
    };
    tick();
    const byTurn = new Map<number, number>();
    let total = 0;
    const sink: GuestSink = {
      input(frames) {
        for (const f of frames) {
          byTurn.set(turn, (byTurn.get(turn) ?? 0) + f.length + 4);
          total += f.length + 4;
        }
      },
      guestGone() {},
    };
    const srv = new QemuStreamServer(sink, captureLogger().log, { turnBudgetBytes });
    const [url] = await srv.listen([{ kind: 'tcp', host: '127.0.0.1', port: 0, url: 'tcp://127.0.0.1:0' }]);
    const port = Number(new URL(url!).port);
    const sock: Socket = await new Promise((resolve) => {
      const s = connect(port, '127.0.0.1', () => resolve(s));
    });
    const frame = new Uint8Array(1500).fill(7);
    const flood = frameStream(Array.from({ length: 4000 }, () => frame)); // ~6 MiB in one write
    sock.write(flood);
    try {
      await waitFor(() => total >= flood.length, 20_000);
    } finally {
      done = true;
      sock.destroy();
      await srv.close();
    }
    return { max: Math.max(...byTurn.values()), total, yields: srv.stats.turnYields };
  }

  it('a flooding guest is read at most its budget (plus the read in hand) per turn, then yields; nothing is lost', async () => {
    const budget = 64 * 1024;
    const bounded = await perTurnBytes(budget);
    expect(bounded.yields).toBeGreaterThan(0);
    // One read is at most 64 KiB: the turn that crosses the budget finishes that read.
    expect(bounded.max).toBeLessThanOrEqual(budget + 64 * 1024);
  });
});
