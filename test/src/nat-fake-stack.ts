/**
 * A fake of the netstack contract (netstack/api.ts) for NAT, DNS forwarder
 * and port forwarder tests: the test plays the guest. It never parses frames;
 * it records what the code under test asked the stack to do and lets the
 * test drive the guest side (send bytes, FIN, RST, consume the send buffer).
 */
import type {
  FourTuple,
  NetStack,
  PendingTcp,
  SynInfo,
  TcpCloseReason,
  TcpHandlers,
  TcpSocket,
  UdpDatagram,
} from '../../netstack/api.js';
import type { IpAddress, IPv4 } from '../../netstack/addr.js';

/** A guest-side TCP connection whose send buffer (towards the guest) holds `capacity` bytes until the test consumes them. */
export class FakeTcpSocket implements TcpSocket {
  state = 'ESTABLISHED';
  /** Bytes the NAT wrote and the fake guest has not consumed yet. */
  private buffered: Uint8Array[] = [];
  private bufferedBytes = 0;
  /** Everything the guest has consumed, in order. */
  received: Uint8Array[] = [];
  receivedBytes = 0;
  endCalled = false;
  abortCalled = false;
  closedWith: TcpCloseReason | undefined;
  paused = false;
  pauseCount = 0;
  private shortWrite = false;
  private guestQueue: Uint8Array[] = [];
  private guestFinSent = false;
  private finQueued = false;
  maxBuffered = 0;
  /** The fake has no receive ring: bytes sent while paused wait on the guest's side (guestQueue), as behind a closed window. */
  readonly recvBufferedAmount = 0;

  constructor(
    readonly tuple: FourTuple,
    readonly handlers: TcpHandlers,
    public capacity: number,
    /** Consume written bytes automatically (on a later turn), like a fast guest. */
    public autoConsume: boolean,
  ) {}

  get bufferedAmount(): number {
    return this.bufferedBytes;
  }
  get writableSpace(): number {
    return Math.max(0, this.capacity - this.bufferedBytes);
  }

  write(data: Uint8Array): number {
    if (this.closedWith !== undefined || this.endCalled) throw new Error(`write after ${this.closedWith ?? 'end'}`);
    const n = Math.min(data.length, this.writableSpace);
    if (n > 0) {
      // The contract: write() copies (a Buffer's slice() would be a view).
      this.buffered.push(Uint8Array.prototype.slice.call(data, 0, n));
      this.bufferedBytes += n;
      this.maxBuffered = Math.max(this.maxBuffered, this.bufferedBytes);
    }
    if (n < data.length) this.shortWrite = true;
    if (this.autoConsume) setImmediate(() => this.consume());
    return n;
  }

  end(): void {
    this.endCalled = true;
    this.state = this.guestFinSent ? 'LAST-ACK' : 'FIN-WAIT-1';
    this.maybeClosed();
  }

  abort(): void {
    this.abortCalled = true;
    this.close('aborted');
  }

  pause(): void {
    if (!this.paused) this.pauseCount++;
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    while (!this.paused && this.guestQueue.length > 0 && this.closedWith === undefined) {
      this.handlers.onData(this.guestQueue.shift()!);
    }
    if (!this.paused && this.guestQueue.length === 0 && this.finQueued && this.closedWith === undefined) {
      this.finQueued = false;
      this.deliverFin();
    }
  }

  /** The fake guest reads up to `max` bytes of what the NAT wrote; fires onDrain after a short write. */
  consume(max = Infinity): number {
    let taken = 0;
    while (this.buffered.length > 0 && taken < max) {
      const head = this.buffered[0]!;
      const n = Math.min(head.length, max - taken);
      this.received.push(head.subarray(0, n));
      if (n === head.length) this.buffered.shift();
      else this.buffered[0] = head.subarray(n);
      taken += n;
    }
    this.bufferedBytes -= taken;
    this.receivedBytes += taken;
    if (taken > 0 && this.shortWrite && this.closedWith === undefined) {
      this.shortWrite = false;
      this.handlers.onDrain();
    }
    this.maybeClosed();
    return taken;
  }

  /** The guest sends bytes (queued while paused, like a closed window). */
  guestSend(data: Uint8Array): void {
    if (this.paused || this.guestQueue.length > 0) this.guestQueue.push(data.slice());
    else this.handlers.onData(data);
  }

  get queuedFromGuest(): number {
    return this.guestQueue.reduce((n, c) => n + c.length, 0);
  }

  /** The guest sends FIN (delivered after any bytes still queued by a pause). */
  guestFin(): void {
    if (this.paused || this.guestQueue.length > 0) {
      this.finQueued = true;
      return;
    }
    this.deliverFin();
  }

  private deliverFin(): void {
    this.guestFinSent = true;
    this.state = this.endCalled ? 'TIME-WAIT' : 'CLOSE-WAIT';
    this.handlers.onEnd();
    this.maybeClosed();
  }

  /** The guest sends RST. */
  guestReset(): void {
    this.close('reset');
  }

  receivedConcat(): Buffer {
    return Buffer.concat(this.received);
  }

  private maybeClosed(): void {
    if (this.guestFinSent && this.endCalled && this.bufferedBytes === 0 && this.closedWith === undefined) {
      setImmediate(() => this.close('closed'));
    }
  }

  close(reason: TcpCloseReason): void {
    if (this.closedWith !== undefined) return;
    this.closedWith = reason;
    this.state = 'CLOSED';
    this.handlers.onClose(reason);
  }
}

export type PendingOutcome = { kind: 'accepted'; socket: FakeTcpSocket } | { kind: 'refused' } | { kind: 'ignored' };

export class FakePendingTcp implements PendingTcp {
  readonly syn: SynInfo;
  outcome: PendingOutcome | undefined;
  readonly decided: Promise<PendingOutcome>;
  private settle!: (o: PendingOutcome) => void;

  constructor(
    tuple: FourTuple,
    private readonly socketOpts: { capacity: number; autoConsume: boolean } = { capacity: 256 * 1024, autoConsume: true },
  ) {
    this.syn = { ...tuple, mss: 1460, windowScale: 7, sackPermitted: true, timestamps: true };
    this.decided = new Promise((r) => (this.settle = r));
  }

  accept(handlers: TcpHandlers): TcpSocket {
    const socket = new FakeTcpSocket(this.syn, handlers, this.socketOpts.capacity, this.socketOpts.autoConsume);
    this.decide({ kind: 'accepted', socket });
    return socket;
  }
  refuse(): void {
    this.decide({ kind: 'refused' });
  }
  ignore(): void {
    this.decide({ kind: 'ignored' });
  }

  private decide(o: PendingOutcome): void {
    if (this.outcome !== undefined) throw new Error(`PendingTcp decided twice: ${this.outcome.kind} then ${o.kind}`);
    this.outcome = o;
    this.settle(o);
  }
}

export interface SentUdp {
  from: IpAddress;
  fromPort: number;
  to: IpAddress;
  toPort: number;
  payload: Buffer;
}

/** Records sendUdp/sendIcmp/connectTcp; everything frame-related is unused by the NAT and throws. */
export class FakeStack implements NetStack {
  readonly udpSent: SentUdp[] = [];
  readonly connects: { endpoints: { from: IpAddress; fromPort: number; to: IpAddress; toPort: number }; socket: FakeTcpSocket }[] = [];
  private udpWaiters: (() => void)[] = [];
  connectCapacity = 256 * 1024;

  input(): void {
    throw new Error('not used');
  }
  advance(): void {}
  nextDeadline(): number | undefined {
    return undefined;
  }
  connectTcp(endpoints: { from: IpAddress; fromPort: number; to: IpAddress; toPort: number }, handlers: TcpHandlers): TcpSocket {
    const tuple: FourTuple = { src: endpoints.to, srcPort: endpoints.toPort, dst: endpoints.from, dstPort: endpoints.fromPort };
    const socket = new FakeTcpSocket(tuple, handlers, this.connectCapacity, true);
    socket.state = 'SYN-SENT';
    this.connects.push({ endpoints, socket });
    return socket;
  }
  sendUdp(from: IpAddress, fromPort: number, to: IpAddress, toPort: number, payload: Uint8Array): void {
    this.udpSent.push({ from, fromPort, to, toPort, payload: Buffer.from(payload) });
    const waiters = this.udpWaiters;
    this.udpWaiters = [];
    for (const w of waiters) w();
  }
  /** ICMP the NAT sent to the guest (echo replies through the ping socket). */
  readonly icmpSent: { from: IPv4; to: IPv4; icmp: Buffer }[] = [];
  sendIcmp(from: IPv4, to: IPv4, icmp: Uint8Array): void {
    this.icmpSent.push({ from, to, icmp: Buffer.from(icmp) });
  }
  resetGuest(): void {}
  dhcpLeases(): { mac: number; ip: number; expiresAt: number }[] {
    return [];
  }
  get config(): never {
    throw new Error('not used');
  }
  get stats(): never {
    throw new Error('not used');
  }

  /** Resolves when udpSent has at least `n` entries. */
  async waitUdp(n: number, timeoutMs = 3000): Promise<SentUdp[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.udpSent.length < n) {
      if (Date.now() > deadline) throw new Error(`expected ${n} datagrams to the guest, got ${this.udpSent.length}`);
      await new Promise<void>((r) => {
        this.udpWaiters.push(r);
        setTimeout(r, 50);
      });
    }
    return this.udpSent;
  }
}

export function udpDatagram(tuple: FourTuple, payload: Uint8Array): UdpDatagram {
  return { ...tuple, payload };
}

/** Polls `cond` until true or fails after `timeoutMs`. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
