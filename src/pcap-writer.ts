/**
 * `--pcap FILE`: every frame to and from the guest, in the classic libpcap
 * format (headers from netstack/pcap.ts), readable by `tcpdump -r`.
 *
 * Frames are copied (the views the link hands us die with the call) into a
 * pending list and written with one writev per event-loop turn, one write in
 * flight at a time. The pending bytes are bounded: when the disk cannot keep
 * up, frames are dropped and counted rather than growing memory without
 * limit. A capture with holes is still a valid capture.
 */
import { close, open, writev } from 'node:fs';
import { PCAP_RECORD_HEADER_LEN, pcapFileHeader, writePcapRecordHeader } from '../netstack/pcap.js';
import type { FrameTap } from './transport/qemu-stream.js';

export interface PcapWriterOptions {
  /** Bytes queued for the file before frames are dropped. */
  maxPendingBytes: number;
  /** Capture time in milliseconds since the epoch (pcap timestamps are wall-clock). */
  now: () => number;
}

export const DEFAULT_PCAP_WRITER_OPTIONS: PcapWriterOptions = {
  maxPendingBytes: 16 * 1024 * 1024,
  // timeOrigin + now(): wall-clock based, but with sub-millisecond resolution and no backward jumps within a run.
  now: () => performance.timeOrigin + performance.now(),
};

/** Frames larger than this are cut (the original length is kept in the record). tcpdump's own default. */
export const PCAP_SNAPLEN = 262144;

export interface PcapStats {
  framesWritten: number;
  bytesWritten: number;
  framesDropped: number;
  writeErrors: number;
}

export class PcapWriter implements FrameTap {
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private writing = false;
  private flushScheduled = false;
  private closed = false;
  private fileClosed = false;
  private failed: Error | undefined;
  private closeWaiters: (() => void)[] = [];
  readonly stats: PcapStats = { framesWritten: 0, bytesWritten: 0, framesDropped: 0, writeErrors: 0 };

  private constructor(
    private readonly fd: number,
    readonly path: string,
    private readonly opts: PcapWriterOptions,
    private readonly onError: (e: Error) => void,
  ) {
    this.enqueue(pcapFileHeader(PCAP_SNAPLEN));
  }

  /** Creates (truncates) the file and queues the file header. */
  static open(path: string, onError: (e: Error) => void = () => {}, opts: Partial<PcapWriterOptions> = {}): Promise<PcapWriter> {
    return new Promise((resolve, reject) => {
      open(path, 'w', 0o644, (err, fd) => {
        if (err !== null) reject(new Error(`--pcap: cannot open "${path}": ${err.message}`));
        else resolve(new PcapWriter(fd, path, { ...DEFAULT_PCAP_WRITER_OPTIONS, ...opts }, onError));
      });
    });
  }

  frameIn(frame: Uint8Array): void {
    this.record(frame);
  }

  frameOut(frame: Uint8Array): void {
    this.record(frame);
  }

  /** Copies one frame (with its record header) into the queue, or counts it as dropped. */
  record(frame: Uint8Array): void {
    if (this.closed || this.failed !== undefined) return;
    const captured = Math.min(frame.length, PCAP_SNAPLEN);
    const size = PCAP_RECORD_HEADER_LEN + captured;
    if (this.pendingBytes + size > this.opts.maxPendingBytes) {
      this.stats.framesDropped++;
      return;
    }
    const rec = new Uint8Array(size);
    writePcapRecordHeader(rec, 0, this.opts.now(), captured, frame.length);
    rec.set(captured === frame.length ? frame : frame.subarray(0, captured), PCAP_RECORD_HEADER_LEN);
    this.enqueue(rec);
    this.stats.framesWritten++;
  }

  private enqueue(bytes: Uint8Array): void {
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    if (!this.writing && !this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => {
        this.flushScheduled = false;
        this.flush();
      });
    }
  }

  private flush(): void {
    if (this.writing || this.pending.length === 0 || this.failed !== undefined) {
      this.maybeFinishClose();
      return;
    }
    const batch = this.pending;
    const batchBytes = this.pendingBytes;
    this.pending = [];
    this.writing = true;
    writeAll(this.fd, batch, (err) => {
      this.writing = false;
      this.pendingBytes -= batchBytes;
      if (err !== null) {
        this.stats.writeErrors++;
        this.failed = err;
        this.pending = [];
        this.pendingBytes = 0;
        this.onError(err);
      } else {
        this.stats.bytesWritten += batchBytes;
      }
      this.flush();
    });
  }

  /** Bytes waiting to be written. */
  get queuedBytes(): number {
    return this.pendingBytes;
  }

  /** Writes what is queued, then closes the file. */
  close(): Promise<void> {
    if (this.fileClosed) return Promise.resolve();
    if (this.closed) return new Promise((resolve) => this.closeWaiters.push(resolve));
    this.closed = true;
    return new Promise((resolve) => {
      this.closeWaiters.push(resolve);
      this.flush();
    });
  }

  private maybeFinishClose(): void {
    if (!this.closed || this.writing || this.flushScheduled) return;
    if (this.pending.length > 0 && this.failed === undefined) return;
    const waiters = this.closeWaiters;
    this.closeWaiters = [];
    if (waiters.length === 0) return;
    close(this.fd, () => {
      this.fileClosed = true;
      for (const w of waiters) w();
    });
  }
}

/** writev until every byte is written (writev may write less than asked). */
function writeAll(fd: number, buffers: Uint8Array[], cb: (err: Error | null) => void): void {
  // writev takes at most IOV_MAX (1024) buffers per call on Linux; Node splits for us, but partial writes are ours to handle.
  writev(fd, buffers, (err, written) => {
    if (err !== null) {
      cb(err);
      return;
    }
    let left = written;
    let i = 0;
    while (i < buffers.length && left >= buffers[i]!.length) {
      left -= buffers[i]!.length;
      i++;
    }
    if (i === buffers.length) {
      cb(null);
      return;
    }
    const rest = buffers.slice(i);
    rest[0] = rest[0]!.subarray(left);
    writeAll(fd, rest, cb);
  });
}
