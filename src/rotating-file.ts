/**
 * An append-only log file with optional size-based rotation (the
 * --decision-log file): when the next line would take the file past
 * `maxBytes`, FILE is renamed FILE.1 (FILE.1 to FILE.2, ... FILE.keep-1 to
 * FILE.keep, the old FILE.keep removed by the rename) and a new FILE is
 * started. So the files never hold more than (keep + 1) x maxBytes (a
 * single line longer than maxBytes gets a file of its own), and FILE is
 * always the newest, which is what `moat learn FILE` reads.
 *
 * Writes go through a WriteStream on a descriptor opened synchronously: a
 * rotation never races with an open still in flight, and the old stream's
 * pending writes land in the renamed file (the descriptor follows the inode).
 */
import { createWriteStream, fstatSync, openSync, renameSync, type WriteStream } from 'node:fs';
import type { LogStream } from './log.js';

export interface RotationOptions {
  /** Rotate before a line would take the file past this many bytes; 0 never rotates. */
  maxBytes: number;
  /** Rotated files kept (FILE.1 ... FILE.keep); at least 1. */
  keep: number;
}

export const NO_ROTATION: Readonly<RotationOptions> = Object.freeze({ maxBytes: 0, keep: 1 });

export interface RotatingFileStats {
  rotations: number;
  /** Lines not written because a rotation failed (the file would have passed its bound) or the file failed. */
  droppedLines: number;
  errors: number;
}

export class RotatingFile implements LogStream {
  private stream: WriteStream;
  private size: number;
  readonly stats: RotatingFileStats = { rotations: 0, droppedLines: 0, errors: 0 };

  /** Opens `path` for appending now; throws (naming the path) when it cannot be. */
  constructor(
    readonly path: string,
    private readonly rotation: RotationOptions = NO_ROTATION,
    /** Told about a write or rotation error (once per error; the file keeps trying). */
    private readonly onError: (e: Error) => void = () => {},
  ) {
    if (rotation.maxBytes > 0 && !(rotation.keep >= 1)) throw new RangeError(`rotation keeps at least 1 file, got ${rotation.keep}`);
    const { stream, size } = this.open();
    this.stream = stream;
    this.size = size;
  }

  write(line: string): boolean {
    const n = Buffer.byteLength(line);
    const max = this.rotation.maxBytes;
    if (max > 0 && this.size > 0 && this.size + n > max && !this.rotate()) {
      this.stats.droppedLines++;
      return false;
    }
    this.size += n;
    this.stream.write(line);
    return true;
  }

  /** Ends the current file; `cb` once its bytes are written. */
  end(cb?: () => void): void {
    this.stream.end(cb);
  }

  private open(): { stream: WriteStream; size: number } {
    let fd: number;
    try {
      fd = openSync(this.path, 'a');
    } catch (e) {
      throw new Error(`cannot open "${this.path}": ${(e as Error).message}`);
    }
    const stream = createWriteStream(this.path, { fd, flags: 'a' });
    stream.on('error', (e) => this.failed(e));
    return { stream, size: fstatSync(fd).size };
  }

  /** Shifts the files and starts a new one; false (nothing written past the bound) when that failed. */
  private rotate(): boolean {
    try {
      for (let i = this.rotation.keep - 1; i >= 1; i--) renameIfThere(`${this.path}.${i}`, `${this.path}.${i + 1}`);
      renameIfThere(this.path, `${this.path}.1`);
      const next = this.open();
      this.stream.end();
      this.stream = next.stream;
      this.size = next.size;
      this.stats.rotations++;
      return true;
    } catch (e) {
      this.failed(e as Error);
      return false;
    }
  }

  private failed(e: Error): void {
    this.stats.errors++;
    this.onError(e);
  }
}

/** rename(2), where a missing source (FILE.3 before three rotations, FILE removed by an operator) is no error. */
function renameIfThere(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}
