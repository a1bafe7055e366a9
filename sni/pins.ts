/**
 * The pin table: which addresses Moat itself resolved for which allowed
 * names, and until when. The egress policy consults it for ports it cannot
 * peek (a `git.example.com:22` rule allows port 22 only to addresses pinned
 * for git.example.com), so a guest cannot borrow an allowed name for an
 * address of its choosing.
 *
 * Contract (what callers must know):
 *  - Names are stored and compared as given: pass CANONICAL names
 *    (canonicalHostname from dns/rules.ts). The table does not re-canonicalise
 *    on the hot path; a non-canonical name simply never matches (fails closed).
 *  - Addresses are compared as text: pass them as the resolver prints them
 *    (dotted quads without leading zeros, which is also how the policy sees
 *    the guest's destination). IPv6 addresses are stored in their RFC 5952
 *    form (ranges6.ts formatIpv6), whatever spelling pin() was given, and
 *    looked up as given: the policy asks with that form.
 *  - The unit is the (name, address) pair. A new pin() of a name does NOT
 *    replace that name's other addresses: each pair keeps the LATEST expiry
 *    it was ever given. DNS answers for one name rotate (round-robin, CDN),
 *    and the guest may still connect to an address from a previous answer
 *    whose TTL has not run out; dropping it would break that connection for
 *    no security gain (Moat did resolve it for that name).
 *  - ttlMs: a pair expires at now() + ttlMs and is gone from that instant
 *    (expiry is exclusive). Infinity pins until clear() (pre-resolved rule
 *    hosts). ttlMs <= 0 or NaN stores nothing: a zero-TTL answer must not be
 *    reused, so callers that want port-22-style rules to work with such
 *    names should apply their own floor.
 *  - Bound: at most maxEntries pairs. Expired pairs are dropped lazily (as
 *    lookups meet them) and on every pin() and size read. Past the bound the
 *    pairs that expire soonest go first, which may be the pair being added.
 *    Permanent pairs are never evicted by newer pins: when only permanent
 *    pairs remain, a new permanent pair is not stored (fail closed: the
 *    bound is a memory guarantee, and start-up pins must not be displaced
 *    by a flood of later ones).
 *
 * Cost: pin O(k log n) for k addresses; namesFor/addressesFor O(pairs for
 * that key). A lazy min-heap orders finite expiries; stale heap nodes (from
 * refreshed or removed pairs) are skipped and the heap is rebuilt when they
 * outnumber the live pairs, so it stays O(maxEntries) too.
 */
import type { PinView } from './policy.js';
import { formatIpv6, parseIpv6 } from './ranges6.js';

/** IPv6 text in its one RFC 5952 form (the resolver's spelling may differ); anything else as given. */
function canonicalAddress(address: string): string {
  if (!address.includes(':')) return address;
  const n = parseIpv6(address);
  return n === null ? address : formatIpv6(n);
}

export const DEFAULT_MAX_PIN_ENTRIES = 65536;

interface PinEntry {
  readonly name: string;
  readonly address: string;
  expiresAt: number;
  removed: boolean;
}

/** A heap node snapshots the expiry it was pushed with; it is stale once the entry's differs. */
interface HeapNode {
  readonly entry: PinEntry;
  readonly expiresAt: number;
}

const EMPTY: readonly string[] = Object.freeze([]);

export class PinTable implements PinView {
  private readonly maxEntries: number;
  private readonly byName = new Map<string, Map<string, PinEntry>>();
  private readonly byAddress = new Map<string, Map<string, PinEntry>>();
  private heap: HeapNode[] = [];
  private count = 0;

  constructor(
    private readonly now: () => number,
    opts: { maxEntries?: number } = {},
  ) {
    const max = opts.maxEntries ?? DEFAULT_MAX_PIN_ENTRIES;
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`PinTable maxEntries must be a positive integer, got ${max}`);
    this.maxEntries = max;
  }

  /** Unexpired (name, address) pairs currently stored. */
  get size(): number {
    this.dropExpired(this.now());
    return this.count;
  }

  pin(name: string, addresses: readonly string[], ttlMs: number): void {
    if (!(ttlMs > 0)) return;
    const t = this.now();
    const expiresAt = ttlMs === Infinity ? Infinity : t + ttlMs;
    if (Number.isNaN(expiresAt)) return;
    this.dropExpired(t);
    for (const given of addresses) {
      const address = canonicalAddress(given);
      let forName = this.byName.get(name);
      const existing = forName?.get(address);
      if (existing !== undefined) {
        if (expiresAt > existing.expiresAt) {
          existing.expiresAt = expiresAt;
          if (expiresAt !== Infinity) this.push({ entry: existing, expiresAt });
        }
        continue;
      }
      const entry: PinEntry = { name, address, expiresAt, removed: false };
      if (forName === undefined) {
        forName = new Map();
        this.byName.set(name, forName);
      }
      forName.set(address, entry);
      let forAddress = this.byAddress.get(address);
      if (forAddress === undefined) {
        forAddress = new Map();
        this.byAddress.set(address, forAddress);
      }
      forAddress.set(name, entry);
      this.count++;
      if (expiresAt !== Infinity) this.push({ entry, expiresAt });
      while (this.count > this.maxEntries) {
        if (!this.evictSoonestExpiring()) {
          // Only permanent pairs are left and this one is permanent too.
          this.remove(entry);
          break;
        }
      }
    }
    this.compactHeapIfStale();
  }

  namesFor(address: string): readonly string[] {
    return this.live(this.byAddress.get(address));
  }

  addressesFor(name: string): readonly string[] {
    return this.live(this.byName.get(name));
  }

  clear(): void {
    for (const forName of this.byName.values()) for (const e of forName.values()) e.removed = true;
    this.byName.clear();
    this.byAddress.clear();
    this.heap = [];
    this.count = 0;
  }

  /** Keys of the unexpired entries of one inner map; expired ones met on the way are dropped. */
  private live(inner: Map<string, PinEntry> | undefined): readonly string[] {
    if (inner === undefined) return EMPTY;
    const t = this.now();
    const out: string[] = [];
    for (const [key, e] of inner) {
      if (e.expiresAt > t) out.push(key);
      else this.remove(e); // deleting the current key during Map iteration is well-defined
    }
    return out;
  }

  private remove(e: PinEntry): void {
    if (e.removed) return;
    e.removed = true;
    this.count--;
    const forName = this.byName.get(e.name);
    if (forName !== undefined) {
      forName.delete(e.address);
      if (forName.size === 0) this.byName.delete(e.name);
    }
    const forAddress = this.byAddress.get(e.address);
    if (forAddress !== undefined) {
      forAddress.delete(e.name);
      if (forAddress.size === 0) this.byAddress.delete(e.address);
    }
  }

  private isStale(n: HeapNode): boolean {
    return n.entry.removed || n.entry.expiresAt !== n.expiresAt;
  }

  private dropExpired(t: number): void {
    while (this.heap.length > 0) {
      const top = this.heap[0]!;
      if (this.isStale(top)) this.pop();
      else if (top.expiresAt <= t) {
        this.pop();
        this.remove(top.entry);
      } else break;
    }
  }

  /** Remove the live non-permanent pair that expires soonest; false if there is none. */
  private evictSoonestExpiring(): boolean {
    while (this.heap.length > 0) {
      const top = this.pop();
      if (this.isStale(top)) continue;
      this.remove(top.entry);
      return true;
    }
    return false;
  }

  private compactHeapIfStale(): void {
    if (this.heap.length <= 2 * this.count + 64) return;
    const live = this.heap.filter((n) => !this.isStale(n));
    this.heap = [];
    for (const n of live) this.push(n);
  }

  // A binary min-heap on expiresAt.

  private push(n: HeapNode): void {
    const h = this.heap;
    h.push(n);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (h[parent]!.expiresAt <= n.expiresAt) break;
      h[i] = h[parent]!;
      i = parent;
    }
    h[i] = n;
  }

  private pop(): HeapNode {
    const h = this.heap;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= h.length) break;
        const r = l + 1;
        const c = r < h.length && h[r]!.expiresAt < h[l]!.expiresAt ? r : l;
        if (h[c]!.expiresAt >= last.expiresAt) break;
        h[i] = h[c]!;
        i = c;
      }
      h[i] = last;
    }
    return top;
  }
}
