/** readNonBlocking: the one non-blocking read both TAP draining and the host FIN probe use. */
import { afterEach, describe, expect, it } from 'vitest';
import { closeSync, constants, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readNonBlocking, WOULD_BLOCK } from '../../src/read-nonblocking.js';

describe('readNonBlocking', () => {
  const fds: number[] = [];
  let dir = '';
  afterEach(() => {
    for (const fd of fds.splice(0)) closeSync(fd);
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
    dir = '';
  });

  /** A FIFO opened non-blocking at both ends (reader first, so the writer's open succeeds). */
  function fifo(): { reader: number; writer: number } {
    dir = mkdtempSync(join(tmpdir(), 'moat-rnb-'));
    const path = join(dir, 'f');
    execFileSync('mkfifo', [path]);
    const reader = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const writer = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
    fds.push(reader, writer);
    return { reader, writer };
  }

  it('nothing waiting is WOULD_BLOCK, not a throw; then the bytes; then 0 at the end of stream', () => {
    const { reader, writer } = fifo();
    const buf = new Uint8Array(16);
    expect(readNonBlocking(reader, buf, 0, 16)).toBe(WOULD_BLOCK);
    writeSync(writer, Buffer.from('abc'));
    expect(readNonBlocking(reader, buf, 4, 12)).toBe(3);
    expect(Buffer.from(buf.subarray(4, 7)).toString()).toBe('abc');
    closeSync(fds.pop()!); // the writer
    expect(readNonBlocking(reader, buf, 0, 16)).toBe(0);
  });

  it('other errors are thrown with their code, and the stack trace limit is restored', () => {
    const before = Error.stackTraceLimit;
    let code: string | undefined;
    try {
      readNonBlocking(2 ** 30, new Uint8Array(4), 0, 4);
    } catch (e) {
      code = (e as NodeJS.ErrnoException).code;
    }
    expect(code).toBe('EBADF');
    expect(Error.stackTraceLimit).toBe(before);
  });
});
