/**
 * The pending-decision table of ask mode (`--on-unlisted ask`): pure (no
 * I/O, no timers; the clock and the id source are injected), so every bound
 * and every race is a unit test.
 *
 * A request for a name no rule covers (a DNS query, a held TCP connection's
 * SNI/Host, a proxy target, a QUIC Initial's SNI) *enters* the table as a
 * waiter. Waiters for the same name share one pending decision, so a
 * hundred connections to one new host are one question to the operator.
 * A decision is answered (`take` then `settle`: the caller may need to do
 * async work in between, e.g. resolve and add the rule for allow-name) or
 * expires (`expire`), and then every waiter it still holds gets exactly one
 * outcome, through its callback. A waiter that goes away first (`leave`)
 * gets none.
 *
 * Bounds (each refused at entry with its own reason, and counted):
 *   maxPending          decisions at once (a guest flooding unique names)
 *   maxWaitersPerName   waiters on one decision (thousands of connections to one name)
 *   maxWaiters          waiters on all decisions together (so the worst case is
 *                       not maxPending x maxWaitersPerName)
 *   maxDeniedNames      names remembered by deny-name; beyond it the oldest
 *                       is forgotten (that name is asked again, never let
 *                       through silently)
 */

export type AskVerdict = 'allow-once' | 'allow-name' | 'deny' | 'deny-name';
export const ASK_VERDICTS: readonly AskVerdict[] = ['allow-once', 'allow-name', 'deny', 'deny-name'];

/**
 * Who answered a decision: an operator over the API, the embedder's
 * callback, nobody in time, or an allowlist reload that came to cover the
 * name (PUT /allowlist, SIGHUP, setAllowlist).
 */
export type AskAnswerer = 'api' | 'callback' | 'timeout' | 'reload';

/** What asked: 'dns' a gateway query, 'tcp' a held guest connection, 'quic' a UDP flow's Initial, 'proxy' a proxy target. */
export type AskProto = 'dns' | 'tcp' | 'quic' | 'proxy';

export interface AskRequest {
  /** Canonical hostname. */
  name: string;
  proto: AskProto;
  /** Destination port (53 for DNS). */
  port: number;
  /** Where the request was going as the guest/client said it (an address, or the name). */
  dst: string;
  /** How the name was learnt: 'dns', 'sni', 'host', 'quic', 'target'. */
  via: string;
}

export type AskRefusal = 'ask-timeout' | 'ask-denied' | 'ask-denied-name' | 'ask-pending-full' | 'ask-waiters-full' | 'ask-failed' | 'ask-closed';

export type AskOutcome =
  | { allow: true; verdict: 'allow-once' | 'allow-name'; by: AskAnswerer; id: string }
  | { allow: false; reason: AskRefusal; by: AskAnswerer | null; id: string | null; detail?: string };

/**
 * The rule allow-name adds for a request: the exact host, which covers 80
 * and 443 (and the DNS name itself); on any other port, host:port, since a
 * bare host rule would not cover it.
 */
export function allowNameRule(r: AskRequest): string {
  return r.proto === 'dns' || r.port === 80 || r.port === 443 ? r.name : `${r.name}:${r.port}`;
}

/** One pending decision as the API lists it. */
export interface PendingView {
  id: string;
  name: string;
  proto: AskProto;
  port: number;
  dst: string;
  via: string;
  /** When it was first asked (wall clock, ISO 8601). */
  since: string;
  /** Requests waiting on it now. */
  waiters: number;
}

export interface AskTableOptions {
  maxPending: number;
  maxWaitersPerName: number;
  maxWaiters: number;
  maxDeniedNames: number;
  timeoutMs: number;
  /** Monotonic milliseconds. */
  now: () => number;
  /** Wall-clock milliseconds, for `since` only. */
  wallNow: () => number;
  /** A fresh decision id: unguessable (the gate passes 128 random bits). */
  newId: () => string;
}

export const DEFAULT_ASK_LIMITS = Object.freeze({ maxPending: 256, maxWaitersPerName: 1024, maxWaiters: 4096, maxDeniedNames: 4096 });

export interface AskStats {
  pending: number;
  /** Requests waiting on all decisions now. */
  waiting: number;
  asked: number;
  joined: number;
  allowedOnce: number;
  allowedName: number;
  denied: number;
  deniedName: number;
  timeouts: number;
  failed: number;
  releasedByReload: number;
  refusedPendingFull: number;
  refusedWaitersFull: number;
  refusedAllWaitersFull: number;
  refusedDeniedName: number;
  deniedNames: number;
  deniedNamesForgotten: number;
}

type Waiter = (o: AskOutcome) => void;

interface Entry {
  readonly id: string;
  readonly request: AskRequest;
  readonly since: number;
  readonly deadline: number;
  readonly waiters: Set<Ticket>;
  /** Taken for a verdict: no longer listed, answerable or expirable; new requests for the name still join it. */
  taken: boolean;
}

/** A waiter's handle: `leave` it when the request goes away before its outcome. */
export interface Ticket {
  readonly id: string;
  /** True for the request that created the decision (the one to announce). */
  readonly created: boolean;
}

interface TicketImpl extends Ticket {
  readonly entry: Entry;
  readonly fn: Waiter;
}

export class AskTable {
  private readonly byName = new Map<string, Entry>();
  private readonly byId = new Map<string, Entry>();
  /** deny-name: insertion order is age (the oldest is forgotten first). */
  private readonly denied = new Set<string>();
  /** Waiters on every decision together (maxWaiters). */
  private waiting = 0;
  readonly counters: Omit<AskStats, 'pending' | 'waiting' | 'deniedNames'> = {
    asked: 0,
    joined: 0,
    allowedOnce: 0,
    allowedName: 0,
    denied: 0,
    deniedName: 0,
    timeouts: 0,
    failed: 0,
    releasedByReload: 0,
    refusedPendingFull: 0,
    refusedWaitersFull: 0,
    refusedAllWaitersFull: 0,
    refusedDeniedName: 0,
    deniedNamesForgotten: 0,
  };

  constructor(private readonly o: AskTableOptions) {
    for (const k of ['maxPending', 'maxWaitersPerName', 'maxWaiters', 'maxDeniedNames', 'timeoutMs'] as const) {
      if (!(Number.isInteger(o[k]) && o[k] >= 1)) throw new RangeError(`ask table: ${k} must be a positive integer, got ${o[k]}`);
    }
  }

  /**
   * A request waits for a decision on its name. Returns its ticket, or the
   * outcome at once when it cannot wait (a remembered deny-name, a full
   * table, a full decision): then `fn` is never called.
   */
  enter(request: AskRequest, fn: Waiter): Ticket | AskOutcome {
    if (this.denied.has(request.name)) {
      this.counters.refusedDeniedName++;
      return { allow: false, reason: 'ask-denied-name', by: null, id: null };
    }
    if (this.waiting >= this.o.maxWaiters) {
      this.counters.refusedAllWaitersFull++;
      return { allow: false, reason: 'ask-waiters-full', by: null, id: null, detail: `${this.o.maxWaiters} requests already wait on decisions` };
    }
    let entry = this.byName.get(request.name);
    let created = false;
    if (entry === undefined) {
      if (this.byName.size >= this.o.maxPending) {
        this.counters.refusedPendingFull++;
        return { allow: false, reason: 'ask-pending-full', by: null, id: null, detail: `${this.o.maxPending} decisions are pending` };
      }
      const now = this.o.now();
      entry = { id: this.o.newId(), request: { ...request }, since: this.o.wallNow(), deadline: now + this.o.timeoutMs, waiters: new Set(), taken: false };
      this.byName.set(request.name, entry);
      this.byId.set(entry.id, entry);
      this.counters.asked++;
      created = true;
    } else if (entry.waiters.size >= this.o.maxWaitersPerName) {
      this.counters.refusedWaitersFull++;
      return { allow: false, reason: 'ask-waiters-full', by: null, id: entry.id, detail: `${this.o.maxWaitersPerName} requests already wait on ${request.name}` };
    } else this.counters.joined++;
    const t: TicketImpl = { id: entry.id, created, entry, fn };
    entry.waiters.add(t);
    this.waiting++;
    return t;
  }

  /** The request went away (connection closed): it gets no outcome. Its decision stays until answered or expired. */
  leave(ticket: Ticket): void {
    const t = ticket as TicketImpl;
    if (t.entry.waiters.delete(t)) this.waiting--;
  }

  /** The pending (not yet taken) decisions, oldest first. */
  list(): PendingView[] {
    const out: PendingView[] = [];
    for (const e of this.byId.values()) out.push(view(e));
    return out;
  }

  get(id: string): PendingView | undefined {
    const e = this.byId.get(id);
    return e === undefined ? undefined : view(e);
  }

  /**
   * Takes a pending decision for a verdict: it leaves the list and can no
   * longer be answered (a second answer finds nothing) or expire; requests
   * for the name keep joining it until `settle`. undefined: unknown, already
   * answered or expired.
   */
  take(id: string): { id: string; name: string; request: AskRequest } | undefined {
    const e = this.byId.get(id);
    if (e === undefined) return undefined;
    this.byId.delete(id);
    e.taken = true;
    return { id, name: e.request.name, request: e.request };
  }

  /**
   * Ends a taken decision: every waiter gets `outcome` (each exactly once),
   * and a deny-name outcome remembers the name. `verdict` is what was
   * answered, for the counters.
   */
  settle(id: string, name: string, verdict: AskVerdict | 'timeout' | 'failed' | 'closed' | 'reload', outcome: AskOutcome): number {
    const e = this.byName.get(name);
    if (e === undefined || e.id !== id || !e.taken) return 0;
    this.byName.delete(name);
    const c = this.counters;
    if (verdict === 'allow-once') c.allowedOnce++;
    else if (verdict === 'allow-name') c.allowedName++;
    else if (verdict === 'deny') c.denied++;
    else if (verdict === 'deny-name') {
      c.deniedName++;
      this.rememberDenied(name);
    } else if (verdict === 'timeout') c.timeouts++;
    else if (verdict === 'failed') c.failed++;
    else if (verdict === 'reload') c.releasedByReload++;
    const waiters = [...e.waiters];
    e.waiters.clear();
    this.waiting -= waiters.length;
    for (const w of waiters) (w as TicketImpl).fn(outcome);
    return waiters.length;
  }

  /** Pending decisions whose request `pred` accepts, taken (the caller settles them). */
  takeWhere(pred: (r: AskRequest) => boolean): { id: string; name: string }[] {
    const hit: { id: string; name: string }[] = [];
    for (const e of this.byId.values()) if (pred(e.request)) hit.push({ id: e.id, name: e.request.name });
    for (const h of hit) this.take(h.id);
    return hit;
  }

  /** Decisions whose deadline has passed, taken (the caller settles them as timed out), oldest first. */
  expire(): { id: string; name: string }[] {
    const now = this.o.now();
    const due: { id: string; name: string }[] = [];
    // Only deadlines passed: a decision taken meanwhile is no longer in byId.
    for (const e of this.byId.values()) if (e.deadline <= now) due.push({ id: e.id, name: e.request.name });
    for (const d of due) this.take(d.id);
    return due;
  }

  /** The earliest deadline of a pending decision (monotonic ms), or undefined. */
  nextDeadline(): number | undefined {
    let min: number | undefined;
    for (const e of this.byId.values()) if (min === undefined || e.deadline < min) min = e.deadline;
    return min;
  }

  /** Every decision still open (pending or taken), for close(). */
  open(): { id: string; name: string; taken: boolean }[] {
    return [...this.byName.values()].map((e) => ({ id: e.id, name: e.request.name, taken: e.taken }));
  }

  isDenied(name: string): boolean {
    return this.denied.has(name);
  }

  stats(): AskStats {
    return { pending: this.byId.size, waiting: this.waiting, deniedNames: this.denied.size, ...this.counters };
  }

  private rememberDenied(name: string): void {
    this.denied.delete(name);
    this.denied.add(name);
    while (this.denied.size > this.o.maxDeniedNames) {
      const oldest = this.denied.values().next().value as string;
      this.denied.delete(oldest);
      this.counters.deniedNamesForgotten++;
    }
  }
}

function view(e: Entry): PendingView {
  const r = e.request;
  return { id: e.id, name: r.name, proto: r.proto, port: r.port, dst: r.dst, via: r.via, since: new Date(e.since).toISOString(), waiters: e.waiters.size };
}
