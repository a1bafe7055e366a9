/**
 * Copies of short-lived byte views (the stack's zero-copy onData views) for
 * asynchronous socket writes, cut from large slabs that are reused once every
 * write from them has completed.
 *
 * Why: a guest->host transfer copied each segment with Buffer.from, a fresh
 * 64 KiB ArrayBuffer per segment at MTU 65520; the garbage collector was a
 * quarter of Moat's CPU in that direction (bench:compare --profile). A slab
 * is recycled only when its count of writes still in flight is back to zero,
 * which Node reports through each write's callback (also called when the
 * write fails or the socket is destroyed). A slab whose callbacks never come
 * is simply left to the garbage collector: nothing here holds a used slab.
 *
 *   const copy = slabs.copy(view);
 *   socket.write(copy, slabs.releaseLast());
 */
export class CopySlabs {
  private current: Slab | undefined;
  /** Slabs with no write in flight, ready for reuse (bounded by keepFree). */
  private readonly free: Slab[] = [];
  private last: () => void = noop;

  constructor(
    // Small enough that the idle memory stays ~1.5 MiB (the 10,000-idle-connection RSS bound is tight).
    private readonly slabBytes = 512 * 1024,
    private readonly keepFree = 2,
  ) {}

  /** The largest copy cut from a slab; a larger one gets a buffer of its own. */
  get maxCopyBytes(): number {
    return this.slabBytes / 4;
  }

  /** A copy of `data` that stays valid until the callback from releaseLast() runs. */
  copy(data: Uint8Array): Buffer {
    const len = data.length;
    if (len > this.maxCopyBytes) {
      // Rare (larger than any segment): a copy of its own.
      this.last = noop;
      return Buffer.from(data);
    }
    let slab = this.current;
    if (slab === undefined || slab.used + len > this.slabBytes) {
      this.current = undefined;
      if (slab !== undefined) this.retire(slab);
      slab = this.free.pop() ?? new Slab(this.slabBytes, (s) => this.recycle(s));
      this.current = slab;
    }
    const view = slab.buf.subarray(slab.used, slab.used + len);
    view.set(data);
    slab.used += len;
    slab.inFlight++;
    this.last = slab.release;
    return view;
  }

  /** The callback that ends the life of the last copy (pass it to socket.write). */
  releaseLast(): () => void {
    return this.last;
  }

  /** Slabs kept for reuse now (tests). */
  get freeSlabs(): number {
    return this.free.length;
  }

  private retire(slab: Slab): void {
    slab.retired = true;
    if (slab.inFlight === 0) this.recycle(slab);
  }

  private recycle(slab: Slab): void {
    if (slab === this.current) return; // still being filled
    slab.used = 0;
    slab.retired = false;
    if (this.free.length < this.keepFree) this.free.push(slab);
  }
}

class Slab {
  readonly buf: Buffer;
  used = 0;
  inFlight = 0;
  retired = false;
  readonly release: () => void;

  constructor(bytes: number, onIdle: (s: Slab) => void) {
    this.buf = Buffer.allocUnsafeSlow(bytes);
    this.release = () => {
      this.inFlight--;
      if (this.inFlight === 0 && this.retired) onIdle(this);
    };
  }
}

function noop(): void {}
