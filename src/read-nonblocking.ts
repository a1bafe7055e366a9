/**
 * One read(2) of a non-blocking descriptor, for the two places Moat looks
 * whether more is waiting without going back to libuv: the TAP's queued
 * frames behind the one libuv read (transport/tap-fd.ts) and a host socket's
 * FIN behind a short read (nat/host-eof-probe.ts).
 *
 * Node reports "nothing waiting" (EAGAIN) by throwing an Error, and building
 * its stack trace is most of what such a look costs; none is built here.
 */
import { readSync } from 'node:fs';

/** What readNonBlocking returns when nothing is waiting (EAGAIN, EWOULDBLOCK, EINTR). */
export const WOULD_BLOCK = -1;

/** Bytes read into buf[offset, offset + length) (0: end of stream), or WOULD_BLOCK. Other errors are thrown (without a stack trace; code and message kept). */
export function readNonBlocking(fd: number, buf: Uint8Array, offset: number, length: number): number {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return readSync(fd, buf, offset, length, null);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR') return WOULD_BLOCK;
    throw e;
  } finally {
    Error.stackTraceLimit = limit;
  }
}
