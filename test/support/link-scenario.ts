/**
 * The scenario behind the two-stack property test: a guest and Moat, joined
 * by a faulty Link, each write a deterministic stream and end(); the result
 * says what arrived, how each side closed, and any buffer-bound violation.
 */
import { createHash } from 'node:crypto';
import type { TcpCloseReason, TcpHandlers, TcpSocket } from '../../netstack/api.js';
import { DEFAULT_STACK_CONFIG } from '../../netstack/stack.js';
import type { TcpConnection } from '../../netstack/tcp/connection.js';
import { GUEST_IP, HOST_ALIAS, Link, type LinkFaults } from './link.js';

/** Deterministic bytes for a stream, so the receiver can check every one. */
export function streamBytes(seed: number, length: number): Uint8Array {
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

export const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** One end of the test: writes `data` as fast as the socket takes it, then end(); collects what arrives. */
export class Endpoint {
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

export interface Scenario {
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
  /** Offloads both ways (Link's offload): partial checksums, super-segments, link marks. */
  offload?: boolean;
}

export function runScenario(s: Scenario, onFrame?: ConstructorParameters<typeof Link>[0]['onFrame']) {
  const tcp = {
    ...DEFAULT_STACK_CONFIG.tcp,
    sendBufferBytes: s.sendBuffer,
    recvBufferBytes: s.recvBuffer,
    oooBytes: s.oooBytes,
    ...(s.offload === true ? { checksumOffload: true, segmentOffloadBytes: 65_000 } : {}),
  };
  const guestSide = new Endpoint(streamBytes(s.seed, s.up), s.writeChunk);
  const moatSide = new Endpoint(streamBytes(s.seed + 1, s.down), s.writeChunk);
  const link = new Link({
    onFrame,
    faults: s.faults,
    seed: s.seed,
    mtu: s.mtu,
    offload: s.offload,
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

