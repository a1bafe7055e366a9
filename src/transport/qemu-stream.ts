/**
 * The guest link over QEMU stream framing: listens on every --listen-qemu
 * address, serves one guest connection at a time, cuts its bytes into frames
 * for the stack and writes the stack's output batches back.
 *
 * One guest at a time: a new connection while one is active replaces it. The
 * old one is almost certainly dead already (VM rebooted, shim restarted) and
 * the kernel has not noticed; keeping it would leave the new guest unserved.
 * Whenever a guest goes away the stack's per-guest state is reset.
 *
 * Backpressure towards the guest: we never stop reading the guest's socket
 * (its input carries the ACKs that free our own send buffers, so pausing it
 * can deadlock both directions). Instead, when the socket's unsent queue is
 * over `maxQueuedBytes`, further output batches are dropped and counted, as a
 * real NIC drops when its ring is full; TCP retransmits, UDP is lossy anyway.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { ListenAddress } from '../config.js';
import type { Logger } from '../log.js';
import type { OutputBatch } from '../../netstack/api.js';
import { FrameDecoder } from './frame-decoder.js';
import { closeServer, listenOn } from './listen.js';

/** Where the frames go, and who hears that the guest left. */
export interface GuestSink {
  /** A batch of frames from one socket chunk; views valid only during the call. marks: see NetStack.input. */
  input(frames: readonly Uint8Array[], marks?: ArrayLike<number>): void;
  /** The guest connection ended (closed, failed, broke framing or was replaced). */
  guestGone(): void;
}

/** Optional observer of every frame, e.g. the pcap writer. */
export interface FrameTap {
  frameIn(frame: Uint8Array): void;
  frameOut(frame: Uint8Array): void;
}

export interface QemuStreamOptions {
  /** Unsent bytes allowed in the guest socket before output is dropped. */
  maxQueuedBytes: number;
  /**
   * Guest bytes taken before the link yields: it stops reading until the
   * next event-loop turn (setImmediate), so that other links in the process
   * get theirs (libuv otherwise reads a busy socket up to 32 times in a
   * row). So no turn takes much more than this from one link. Infinity:
   * never yield (`moat serve`, one link per process).
   */
  turnBudgetBytes: number;
}

export const DEFAULT_QEMU_STREAM_OPTIONS: QemuStreamOptions = { maxQueuedBytes: 4 * 1024 * 1024, turnBudgetBytes: Infinity };

export interface LinkStats {
  guestConnected: boolean;
  connections: number;
  replacedConnections: number;
  chunksIn: number;
  framesIn: number;
  bytesIn: number;
  framesOut: number;
  bytesOut: number;
  framingErrors: number;
  /** Output frames dropped because the guest socket's queue was full. */
  outputDroppedBackpressure: number;
  /** Output frames dropped because no guest was connected. */
  outputDroppedNoGuest: number;
  /** Output frames the device refused (a TAP answering EINVAL to one frame); the link goes on. */
  outputRejected: number;
  /** Turns in which the link took its budget of guest bytes and yielded to other links. */
  turnYields: number;
  /** Input frames the link itself dropped, by reason (a TAP's virtio-net header it does not believe); absent when none. */
  inputDropped?: Record<string, number>;
  /** Input frames that came as one unsegmented TCP segment (receive offload, GSO); absent without offload. */
  gsoFramesIn?: number;
}

/** Every link's counters, all zero (each guest link keeps the same set for /stats). */
export function newLinkStats(): LinkStats {
  return {
    guestConnected: false,
    connections: 0,
    replacedConnections: 0,
    chunksIn: 0,
    framesIn: 0,
    bytesIn: 0,
    framesOut: 0,
    bytesOut: 0,
    framingErrors: 0,
    outputDroppedBackpressure: 0,
    outputDroppedNoGuest: 0,
    outputRejected: 0,
    turnYields: 0,
  };
}

interface GuestConnection {
  readonly id: number;
  readonly socket: Socket;
  readonly decoder: FrameDecoder;
  readonly peer: string;
  /** Bytes read in this turn (for turnBudgetBytes). */
  turnBytes: number;
  /** Paused until the next turn. */
  yielding: boolean;
}

export class QemuStreamServer {
  private readonly servers: { server: Server; addr: ListenAddress }[] = [];
  private guest: GuestConnection | undefined;
  private nextId = 1;
  private closing = false;
  private readonly log: Logger;
  private readonly opts: QemuStreamOptions;
  readonly stats: LinkStats = newLinkStats();
  /** Set by the owner when --pcap is given. */
  tap: FrameTap | undefined;

  constructor(
    private readonly sink: GuestSink,
    log: Logger,
    opts: Partial<QemuStreamOptions> = {},
  ) {
    this.log = log.child({ component: 'qemu-stream' });
    this.opts = { ...DEFAULT_QEMU_STREAM_OPTIONS, ...opts };
  }

  /** Listens on every address; resolves with them as text (real tcp ports). Closes what it opened on failure. */
  async listen(addrs: readonly ListenAddress[]): Promise<string[]> {
    const urls: string[] = [];
    try {
      for (const addr of addrs) {
        const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
        this.servers.push({ server, addr });
        urls.push(await listenOn(server, addr));
      }
    } catch (e) {
      await this.close();
      throw e;
    }
    return urls;
  }

  get guestConnected(): boolean {
    return this.guest !== undefined;
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const peer = socket.remoteAddress !== undefined ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    const old = this.guest;
    if (old !== undefined) {
      this.stats.replacedConnections++;
      this.log.warn('new guest connection replaces the active one', { old: old.id, oldPeer: old.peer, peer });
      this.endGuest(old, 'replaced');
    }
    const conn: GuestConnection = { id: this.nextId++, socket, decoder: new FrameDecoder(), peer, turnBytes: 0, yielding: false };
    this.guest = conn;
    this.stats.connections++;
    this.stats.guestConnected = true;
    this.log.info('guest connected', { conn: conn.id, peer });

    socket.on('data', (chunk: Buffer) => this.onData(conn, chunk));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      this.log.warn('guest connection error', { conn: conn.id, error: e.code ?? e.message });
    });
    socket.on('close', () => {
      if (this.guest === conn) this.endGuest(conn, 'closed');
    });
  }

  private onData(conn: GuestConnection, chunk: Buffer): void {
    if (this.guest !== conn) return; // replaced; its last bytes are not for the new guest's stack state
    this.stats.chunksIn++;
    conn.turnBytes += chunk.length;
    if (conn.turnBytes >= this.opts.turnBudgetBytes && !conn.yielding) this.yieldTurn(conn);
    const frames = conn.decoder.push(chunk);
    if (frames.length > 0) {
      this.stats.framesIn += frames.length;
      for (let i = 0; i < frames.length; i++) this.stats.bytesIn += frames[i]!.length;
      const tap = this.tap;
      if (tap !== undefined) for (let i = 0; i < frames.length; i++) tap.frameIn(frames[i]!);
      this.sink.input(frames);
    }
    const error = conn.decoder.error;
    if (error !== undefined && this.guest === conn) {
      this.stats.framingErrors++;
      this.log.warn('guest broke QEMU stream framing; dropping the connection', {
        conn: conn.id,
        reason: error.reason,
        length: error.length,
      });
      this.endGuest(conn, error.reason);
    }
  }

  /**
   * Stops reading this guest until the next turn. The chunk in hand is still
   * processed; a paused socket is never left paused (the guest's input
   * carries the ACKs that free our buffers).
   */
  private yieldTurn(conn: GuestConnection): void {
    conn.yielding = true;
    this.stats.turnYields++;
    conn.socket.pause();
    setImmediate(() => {
      conn.yielding = false;
      conn.turnBytes = 0;
      if (this.guest === conn && !conn.socket.destroyed) conn.socket.resume();
    });
  }

  /** Forgets the connection, destroys its socket and tells the sink (once per connection). */
  private endGuest(conn: GuestConnection, why: string): void {
    if (this.guest !== conn) return;
    this.guest = undefined;
    this.stats.guestConnected = false;
    conn.socket.destroy();
    this.log.info('guest disconnected', { conn: conn.id, why });
    this.sink.guestGone();
  }

  /** Sends a stack output batch to the current guest, or drops it (counted). */
  send(batch: OutputBatch): void {
    const conn = this.guest;
    if (conn === undefined || conn.socket.destroyed) {
      this.stats.outputDroppedNoGuest += batch.frameCount;
      batch.release();
      return;
    }
    const socket = conn.socket;
    let bytes = 0;
    for (const chunk of batch.framed) bytes += chunk.length;
    if (socket.writableLength + bytes > this.opts.maxQueuedBytes) {
      this.stats.outputDroppedBackpressure += batch.frameCount;
      if (this.log.enabled('debug')) {
        this.log.debug('guest socket queue full; output dropped', { frames: batch.frameCount, queued: socket.writableLength });
      }
      batch.release();
      return;
    }
    const tap = this.tap;
    if (tap !== undefined) batch.forEachFrame((f) => tap.frameOut(f));
    this.stats.framesOut += batch.frameCount;
    // The length prefixes are part of the wire bytes but not of the frames counted in bytesIn; keep the two comparable.
    this.stats.bytesOut += bytes - 4 * batch.frameCount;
    // The stack may reuse the staging memory once the socket is done with it
    // (the callback also runs when the write fails: then nothing reads it either).
    const release = () => batch.release();
    if (batch.framed.length === 1) {
      socket.write(batch.framed[0]!, release);
    } else {
      // Several chunks leave in one writev syscall.
      socket.cork();
      const last = batch.framed.length - 1;
      batch.framed.forEach((chunk, i) => socket.write(chunk, i === last ? release : undefined));
      socket.uncork();
    }
  }

  /** Stops listening and drops the guest. The sink hears guestGone if a guest was connected. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.guest !== undefined) this.endGuest(this.guest, 'shutdown');
    await Promise.all(this.servers.map(({ server, addr }) => closeServer(server, addr)));
    this.servers.length = 0;
  }
}
