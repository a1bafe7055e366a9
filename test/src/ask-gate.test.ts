/**
 * AskGate (src/egress/ask-gate.ts): the pending table with its timer,
 * verdict side effects, callback and event subscribers, against fakes.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AskGate, DEFAULT_ASK_SETTINGS, type AskCallback, type AskSettings, type EventSink } from '../../src/egress/ask-gate.js';
import type { AskOutcome, AskRequest } from '../../src/egress/ask-table.js';
import { NULL_LOGGER } from '../../src/log.js';

const req = (name: string, over: Partial<AskRequest> = {}): AskRequest => ({ name, proto: 'tcp', port: 443, dst: '10.0.0.9', via: 'sni', ...over });

function gate(settings: Partial<AskSettings> = {}, callback?: AskCallback, addHost: (rule: string) => Promise<void> = async () => {}) {
  const added: string[] = [];
  const g = new AskGate({ ...DEFAULT_ASK_SETTINGS, timeoutMs: 1000, ...settings }, { addHost: async (r) => (await addHost(r), void added.push(r)), now: () => Date.now(), ...(callback ? { callback } : {}) }, NULL_LOGGER);
  return { g, added };
}

class Sink implements EventSink {
  chunks: string[] = [];
  closed = false;
  constructor(private readonly reads: boolean) {}
  write(c: string): boolean {
    this.chunks.push(c);
    return this.reads;
  }
  get writableLength(): number {
    return this.reads ? 0 : this.chunks.reduce((n, c) => n + c.length, 0);
  }
  close(): void {
    this.closed = true;
  }
}

describe('AskGate', () => {
  beforeEach(() => void vi.useFakeTimers());
  afterEach(() => void vi.useRealTimers());

  it('times out every waiter of a decision with ask-timeout (answered by timeout), at the deadline and not before', async () => {
    const { g } = gate({ timeoutMs: 1000 });
    const outcomes: AskOutcome[] = [];
    void g.ask(req('a.test')).then((o) => outcomes.push(o));
    vi.advanceTimersByTime(500);
    void g.ask(req('a.test')).then((o) => outcomes.push(o));
    void g.ask(req('b.test')).then((o) => outcomes.push(o));
    vi.advanceTimersByTime(499);
    await Promise.resolve();
    expect(outcomes).toEqual([]);
    vi.advanceTimersByTime(1);
    await vi.runAllTimersAsync();
    expect(outcomes.slice(0, 2).map((o) => !o.allow && o.reason)).toEqual(['ask-timeout', 'ask-timeout']);
    expect(outcomes.slice(0, 2).every((o) => o.by === 'timeout')).toBe(true);
    expect(outcomes).toHaveLength(3); // b.test at its own deadline (1500)
    expect(g.stats()).toMatchObject({ timeouts: 2, pending: 0 });
  });

  it('allow-name adds the exact host (host:port off 80/443) before releasing the waiters', async () => {
    let release!: () => void;
    const slow = new Promise<void>((r) => (release = r));
    const { g, added } = gate({}, undefined, () => slow);
    const got: AskOutcome[] = [];
    void g.ask(req('x.test', { port: 8443 })).then((o) => got.push(o));
    const id = g.pending()[0]!.id;
    const answered = g.answer(id, 'allow-name', 'api');
    await Promise.resolve();
    expect(got).toEqual([]); // still resolving: nobody released
    expect(g.pending()).toEqual([]); // but no longer answerable
    expect(await g.answer(id, 'deny', 'api')).toEqual({ found: false });
    release();
    await answered;
    expect(added).toEqual(['x.test:8443']);
    expect(got).toEqual([{ allow: true, verdict: 'allow-name', by: 'api', id }]);
  });

  it('the callback answers; a throwing or verdict-less callback leaves the decision to the timeout', async () => {
    const { g } = gate({}, async (p) => (p.name === 'ok.test' ? 'allow-once' : p.name === 'throw.test' ? Promise.reject(new Error('no')) : ('maybe' as never)));
    const ok = g.ask(req('ok.test'));
    await vi.advanceTimersByTimeAsync(0);
    expect(await ok).toMatchObject({ allow: true, verdict: 'allow-once', by: 'callback' });
    const t = g.ask(req('throw.test'));
    const m = g.ask(req('maybe.test'));
    await vi.advanceTimersByTimeAsync(1000);
    expect(await t).toMatchObject({ allow: false, reason: 'ask-timeout' });
    expect(await m).toMatchObject({ allow: false, reason: 'ask-timeout' });
  });

  it('event subscribers are bounded (null beyond, counted); one that does not read is dropped past its backlog, the others still get events', async () => {
    const { g } = gate({ maxSubscribers: 2, maxSubscriberBacklogBytes: 600 });
    const reader = new Sink(true);
    const stalled = new Sink(false);
    expect(g.subscribe(reader)).not.toBeNull();
    expect(g.subscribe(stalled)).not.toBeNull();
    expect(g.subscribe(new Sink(true))).toBeNull();
    for (let i = 0; i < 20; i++) void g.ask(req(`n${i}.test`));
    expect(stalled.closed).toBe(true);
    expect(stalled.writableLength).toBeLessThanOrEqual(600);
    expect(reader.chunks).toHaveLength(20);
    expect(reader.chunks[0]).toMatch(/^event: pending\ndata: \{.*"name":"n0.test".*\}\n\n$/);
    expect(g.stats()).toMatchObject({ subscribers: 1, subscribersRefused: 1, subscribersDropped: 1 });
    // Its place is free again.
    expect(g.subscribe(new Sink(true))).not.toBeNull();
  });

  it('close refuses every waiter (ask-closed), ends the subscribers, and later asks are refused at once', async () => {
    const { g } = gate();
    const sink = new Sink(true);
    g.subscribe(sink);
    const a = g.ask(req('a.test'));
    const id = g.pending()[0]!.id;
    void g.answer(id, 'allow-name', 'api'); // taken, resolving: still refused on close
    g.close();
    expect(await a).toMatchObject({ allow: false });
    expect(sink.closed).toBe(true);
    expect(await g.ask(req('b.test'))).toMatchObject({ allow: false, reason: 'ask-closed' });
  });

  it('decision ids are 128-bit random hex, distinct', () => {
    const { g } = gate();
    for (let i = 0; i < 50; i++) void g.ask(req(`i${i}.test`));
    const ids = g.pending().map((p) => p.id);
    expect(new Set(ids).size).toBe(50);
    expect(ids.every((id) => /^[0-9a-f]{32}$/.test(id))).toBe(true);
    g.close();
  });
});
