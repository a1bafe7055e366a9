/**
 * Two Stacks joined by a link that drops, duplicates, reorders and delays
 * frames; the "guest" stack makes the active open into "moat". Every byte
 * must arrive exactly once and in order both ways, both sides must close
 * cleanly, and no buffer may ever exceed its bound.
 */
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { TcpCloseReason, TcpHandlers, TcpSocket } from '../../netstack/api.js';
import { DEFAULT_STACK_CONFIG } from '../../netstack/stack.js';
import type { TcpConnection } from '../../netstack/tcp/connection.js';
import { GUEST_IP, HOST_ALIAS, Link, type LinkFaults } from '../support/link.js';

/** Deterministic bytes for a stream, so the receiver can check every one. */
function streamBytes(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed | 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** One end of the test: writes `data` as fast as the socket takes it, then end(); collects what arrives. */
class Endpoint {
  socket: TcpSocket | undefined;
  readonly chunks: Uint8Array[] = [];
  received = 0;
  ended = false;
  closed: TcpCloseReason | undefined;
  connected = false;
  private written = 0;
  private finished = false;

  constructor(private readonly data: Uint8Array, private readonly writeChunk: number) {}

  readonly handlers: TcpHandlers = {
    onData: (d) => {
      this.chunks.push(d.slice());
      this.received += d.length;
    },
    onEnd: () => {
      this.ended = true;
    },
    onDrain: () => this.pump(),
    onClose: (r) => {
      this.closed = r;
    },
    onConnect: () => {
      this.connected = true;
      this.pump();
    },
  };

  pump(): void {
    const s = this.socket;
    if (s === undefined || this.finished) return;
    while (this.written < this.data.length) {
      const want = Math.min(this.writeChunk, this.data.length - this.written);
      const n = s.write(this.data.subarray(this.written, this.written + want));
      this.written += n;
      if (n < want) return;
    }
    this.finished = true;
    s.end();
  }

  receivedBytes(): Uint8Array {
    return Buffer.concat(this.chunks);
  }
}

interface Scenario {
  faults: LinkFaults;
  seed: number;
  up: number;
  down: number;
  sendBuffer: number;
  recvBuffer: number;
  oooBytes: number;
  writeChunk: number;
  mtu: number;
  pauseEvery: number;
}

function runScenario(s: Scenario) {
  const tcp = {
    ...DEFAULT_STACK_CONFIG.tcp,
    sendBufferBytes: s.sendBuffer,
    recvBufferBytes: s.recvBuffer,
    oooBytes: s.oooBytes,
  };
  const guestSide = new Endpoint(streamBytes(s.seed, s.up), s.writeChunk);
  const moatSide = new Endpoint(streamBytes(s.seed + 1, s.down), s.writeChunk);
  const link = new Link({
    faults: s.faults,
    seed: s.seed,
    mtu: s.mtu,
    moatConfig: { tcp },
    guestConfig: { tcp },
    moatEvents: {
      onTcpSyn: (p) => {
        moatSide.socket = p.accept(moatSide.handlers);
        moatSide.connected = true;
        moatSide.pump();
      },
      onUdp: () => {},
    },
    guestEvents: { onTcpSyn: (p) => p.refuse(), onUdp: () => {} },
  });
  guestSide.socket = link.guest.connectTcp({ from: GUEST_IP, fromPort: 40000, to: HOST_ALIAS, toPort: 8080 }, guestSide.handlers);

  let steps = 0;
  let violations: string[] = [];
  const checkBounds = (name: string, sock: TcpSocket | undefined) => {
    if (sock === undefined) return;
    const d = (sock as TcpConnection).debug;
    if (sock.bufferedAmount > s.sendBuffer) violations.push(`${name} send ${sock.bufferedAmount} > ${s.sendBuffer}`);
    if (d.recvBuffered > s.recvBuffer) violations.push(`${name} recv ${d.recvBuffered} > ${s.recvBuffer}`);
    if (d.oooBytes > s.oooBytes) violations.push(`${name} ooo ${d.oooBytes} > ${s.oooBytes}`);
  };
  const done = () => {
    steps++;
    checkBounds('guest', guestSide.socket);
    checkBounds('moat', moatSide.socket);
    // A slow reader on Moat's side: pause now and then, resume on a later step.
    if (s.pauseEvery > 0 && moatSide.socket !== undefined && moatSide.closed === undefined) {
      if (steps % s.pauseEvery === 0) moatSide.socket.pause();
      else if (steps % s.pauseEvery === Math.floor(s.pauseEvery / 2)) moatSide.socket.resume();
    }
    return guestSide.closed !== undefined && moatSide.closed !== undefined;
  };
  const finished = link.run(done, 3_600_000);
  // A paused socket may hold the last bytes: resume and let everything settle.
  moatSide.socket?.resume();
  link.run(() => guestSide.closed !== undefined && moatSide.closed !== undefined, 3_600_000);
  violations = violations.slice(0, 5);
  return { finished, guestSide, moatSide, link, violations };
}

const faultArb: fc.Arbitrary<LinkFaults> = fc.record({
  drop: fc.double({ min: 0, max: 0.15, noNaN: true }),
  duplicate: fc.double({ min: 0, max: 0.1, noNaN: true }),
  reorder: fc.double({ min: 0, max: 0.3, noNaN: true }),
  delayMs: fc.integer({ min: 0, max: 30 }),
  jitterMs: fc.integer({ min: 0, max: 10 }),
});

const scenarioArb: fc.Arbitrary<Scenario> = fc.record({
  faults: faultArb,
  seed: fc.integer({ min: 1, max: 2 ** 30 }),
  up: fc.integer({ min: 0, max: 200_000 }),
  down: fc.integer({ min: 0, max: 200_000 }),
  sendBuffer: fc.integer({ min: 2_048, max: 256 * 1024 }),
  recvBuffer: fc.integer({ min: 2_048, max: 256 * 1024 }),
  oooBytes: fc.integer({ min: 0, max: 128 * 1024 }),
  writeChunk: fc.integer({ min: 1, max: 64 * 1024 }),
  mtu: fc.constantFrom(576, 1500, 9000, 65520),
  pauseEvery: fc.constantFrom(0, 0, 7, 31),
});

describe('two stacks over a faulty link', () => {
  it('a perfect link delivers 1 MiB each way and both sides close cleanly', () => {
    const r = runScenario({
      faults: { drop: 0, duplicate: 0, reorder: 0, delayMs: 1, jitterMs: 0 },
      seed: 7,
      up: 1 << 20,
      down: 1 << 20,
      sendBuffer: 256 * 1024,
      recvBuffer: 256 * 1024,
      oooBytes: 64 * 1024,
      writeChunk: 16 * 1024,
      mtu: 1500,
      pauseEvery: 0,
    });
    expect(r.finished).toBe(true);
    expect(sha(r.moatSide.receivedBytes())).toBe(sha(streamBytes(7, 1 << 20)));
    expect(sha(r.guestSide.receivedBytes())).toBe(sha(streamBytes(8, 1 << 20)));
    expect([r.guestSide.closed, r.moatSide.closed]).toEqual(['closed', 'closed']);
    expect(r.guestSide.ended && r.moatSide.ended).toBe(true);
    // TIME-WAIT holds the tuple for a while after onClose; then every table empties.
    const empty = () => r.link.moat.tableSizes().connections + r.link.guest.tableSizes().connections === 0;
    expect(r.link.run(empty, 5 * 60_000)).toBe(true);
  });

  it('every byte arrives exactly once, in order, both ways, whatever the link does', () => {
    fc.assert(
      fc.property(scenarioArb, (s) => {
        const r = runScenario(s);
        expect(r.violations).toEqual([]);
        expect(r.moatSide.received).toBe(s.up);
        expect(r.guestSide.received).toBe(s.down);
        expect(sha(r.moatSide.receivedBytes())).toBe(sha(streamBytes(s.seed, s.up)));
        expect(sha(r.guestSide.receivedBytes())).toBe(sha(streamBytes(s.seed + 1, s.down)));
        expect(r.moatSide.ended).toBe(true);
        expect(r.guestSide.ended).toBe(true);
        expect([r.guestSide.closed, r.moatSide.closed]).toEqual(['closed', 'closed']);
      }),
      { numRuns: Number(process.env.LINK_RUNS ?? 40), seed: Number(process.env.LINK_SEED ?? 20261123) },
    );
  });
});
