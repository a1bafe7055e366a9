/** Fakes for the service-shell tests: a NetStack that records calls, a PortForwards, a log sink. */
import type { NetStack, OutputBatch, StackConfig, StackEvents, TcpSocket } from '../../netstack/api.js';
import { DEFAULT_STACK_CONFIG } from '../../netstack/stack.js';
import { createLogger, type Logger } from '../../src/log.js';
import { ForwardError, type ForwardKey, type ForwardSpec, type PortForwards } from '../../src/port-forwards.js';

/** Encodes frames in QEMU stream framing (u32 BE length + frame). */
export function frameStream(frames: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const f of frames) total += 4 + f.length;
  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  let off = 0;
  for (const f of frames) {
    v.setUint32(off, f.length, false);
    out.set(f, off + 4);
    off += 4 + f.length;
  }
  return out;
}

export function outputBatch(frames: readonly Uint8Array[], chunks = 1): OutputBatch {
  // Split the framed bytes at frame boundaries into `chunks` pieces, like an arena that overflowed.
  const framed: Uint8Array[] = [];
  const per = Math.ceil(frames.length / chunks);
  for (let i = 0; i < frames.length; i += per) framed.push(frameStream(frames.slice(i, i + per)));
  return {
    framed,
    frameCount: frames.length,
    forEachFrame: (fn) => frames.forEach((f) => fn(f)),
    release: () => {
      released.count++;
    },
  };
}

/** How many fake batches were released (the transport must release each one exactly when done). */
export const released = { count: 0 };

export class FakeStack implements NetStack {
  readonly inputs: Uint8Array[][] = [];
  resets = 0;
  advances: (number | undefined)[] = [];
  deadline: number | undefined;
  readonly config: Readonly<StackConfig>;
  readonly stats = { framesIn: 0, bytesIn: 0, framesOut: 0, bytesOut: 0, drops: {} as Record<string, number>, tcpConnections: 0, tcpHeldSyns: 0 };
  leases: { mac: number; ip: number; expiresAt: number }[] = [];
  /** What input() does besides recording (e.g. echo output). */
  onInput: ((frames: readonly Uint8Array[]) => void) | undefined;

  constructor(
    config: StackConfig = DEFAULT_STACK_CONFIG,
    readonly events?: StackEvents,
  ) {
    this.config = config;
  }
  input(frames: readonly Uint8Array[]): void {
    // Copy: the views are only valid during the call.
    this.inputs.push(frames.map((f) => new Uint8Array(f)));
    this.stats.framesIn += frames.length;
    this.onInput?.(frames);
  }
  advance(now?: number): void {
    this.advances.push(now);
  }
  nextDeadline(): number | undefined {
    return this.deadline;
  }
  connectTcp(): TcpSocket {
    throw new Error('not in the fake');
  }
  sendUdp(): void {}
  sendIcmp(): void {}
  resetGuest(): void {
    this.resets++;
  }
  dhcpLeases(): { mac: number; ip: number; expiresAt: number }[] {
    return this.leases;
  }
}

export class FakeForwards implements PortForwards {
  readonly specs: ForwardSpec[] = [];
  closed = false;
  /** Make the next expose fail with this error. */
  failNext: Error | undefined;
  async expose(spec: ForwardSpec): Promise<void> {
    if (this.failNext !== undefined) {
      const e = this.failNext;
      this.failNext = undefined;
      throw e;
    }
    if (this.specs.some((s) => s.local === spec.local && s.protocol === spec.protocol)) {
      throw new ForwardError('conflict', `${spec.protocol} ${spec.local} is already forwarded`);
    }
    this.specs.push(spec);
  }
  async unexpose(key: ForwardKey): Promise<void> {
    const i = this.specs.findIndex((s) => s.local === key.local && s.protocol === key.protocol);
    if (i < 0) throw new ForwardError('not-found', `${key.protocol} ${key.local} is not forwarded`);
    this.specs.splice(i, 1);
  }
  list(): ForwardSpec[] {
    return this.specs.map((s) => ({ ...s }));
  }
  async close(): Promise<void> {
    this.closed = true;
  }
}

/** A JSON logger writing into an array of parsed lines. */
export function captureLogger(level: 'debug' | 'info' = 'debug'): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level, format: 'json', stream: { write: (s: string) => lines.push(JSON.parse(s)) } });
  return { log, lines };
}

export function waitFor(cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (cond()) resolve();
      else if (Date.now() - start > timeoutMs) reject(new Error('waitFor: timed out'));
      else setTimeout(tick, 5);
    };
    tick();
  });
}
