/**
 * Ask mode in the service: the pending-decision table (ask-table.ts, pure)
 * with a timer, the verdicts' side effects, the embedder's callback and the
 * server-sent event subscribers.
 *
 *   ask(request)        a request for an unlisted name waits here; resolves
 *                       with its outcome (allow-once / allow-name / refusal)
 *   answer(id, verdict) the operator (API) or the callback answers; the
 *                       first answer wins, a second finds nothing (404)
 *
 * allow-name adds the exact host as a rule through the allowlist runtime's
 * serialised reload path (resolved and pinned first, like PUT /allowlist;
 * nothing changes if it does not resolve) and only then releases the
 * waiters, so each re-decides under rules that name it. A reload racing it
 * is serialised behind or ahead of the add; neither is lost.
 *
 * Decision ids are 128 random bits; they are only ever shown on the
 * operator's API (a unix socket), never to the guest.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../log.js';
import {
  allowNameRule,
  ASK_VERDICTS,
  AskTable,
  DEFAULT_ASK_LIMITS,
  type AskOutcome,
  type AskRequest,
  type AskStats,
  type AskVerdict,
  type PendingView,
} from './ask-table.js';

/** The embedder's answer (serve({ ask }), proxy({ ask })). Throwing or an unknown verdict leaves the decision to the API or the timeout. */
export type AskCallback = (pending: PendingView) => AskVerdict | Promise<AskVerdict>;

export interface AskSettings {
  timeoutMs: number;
  maxPending: number;
  maxWaitersPerName: number;
  maxWaiters: number;
  maxDeniedNames: number;
  /** Event-stream subscribers at once (GET /decisions/events); beyond, 503. */
  maxSubscribers: number;
  /** Bytes an event-stream subscriber may leave unread before it is dropped. */
  maxSubscriberBacklogBytes: number;
}

export const DEFAULT_ASK_SETTINGS: Readonly<AskSettings> = Object.freeze({
  timeoutMs: 30_000,
  ...DEFAULT_ASK_LIMITS,
  maxSubscribers: 16,
  maxSubscriberBacklogBytes: 256 * 1024,
});

/** Where a subscriber's events go: an http.ServerResponse in the API, an array in tests. */
export interface EventSink {
  write(chunk: string): boolean;
  readonly writableLength: number;
  /** Ends the stream (Moat closing, or a subscriber dropped for not reading: its backlog is discarded). */
  close(): void;
}

export type AnswerResult =
  | { found: false }
  | { found: true; id: string; name: string; verdict: AskVerdict; waiters: number; outcome: AskOutcome };

export interface AskGateDeps {
  /** allow-name: add `rule` (the exact host, allowNameRule) to the rules, resolved first; throws, changing nothing, when it cannot. */
  addHost(rule: string): Promise<void>;
  now(): number;
  wallNow?: () => number;
  newId?: () => string;
  callback?: AskCallback;
}

export class AskGate {
  readonly table: AskTable;
  private timer: NodeJS.Timeout | undefined;
  private armedFor: number | undefined;
  private readonly subscribers = new Set<EventSink>();
  private closed = false;
  readonly eventCounters = { subscribersRefused: 0, subscribersDropped: 0 };

  constructor(
    readonly settings: AskSettings,
    private readonly deps: AskGateDeps,
    private readonly log: Logger,
  ) {
    this.table = new AskTable({
      maxPending: settings.maxPending,
      maxWaitersPerName: settings.maxWaitersPerName,
      maxWaiters: settings.maxWaiters,
      maxDeniedNames: settings.maxDeniedNames,
      timeoutMs: settings.timeoutMs,
      now: deps.now,
      wallNow: deps.wallNow ?? Date.now,
      newId: deps.newId ?? (() => randomBytes(16).toString('hex')),
    });
  }

  /**
   * Waits for a decision on `request.name`. `signal`: the request went away
   * (its connection closed); the promise then never settles and the
   * decision stays for the others.
   */
  ask(request: AskRequest, signal?: AbortSignal): Promise<AskOutcome> {
    if (this.closed) return Promise.resolve({ allow: false, reason: 'ask-closed', by: null, id: null });
    return new Promise((resolve) => {
      const t = this.table.enter(request, resolve);
      if (!('created' in t)) {
        resolve(t);
        return;
      }
      if (signal !== undefined) {
        if (signal.aborted) this.table.leave(t);
        else signal.addEventListener('abort', () => this.table.leave(t), { once: true });
      }
      if (!t.created) return;
      const view = this.table.get(t.id);
      if (view === undefined) return;
      this.log.info('asking: a request for an unlisted name is held', { id: view.id, name: view.name, proto: view.proto, port: view.port, via: view.via, timeoutMs: this.settings.timeoutMs });
      this.emit('pending', view);
      this.arm();
      this.callBack(view);
    });
  }

  /** The pending decisions (GET /decisions/pending). */
  pending(): PendingView[] {
    return this.table.list();
  }

  /**
   * Answers a pending decision. `found: false` for an unknown, answered or
   * expired id. allow-name resolves the name first: if it fails, the
   * waiters are refused ('ask-failed') and the error is thrown to the caller.
   */
  async answer(id: string, verdict: AskVerdict, by: 'api' | 'callback'): Promise<AnswerResult> {
    const taken = this.table.take(id);
    if (taken === undefined) return { found: false };
    this.arm();
    if (verdict === 'allow-name') {
      try {
        await this.deps.addHost(allowNameRule(taken.request));
      } catch (e) {
        const detail = (e as Error).message;
        const outcome: AskOutcome = { allow: false, reason: 'ask-failed', by, id, detail };
        this.settle(taken, 'failed', outcome);
        throw e;
      }
    }
    const outcome: AskOutcome =
      verdict === 'allow-once' || verdict === 'allow-name' ? { allow: true, verdict, by, id } : { allow: false, reason: verdict === 'deny' ? 'ask-denied' : 'ask-denied-name', by, id };
    const waiters = this.settle(taken, verdict, outcome);
    this.log.info('ask answered', { id, name: taken.name, verdict, by, waiters });
    return { found: true, id, name: taken.name, verdict, waiters, outcome };
  }

  /** A new subscriber for `pending` and `decided` events; null when there are maxSubscribers already. */
  subscribe(sink: EventSink): (() => void) | null {
    if (this.closed || this.subscribers.size >= this.settings.maxSubscribers) {
      this.eventCounters.subscribersRefused++;
      return null;
    }
    this.subscribers.add(sink);
    return () => this.subscribers.delete(sink);
  }

  stats(): AskStats & { timeoutMs: number; subscribers: number; subscribersRefused: number; subscribersDropped: number } {
    return { ...this.table.stats(), timeoutMs: this.settings.timeoutMs, subscribers: this.subscribers.size, ...this.eventCounters };
  }

  /** Refuses every waiter ('ask-closed') and ends every subscriber. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.clearTimer();
    for (const o of this.table.open()) {
      if (!o.taken) this.table.take(o.id);
      this.table.settle(o.id, o.name, 'closed', { allow: false, reason: 'ask-closed', by: null, id: o.id });
    }
    for (const s of [...this.subscribers]) s.close();
    this.subscribers.clear();
  }

  /**
   * After an allowlist reload: pending decisions whose name the rules now
   * cover are released as if allowed by name (each waiter re-decides under
   * the new rules, as after allow-name); answered by 'reload'.
   */
  releaseCovered(covered: (name: string) => boolean): number {
    const hit = this.table.takeWhere((r) => covered(r.name));
    for (const d of hit) this.settle(d, 'reload', { allow: true, verdict: 'allow-name', by: 'reload', id: d.id });
    if (hit.length > 0) {
      this.arm();
      this.log.info('ask: pending decisions released by an allowlist reload', { names: hit.map((d) => d.name) });
    }
    return hit.length;
  }

  private settle(taken: { id: string; name: string }, verdict: AskVerdict | 'timeout' | 'failed' | 'reload', outcome: AskOutcome): number {
    const waiters = this.table.settle(taken.id, taken.name, verdict, outcome);
    this.emit('decided', { id: taken.id, name: taken.name, verdict, by: outcome.by, waiters, ...(outcome.allow ? {} : { reason: outcome.reason }) });
    return waiters;
  }

  private callBack(view: PendingView): void {
    const cb = this.deps.callback;
    if (cb === undefined) return;
    void (async () => {
      let verdict: unknown;
      try {
        verdict = await cb(view);
      } catch (e) {
        this.log.warn('ask callback threw; the decision waits for the API or its timeout', { id: view.id, name: view.name, error: e });
        return;
      }
      if (!ASK_VERDICTS.includes(verdict as AskVerdict)) {
        this.log.warn('ask callback returned no verdict; the decision waits for the API or its timeout', { id: view.id, name: view.name, verdict: String(verdict) });
        return;
      }
      try {
        await this.answer(view.id, verdict as AskVerdict, 'callback');
      } catch (e) {
        this.log.warn('ask callback verdict failed', { id: view.id, name: view.name, verdict, error: e });
      }
    })();
  }

  /** One timer at the earliest deadline. */
  private arm(): void {
    const next = this.table.nextDeadline();
    if (next === this.armedFor) return;
    this.clearTimer();
    if (next === undefined || this.closed) return;
    this.armedFor = next;
    this.timer = setTimeout(() => this.expire(), Math.max(0, next - this.deps.now()));
    this.timer.unref?.();
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.armedFor = undefined;
  }

  private expire(): void {
    this.timer = undefined;
    this.armedFor = undefined;
    for (const d of this.table.expire()) {
      const waiters = this.settle(d, 'timeout', { allow: false, reason: 'ask-timeout', by: 'timeout', id: d.id });
      this.log.info('ask timed out: refused', { id: d.id, name: d.name, waiters, timeoutMs: this.settings.timeoutMs });
    }
    this.arm();
  }

  private emit(event: 'pending' | 'decided', data: unknown): void {
    if (this.subscribers.size === 0) return;
    const chunk = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const s of [...this.subscribers]) {
      // A subscriber that does not read must not make Moat hold its events: past the backlog it is dropped.
      if (s.writableLength + chunk.length > this.settings.maxSubscriberBacklogBytes) {
        this.subscribers.delete(s);
        this.eventCounters.subscribersDropped++;
        this.log.warn('decision event subscriber dropped: it did not read its events', { backlogBytes: s.writableLength });
        s.close();
        continue;
      }
      s.write(chunk);
    }
  }
}
