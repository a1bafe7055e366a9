/**
 * Whether a host socket's FIN already waits behind a short read.
 *
 * libuv stops reading a socket after a read that did not fill its buffer and
 * reports EOF from the next loop turn's read(2). A server that answers and
 * closes (one response, then FIN: the commonest short-lived connection, and
 * bench:compare's new-connections load) therefore cost the guest two frames
 * (data, then FIN) where one does: every such connection paid one more TAP
 * write, one more guest ACK read and parsed, and one more loop turn.
 *
 * probeHostEnd reads the socket once more, synchronously, right after the
 * short read. A FIN already queued shows as 0: the pipe ends the guest side in
 * this turn, so the FIN rides on the data's segment. (libuv's own read next
 * turn returns 0 again: end of stream is sticky.) Bytes that arrived meanwhile
 * are handed on in order, exactly as libuv would have; an error is returned
 * for the caller to destroy the socket with, as Node does with a failed read
 * (read(2) reports ECONNRESET once: swallowing it would turn a reset into a
 * clean end; and libuv itself, seeing POLLHUP after a short read, reports
 * EOF without reading, so before this probe bytes followed at once by a reset
 * reached the guest as a clean FIN). Nothing waiting (EAGAIN, the usual answer of a flow that stays
 * open) costs one failed read and a thrown error without a stack (~6 us), so
 * callers probe once per flow, not after every short read.
 */
import { readNonBlocking, WOULD_BLOCK } from '../read-nonblocking.js';
import type { Socket } from 'node:net';

/** Where probed bytes land (valid until the next probe; the caller copies what it keeps). Bytes beyond it stay in the socket for libuv. */
const PROBE_BUFFER = new Uint8Array(16 * 1024);

export type ProbeResult =
  | { readonly kind: 'nothing' }
  | { readonly kind: 'end' }
  | { readonly kind: 'bytes'; readonly bytes: Uint8Array }
  | { readonly kind: 'error'; readonly error: Error };

const NOTHING: ProbeResult = Object.freeze({ kind: 'nothing' });
const END: ProbeResult = Object.freeze({ kind: 'end' });

/** The socket's file descriptor, or -1 where it has none (not connected, closed, not a libuv TCP handle). */
function fdOf(socket: Socket): number {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * One non-blocking read of `socket` behind libuv's back (see the module
 * comment), of at most `maxBytes` (capped at 16 KiB; the caller passes what it
 * can take whole, so nothing read here is ever held aside). Nothing is read
 * when maxBytes < 1: a zero-length read cannot tell an end from no data.
 */
export function probeHostEnd(socket: Socket, maxBytes = PROBE_BUFFER.length): ProbeResult {
  if (maxBytes < 1 || socket.destroyed || socket.readableEnded) return NOTHING;
  const fd = fdOf(socket);
  if (fd < 0) return NOTHING;
  try {
    const n = readNonBlocking(fd, PROBE_BUFFER, 0, Math.min(maxBytes, PROBE_BUFFER.length));
    if (n === WOULD_BLOCK) return NOTHING;
    return n === 0 ? END : { kind: 'bytes', bytes: PROBE_BUFFER.subarray(0, n) };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const err = new Error(`read ${code ?? (e as Error).message}`) as NodeJS.ErrnoException;
    if (code !== undefined) err.code = code;
    return { kind: 'error', error: err };
  }
}
