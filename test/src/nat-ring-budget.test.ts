/**
 * --total-buffer-bytes (src/limits.ts BufferBudget) and the stack's receive
 * rings. A paused guest side still receives whatever window Moat already
 * advertised, into the connection's receive ring; a guest with a server that
 * reads fast (the window grows) and then stops could pin the window times
 * the flows there, uncounted. Here real TCP connections (the stack's default
 * TCP config) feed TcpPipes over fake host sockets that take every write at
 * once or none, and a hostile guest always fills every window it is offered.
 */
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { TcpConfig } from '../../netstack/tcp/connection.js';
import { DEFAULT_STACK_CONFIG } from '../../netstack/stack.js';
import { BufferBudget, SHARE_CEILING } from '../../src/limits.js';
import { TcpPipe } from '../../src/nat/tcp-pipe.js';
import { established } from '../netstack/tcp-harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const D = DEFAULT_STACK_CONFIG.tcp;
/** The stack's defaults: the window starts at recvWindowInitialBytes and may grow to recvBufferBytes. */
const TCP: TcpConfig = { sendBufferBytes: D.sendBufferBytes, recvBufferBytes: D.recvBufferBytes, recvWindowInitialBytes: D.recvWindowInitialBytes, oooBytes: D.oooBytes, timeWaitMs: 60_000 };
const INITIAL = D.recvWindowInitialBytes ?? D.recvBufferBytes;
/** MTU 65520 (a TAP with offload): 64 KiB segments. */
const MSS = 65480;
const SEG = MSS - 12; // less the timestamp option
/** --flow-buffer-bytes' default: the host socket's writableHighWaterMark. */
const FLOW_BUFFER = 256 * KiB;
/** What --total-buffer-bytes' help promises beyond the budget, per flow: share + one read/write + the initial receive window. */
const PER_FLOW_BOUND = 192 * KiB;

/** A host socket whose kernel takes every write at once, or (stalled) none until it reads again. */
class HostSocket extends Duplex {
  taken = 0;
  stalled = false;
  private waiting: (() => void)[] = [];
  constructor() {
    super({ writableHighWaterMark: FLOW_BUFFER, allowHalfOpen: true });
  }
  override _read(): void {}
  override _write(chunk: Buffer, _e: BufferEncoding, cb: () => void): void {
    this.take(chunk.length, cb);
  }
  override _writev(chunks: { chunk: Buffer }[], cb: () => void): void {
    this.take(
      chunks.reduce((n, c) => n + c.chunk.length, 0),
      cb,
    );
  }
  private take(n: number, cb: () => void): void {
    const done = (): void => {
      this.taken += n;
      cb();
    };
    if (this.stalled) this.waiting.push(done);
    else done();
  }
}

type Guest = ReturnType<typeof established>;
interface Flow {
  host: HostSocket;
  pipe: TcpPipe;
  g: Guest;
  sent: number;
}

/** A budget that counts exactly at every charge (its clock moves past the recount interval at every look). */
function exactBudget(max: number): BufferBudget {
  let t = 0;
  return new BufferBudget(max, () => (t += 1000));
}

/** Paused flows resume on the budget's own timer (tens of ms): wait for it, as a long transfer would. */
async function resumed(budget: BufferBudget): Promise<void> {
  for (let i = 0; i < 100 && budget.stats().pausedFlows > 0; i++) await new Promise((r) => setTimeout(r, 20));
}

function flow(budget: BufferBudget): Flow {
  const host = new HostSocket();
  const pipe = new TcpPipe(host as unknown as Socket, { waitForConnect: false, onFinished: () => {}, budget });
  const g = established({ cfg: TCP, mss: MSS, handlers: pipe.handlers });
  pipe.bind(g.conn);
  return { host, pipe, g, sent: 0 };
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
const payload = new Uint8Array(SEG).fill(0x5a);

/** The guest fills the window Moat advertised, in one input batch ACKed at its end (a TAP batch). Returns the bytes sent. */
function fillWindow(f: Flow): number {
  const g = f.g;
  let left = g.conn.debug.rcvWnd;
  const flush = g.host.flush.bind(g.host);
  g.host.flush = () => {};
  let n = 0;
  try {
    while (left > 0) {
      const len = Math.min(left, SEG);
      g.send({ payload: len === SEG ? payload : payload.subarray(0, len) });
      g.rcv += len;
      left -= len;
      n += len;
    }
  } finally {
    g.host.flush = flush;
  }
  g.host.flush();
  g.host.take();
  f.sent += n;
  return n;
}

/** What every flow holds in memory now, counted from the parts: host socket queue, receive ring (in order and out of order), send buffer. */
function held(flows: Flow[]): number {
  return flows.reduce((n, f) => n + f.host.writableLength + f.g.conn.debug.recvBuffered + f.g.conn.debug.oooBytes + f.g.conn.bufferedAmount, 0);
}

describe('--total-buffer-bytes counts and bounds the receive rings', () => {
  it('64 flows whose hosts read fast and then stop, with a guest that keeps filling every window: all buffers together, rings included, stay under the budget + flows x 192 KiB (share, one read, initial window)', async () => {
    const BUDGET = 1 * MiB;
    const FLOWS = 64;
    const bound = BUDGET + FLOWS * PER_FLOW_BOUND;
    const budget = exactBudget(BUDGET);
    const flows = Array.from({ length: FLOWS }, () => flow(budget));
    let peak = 0;
    let counted = 0;
    let countMismatch = 0;
    const check = (): void => {
      const h = held(flows);
      peak = Math.max(peak, h);
      expect(h).toBeLessThanOrEqual(bound);
      // The pipe's own count includes the ring: the budget sees what is held.
      counted = flows.reduce((n, f) => n + f.pipe.bufferedBytes(), 0);
      if (counted !== h) countMismatch++;
    };
    // The hosts read fast: every window is filled each round, so autotuning wants to grow them all.
    for (let round = 0; round < 12; round++) {
      for (const f of flows) fillWindow(f);
      await turn();
      check();
      await resumed(budget);
    }
    const passed = flows.reduce((n, f) => n + f.host.taken, 0);
    expect(passed).toBeGreaterThan(8 * BUDGET);
    // The hosts stop reading; the guest goes on filling whatever window each flow still offers.
    for (const f of flows) f.host.stalled = true;
    let offered = 0;
    for (let round = 0; round < 40; round++) {
      let sent = 0;
      for (const f of flows) sent += fillWindow(f);
      offered += sent;
      await turn();
      check();
      if (sent === 0 && round > 4) break;
    }
    expect(countMismatch).toBe(0);
    expect(SHARE_CEILING + 64 * KiB + INITIAL).toBeLessThanOrEqual(PER_FLOW_BOUND);
    expect(counted).toBe(held(flows));
    // Every window is closed now: this is the most the guest can make Moat hold.
    for (const f of flows) expect(f.g.conn.debug.rcvWnd).toBe(0);
    expect(offered).toBeGreaterThan(BUDGET);
    process.stdout.write(
      `ring-budget: ${FLOWS} flows, budget ${BUDGET}, bound ${bound}: passed ${passed}, then held ${held(flows)} (peak ${peak}), ` +
        `windows granted ${budget.stats().windowBytes}\n`,
    );
    budget.close();
  });

  it('autotuning does not grow a window while the budget has no room for the growth', async () => {
    const budget = exactBudget(64 * MiB);
    // Other flows hold all but less than one growth step (the batch on its way to the host
    // counts too): nothing is paused, but no window may grow.
    budget.add({ bufferedBytes: () => 64 * MiB - (3 * INITIAL) / 2, resumeFromBudget: () => {} });
    const f = flow(budget);
    for (let round = 0; round < 30; round++) {
      fillWindow(f);
      await turn();
    }
    expect(f.host.taken).toBe(f.sent);
    expect(f.sent).toBeGreaterThan(30 * (INITIAL / 2));
    expect(f.g.conn.debug.rcvWndCap).toBe(INITIAL);
    expect(budget.stats().windowBytes).toBe(0);
    budget.close();
  });

  it('a single flow with room in the budget still grows its window to the maximum (the upload speed stays), and the budget counts the growth until the flow goes', async () => {
    const budget = exactBudget(64 * MiB);
    const f = flow(budget);
    for (let round = 0; round < 30; round++) {
      fillWindow(f);
      await turn();
    }
    expect(f.host.taken).toBe(f.sent);
    expect(f.g.conn.debug.rcvWndCap).toBe(TCP.recvBufferBytes);
    expect(budget.stats().windowBytes).toBe(TCP.recvBufferBytes - INITIAL);
    budget.remove(f.pipe);
    expect(budget.stats().windowBytes).toBe(0);
    budget.close();
  });
});
