/**
 * The guest link over a TAP device Moat was handed as an open descriptor
 * (`moat-shim tap --exec moat serve --tap-fd 3 ...`): every read() is one
 * Ethernet frame from the guest, every write() one frame to it. Nothing
 * relays in between, so a request/response costs two process wake-ups fewer
 * than through the shim's socket.
 *
 * Node cannot open a TAP (that takes an ioctl), but it can watch one: libuv's
 * pipe handle accepts any descriptor it can poll, and its stream reads with
 * read(2), which on a TAP returns exactly one frame. Reads land in one reused
 * buffer (no allocation per frame); writes are synchronous write(2)s of each
 * frame (so the stack may lend its staging buffer: StackOptions.syncOutput),
 * which a TAP never blocks on (when the guest's queue is full the kernel
 * drops the frame and counts it, as a NIC would; TCP retransmits).
 *
 * A TAP has no "guest connected" moment: the link is up from start() until the
 * device is deleted (`ip link del`), which ends the link for good. Deleting
 * the guest's namespace does not delete it: the open TAP keeps the namespace
 * alive, so whoever tears the guest down stops Moat too (SIGTERM).
 */
import { fstatSync, readFileSync, writeSync, writevSync } from 'node:fs';
import { Socket } from 'node:net';
import type { OutputBatch } from '../../netstack/api.js';
import type { Logger } from '../log.js';
import { RX_GSO_TCP } from '../../netstack/index.js';
import { wholeFrame } from '../../netstack/frame-arena.js';
import { newLinkStats, type FrameTap, type GuestSink, type LinkStats } from './qemu-stream.js';
import { readVnetHeader, VNET_HDR_BYTES } from './vnet-header.js';
import { TapDrainPolicy } from './tap-drain.js';
import { readNonBlocking } from '../read-nonblocking.js';

/** Largest read from a TAP: a virtio-net header, MTU 65535 and the Ethernet header (as the frame decoder's bound). */
const READ_BUFFER_BYTES = 10 + 65535 + 14;
const ETHERNET_HEADER_BYTES = 14;
/** At most this many frames reach the stack per wake-up, so that output (and timers) are not starved. */
const MAX_BATCH_FRAMES = 64;
/** Room for the rest of a batch: 64 MTU-1500 frames, or 7 of the largest. */
const BATCH_BUFFER_BYTES = 8 * READ_BUFFER_BYTES;

interface PipeHandle {
  open(fd: number): number;
}
interface PipeWrapBinding {
  Pipe: new (type: number) => PipeHandle;
  constants: { SOCKET: number };
}

/** libuv's pipe handle around FD: a stream that polls FD and read()s/write()s it. */
function streamHandleFor(fd: number): PipeHandle {
  // process.binding is Node's documented-deprecated door to its stream
  // wrappers; pipe_wrap is on its allow-list. It is the only way to get
  // epoll-driven reads on a descriptor that is neither a socket nor a FIFO.
  const binding = (process as unknown as { binding(name: string): PipeWrapBinding }).binding('pipe_wrap');
  const handle = new binding.Pipe(binding.constants.SOCKET);
  const err = handle.open(fd);
  if (err !== 0) throw new Error(`--tap-fd ${fd}: cannot watch the descriptor (libuv error ${err})`);
  return handle;
}

const EMPTY = new Uint8Array(0);

/** EBADFD: what read(2) on a TAP returns once its device was deleted (Node has no name for it). */
const EBADFD = 77;

/** A read or write error in words (EBADFD has no name in Node). */
function describeReadError(e: NodeJS.ErrnoException): string {
  if (e.errno === -EBADFD || e.code === 'EBADFD') return 'EBADFD (the TAP device was deleted)';
  return e.code ?? e.message;
}

export interface TapFdOptions {
  /** The open TAP descriptor (IFF_TAP | IFF_NO_PI). */
  fd: number;
  /** The TAP was opened with IFF_VNET_HDR: a struct virtio_net_hdr (10 bytes) precedes every frame both ways. */
  vnetHdr: boolean;
  /**
   * The TAP was given TUNSETOFFLOAD (moat-shim --offload): the guest's TCP
   * arrives unsegmented and its checksums unfinished, as the virtio-net
   * header says (vnetHdr only; see vnet-header.ts for what is believed).
   */
  offload?: boolean;
  /** The link MTU: the largest frame a virtio-net header without GSO may announce on input (vnetHdr only). */
  mtu: number;
}
const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
/** Where the checksum sits in a TCP header. */
const TCP_CHECKSUM_OFFSET = 16;
/**
 * The TCP payload Moat puts in one segment on a TAP with a virtio-net header:
 * the kernel takes it whole and hands it to the guest's TCP as one
 * GRO-sized packet (45 MSS at MTU 1500).
 */
export const TAP_GSO_SEGMENT_BYTES = 65535 - 20 - 60;

/**
 * The name of the TUN/TAP device descriptor FD is attached to, or a clear
 * error. A wrong number must not be served: the descriptor could be one of
 * Node's own (its epoll or signal descriptors sit at 3.. when nothing was
 * inherited there). The kernel's tun driver names the device in the
 * descriptor's fdinfo ("iff:"), once TUNSETIFF has attached it.
 */
function tapDeviceName(fd: number): string {
  const hint = 'start Moat through moat-shim tap --exec, which puts the TAP on descriptor 3';
  let isChar: boolean;
  try {
    isChar = fstatSync(fd).isCharacterDevice();
  } catch (e) {
    throw new Error(`--tap-fd ${fd}: descriptor ${fd} is not open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); ${hint}`);
  }
  const iff = isChar ? /^iff:\s*(\S+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8')) : null;
  if (iff === null) throw new Error(`--tap-fd ${fd}: descriptor ${fd} is not an attached TUN/TAP device; ${hint}`);
  return iff[1]!;
}

export class TapFdLink {
  private socket: Socket | undefined;
  private up = false;
  private closing = false;
  private readonly log: Logger;
  private readonly drain = new TapDrainPolicy();
  /** Frames read after the first of a wake-up (see onFrame). */
  private readonly batch = Buffer.allocUnsafe(BATCH_BUFFER_BYTES);
  readonly stats: LinkStats = newLinkStats();
  /** Set by the owner when --pcap is given. */
  tap: FrameTap | undefined;

  private readonly fd: number;
  /** Bytes before each frame in every read and write: 0, or the virtio-net header. */
  private readonly headroom: number;
  private readonly mtu: number;
  private readonly offload: boolean;
  /** Stack marks of the frames of the batch being read (receive offload), parallel to its frames. */
  private readonly marks: number[] = [];
  /** The virtio-net header written before each frame (rewritten per frame when vnetHdr). */
  private readonly vnetHeader = Buffer.alloc(VNET_HDR_BYTES);
  private readonly iov: Uint8Array[] = [this.vnetHeader, new Uint8Array(0)];
  /** The writev lists of a gathered frame: [virtio-net header,] head, payload[, payload2] (set per frame in the constructor's shape). */
  private readonly iov3: Uint8Array[];
  private readonly iov4: Uint8Array[];

  constructor(
    options: TapFdOptions,
    private readonly sink: GuestSink,
    log: Logger,
    /** Told once when the device is gone for good (not on close()). */
    private readonly onLost: (why: string) => void = () => {},
  ) {
    this.log = log.child({ component: 'tap-fd' });
    this.fd = options.fd;
    this.headroom = options.vnetHdr ? VNET_HDR_BYTES : 0;
    this.mtu = options.mtu;
    this.offload = options.vnetHdr && options.offload === true;
    if (this.offload) this.stats.gsoFramesIn = 0;
    this.iov3 = this.headroom > 0 ? [this.vnetHeader, EMPTY, EMPTY] : [EMPTY, EMPTY];
    this.iov4 = this.headroom > 0 ? [this.vnetHeader, EMPTY, EMPTY, EMPTY] : [EMPTY, EMPTY, EMPTY];
  }

  get guestConnected(): boolean {
    return this.up;
  }

  /** Starts reading the TAP; returns the link's name for the ready line. Throws when FD is not an attached TAP. */
  start(): string[] {
    const device = tapDeviceName(this.fd);
    const buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
    const socket = new Socket({
      handle: streamHandleFor(this.fd),
      readable: true,
      writable: false,
      onread: { buffer, callback: (n: number, buf: Uint8Array) => this.onFrame(buf, n) },
    } as unknown as ConstructorParameters<typeof Socket>[0]);
    socket.on('error', (e: NodeJS.ErrnoException) => this.lost(`read failed: ${describeReadError(e)}`));
    socket.on('end', () => this.lost('end of file'));
    this.socket = socket;
    this.up = true;
    this.stats.connections = 1;
    this.stats.guestConnected = true;
    this.log.info('guest link up', { tapFd: this.fd, device, vnetHdr: this.headroom > 0, offload: this.offload });
    return [`tap-fd://${this.fd}`];
  }

  /**
   * libuv read one frame (it stops after a read shorter than its buffer, so
   * one frame per poll). Whatever else the TAP already holds is read now,
   * synchronously, into the batch buffer, and the stack gets them all at
   * once: one ACK per batch instead of one per frame, and the NAT writes a
   * batch's bytes to a host socket in one writev. Without this a 1500-byte
   * MTU bulk transfer from the guest ran at a quarter of its speed.
   */
  private onFrame(buf: Uint8Array, n: number): boolean {
    if (!this.up) return false;
    this.stats.chunksIn++; // for this link: wake-ups (framesIn / chunksIn = frames per batch)
    const frames: Uint8Array[] = [];
    this.marks.length = 0;
    this.accept(frames, buf, 0, n);
    if (!this.drain.worthDraining(n)) {
      if (frames.length > 0) this.deliver(frames);
      return true;
    }
    let used = 0;
    try {
      while (frames.length < MAX_BATCH_FRAMES && used + READ_BUFFER_BYTES <= this.batch.length) {
        const got = readNonBlocking(this.fd, this.batch, used, READ_BUFFER_BYTES);
        if (got <= 0) break; // WOULD_BLOCK: the TAP is empty
        this.accept(frames, this.batch, used, used + got);
        used += got;
      }
    } catch (e) {
      this.lost(`read failed: ${describeReadError(e as NodeJS.ErrnoException)}`);
      return false;
    }
    this.drain.drained(used);
    if (frames.length > 0) this.deliver(frames);
    return true;
  }

  /** Hands a batch to the stack, with the marks only when some frame has one (receive offload). */
  private deliver(frames: Uint8Array[]): void {
    if (this.offload) this.sink.input(frames, this.marks);
    else this.sink.input(frames);
  }

  /**
   * Counts one read (buf[start..end): the virtio-net header if any, then the
   * frame) and queues its frame, or drops a runt or a frame whose header is
   * not believed (counted by reason, see vnet-header.ts).
   */
  private accept(frames: Uint8Array[], buf: Uint8Array, start: number, end: number): void {
    const frame = buf.subarray(start + this.headroom, end);
    if (frame.length < ETHERNET_HEADER_BYTES) {
      this.stats.framingErrors++;
      return;
    }
    let mark = 0;
    if (this.headroom > 0) {
      const verdict = readVnetHeader(buf, start, frame, this.offload, this.mtu);
      if (typeof verdict === 'string') {
        const dropped = (this.stats.inputDropped ??= {});
        dropped[verdict] = (dropped[verdict] ?? 0) + 1;
        return;
      }
      mark = verdict;
      if (mark & RX_GSO_TCP) this.stats.gsoFramesIn!++;
    }
    this.stats.framesIn++;
    this.stats.bytesIn += frame.length;
    this.tap?.frameIn(frame);
    frames.push(frame);
    if (this.offload) this.marks.push(mark);
  }

  /** Writes each frame of the batch to the TAP (one write(2) each); drops it when the link is down. */
  send(batch: OutputBatch): void {
    if (!this.up) {
      this.stats.outputDroppedNoGuest += batch.frameCount;
      batch.release();
      return;
    }
    if (batch.forEachFramePart !== undefined) batch.forEachFramePart(this.writeParts);
    else batch.forEachFrameAt(this.writeFrame);
    batch.release();
  }

  /**
   * A frame from pieces: its head (headers) in the batch, its TCP payload in
   * one or two slices of the connection's send ring (StackOptions.gatherPayload).
   * One writev still makes one frame; the payload is copied once, by the kernel.
   */
  private readonly writeParts = (
    buf: Uint8Array,
    offset: number,
    headLength: number,
    payload: Uint8Array | null,
    payload2: Uint8Array | null,
    segmentSize: number,
  ): void => {
    if (payload === null) {
      this.writeFrame(buf, offset, headLength, segmentSize);
      return;
    }
    if (!this.up) return;
    const length = headLength + payload.length + (payload2 === null ? 0 : payload2.length);
    const head = buf.subarray(offset, offset + headLength);
    // The capture sees the frame whole (a copy, only with --pcap).
    if (this.tap !== undefined) this.tap.frameOut(wholeFrame(buf, offset, headLength, payload, payload2));
    const iov = payload2 === null ? this.iov3 : this.iov4;
    let i = 0;
    if (this.headroom > 0) {
      writeVnetHeader(this.vnetHeader, buf, offset, length, segmentSize, this.offload);
      i = 1;
    }
    iov[i] = head;
    iov[i + 1] = payload;
    if (payload2 !== null) iov[i + 2] = payload2;
    try {
      writevSync(this.fd, iov);
      this.stats.framesOut++;
      this.stats.bytesOut += length;
    } catch (e) {
      this.writeFailed(e as NodeJS.ErrnoException);
    } finally {
      // Drop the views: the ring's memory is not ours to pin.
      iov[i + 1] = EMPTY;
      if (payload2 !== null) iov[i + 2] = EMPTY;
    }
  };

  /** One function object for every frame (no closure per batch). */
  private readonly writeFrame = (buf: Uint8Array, offset: number, length: number, segmentSize: number): void => {
    if (!this.up) return;
    this.tap?.frameOut(buf.subarray(offset, offset + length));
    try {
      if (this.headroom === 0) {
        writeSync(this.fd, buf, offset, length);
      } else {
        // One frame = one write: the header and the frame leave together as an iovec.
        writeVnetHeader(this.vnetHeader, buf, offset, length, segmentSize, this.offload);
        this.iov[1] = buf.subarray(offset, offset + length);
        writevSync(this.fd, this.iov);
      }
      this.stats.framesOut++;
      this.stats.bytesOut += length;
    } catch (e) {
      this.writeFailed(e as NodeJS.ErrnoException);
    }
  };

  /**
   * A full queue drops the frame (TCP retransmits); a frame the device
   * refuses (EINVAL: e.g. a virtio-net header it does not accept) is dropped,
   * counted and logged the first time; only a device that is gone (EBADFD,
   * EBADF, EIO) ends the link.
   */
  private writeFailed(e: NodeJS.ErrnoException): void {
    if (e.code === 'EAGAIN' || e.code === 'ENOBUFS') {
      this.stats.outputDroppedBackpressure++;
      return;
    }
    if (e.errno === -EBADFD || e.code === 'EBADFD' || e.code === 'EBADF' || e.code === 'EIO') {
      this.lost(`write failed: ${describeReadError(e)}`);
      return;
    }
    if (this.stats.outputRejected++ === 0) {
      this.log.warn('the TAP refused a frame; dropped (counted in /stats drops link:rejected-by-device)', { error: e.code ?? e.message });
    }
  }

  /** The TAP is gone (or broken): the link ends for good; the stack forgets the guest. */
  private lost(why: string): void {
    if (!this.up) return;
    this.up = false;
    this.stats.guestConnected = false;
    this.socket?.destroy();
    this.sink.guestGone();
    if (!this.closing) {
      this.log.error('TAP device lost: no guest can reach Moat any more; shutting down (start Moat again with a new TAP)', { tapFd: this.fd, why });
      this.onLost(why);
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    this.lost('shutdown');
    this.socket?.destroy();
    this.socket = undefined;
  }
}

/**
 * Fills the virtio-net header for one outgoing frame (RFC-less: see
 * include/uapi/linux/virtio_net.h). A TCP super-segment (segmentSize > 0:
 * its connection's payload bytes per segment, OutputBatch.forEachFrameAt)
 * carrying more than one segment is marked GSO TCPv4 (TCPv6 over IPv6) with
 * that gso_size, so the kernel treats it as the receive offload of a NIC
 * would and hands the guest's TCP segments of the MSS it asked for (not the
 * link MTU's: a guest may clamp its MSS); every other frame gets an all-zero header. Without csumOffload checksums are complete in
 * every frame (no NEEDS_CSUM), so the guest verifies them as it would on any
 * wire; with it (the stack's tcp.checksumOffload, --tap-offload) every
 * TCP frame holds only the pseudo-header sum and is marked NEEDS_CSUM at its
 * TCP checksum, which the guest's kernel takes as a locally made packet.
 */
export function writeVnetHeader(hdr: Uint8Array, frame: Uint8Array, offset: number, length: number, segmentSize: number, csumOffload = false): void {
  hdr.fill(0);
  if (length < 14 + 20 + 20) return;
  const f = offset;
  const ip = f + 14;
  let ihl: number;
  let totalLength: number;
  let gsoType = VIRTIO_NET_HDR_GSO_TCPV4;
  if (frame[f + 12] === 0x86 && frame[f + 13] === 0xdd) {
    // IPv6: the stack puts TCP right after the fixed header (it sends no extension headers but fragments, never for TCP).
    if (length < 14 + 40 + 20 || frame[ip + 6] !== 6) return; // not TCP
    ihl = 40;
    totalLength = 40 + ((frame[ip + 4]! << 8) | frame[ip + 5]!);
    gsoType = VIRTIO_NET_HDR_GSO_TCPV6;
  } else {
    if (frame[f + 12] !== 0x08 || frame[f + 13] !== 0x00) return; // not IP
    ihl = (frame[ip]! & 0x0f) * 4;
    if (frame[ip + 9] !== 6 || ihl < 20) return; // not TCP
    totalLength = (frame[ip + 2]! << 8) | frame[ip + 3]!;
  }
  if (csumOffload) {
    const start = 14 + ihl;
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[6] = start & 0xff; // csum_start
    hdr[7] = start >> 8;
    hdr[8] = TCP_CHECKSUM_OFFSET; // csum_offset
  }
  const tcpHeader = ((frame[ip + ihl + 12]! >> 4) & 0x0f) * 4;
  const payload = totalLength - ihl - tcpHeader;
  const segment = segmentSize;
  if (segment <= 0 || payload <= segment) return;
  const headers = 14 + ihl + tcpHeader;
  hdr[1] = gsoType; // gso_type
  hdr[2] = headers & 0xff; // hdr_len (little-endian, as virtio on x86)
  hdr[3] = headers >> 8;
  hdr[4] = segment & 0xff; // gso_size
  hdr[5] = segment >> 8;
}
