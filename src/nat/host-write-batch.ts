/**
 * When guest bytes are written to host sockets: the network brackets each
 * batch of guest frames (one link read) with begin()/end(), and TcpPipe asks
 * here how to write.
 *
 *  - A batch of one small frame (a request of a request/response exchange):
 *    written at once, uncorked, so the server gets it before the stack
 *    finishes the batch (ACK bookkeeping, timers), and without Writable's
 *    cork buffer and a microtask to uncork it.
 *  - A batch of several frames, or of one large one (bulk data): each socket
 *    is corked at its first write and uncorked once, at end(), so that the
 *    batch's segments leave in one writev (bulk uploads at MTU 1500 depend
 *    on it), after the stack has sent the batch's ACK to the guest: a 64 KiB
 *    write to a host socket takes tens of microseconds, which the guest's
 *    ACK clock should not wait for (one upload stream ran ~30% slower).
 *  - Outside any batch (a rate limiter's wake-up, a drained socket resuming
 *    the guest): corked until the current callback's microtasks run.
 *
 * One per process (module state): batches never nest across networks, since
 * each starts from its own link's read callback; a nested begin() joins the
 * outer batch.
 */

/** A socket to uncork at the end of the batch. */
export interface Uncorkable {
  uncorkNow(): void;
}

let depth = 0;
let coalescing = false;
const corked: Uncorkable[] = [];
let corkedCount = 0;

/** How the next write to a host socket goes: 'now' (plain write), 'batch' (cork, end() uncorks), 'turn' (cork, uncork in a microtask). */
export type HostWriteMode = 'now' | 'batch' | 'turn';

export function hostWriteMode(): HostWriteMode {
  if (depth === 0) return 'turn';
  return coalescing ? 'batch' : 'now';
}

/** A lone frame shorter than this is not bulk data: its bytes are written at once. */
export const LONE_FRAME_BYTES = 1024;

/** A batch of guest frames starts. */
export function beginHostWrites(frames: readonly Uint8Array[]): void {
  if (depth++ === 0) coalescing = frames.length > 1 || (frames.length === 1 && frames[0]!.length >= LONE_FRAME_BYTES);
}

/** Registers a socket corked in this batch ('batch' mode): end() uncorks it. */
export function uncorkAtBatchEnd(s: Uncorkable): void {
  corked[corkedCount++] = s;
}

/** The batch is over: every socket corked in it writes what it holds (one writev each). */
export function endHostWrites(): void {
  if (--depth > 0) return;
  coalescing = false;
  // Emptied by index (an uncork may not add to the list: the batch is over, so writes take 'turn').
  const n = corkedCount;
  corkedCount = 0;
  // Every socket is uncorked even if one throws (a socket left corked would hold its flow's bytes for good).
  let failure: unknown;
  for (let i = 0; i < n; i++) {
    const s = corked[i]!;
    corked[i] = undefined!;
    try {
      s.uncorkNow();
    } catch (e) {
      failure ??= e;
    }
  }
  if (failure !== undefined) throw failure;
}
