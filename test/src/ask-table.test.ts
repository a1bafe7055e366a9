/**
 * The pending-decision table of ask mode (src/egress/ask-table.ts): one
 * decision per name, every bound refused with its own reason and counted,
 * and every waiter gets exactly one outcome (property).
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { allowNameRule, AskTable, type AskOutcome, type AskRequest, type AskTableOptions, type Ticket } from '../../src/egress/ask-table.js';

function table(over: Partial<AskTableOptions> = {}): { t: AskTable; clock: { now: number } } {
  const clock = { now: 0 };
  let n = 0;
  const t = new AskTable({ maxPending: 4, maxWaitersPerName: 3, maxWaiters: 100, maxDeniedNames: 2, timeoutMs: 1000, now: () => clock.now, wallNow: () => 0, newId: () => `id${n++}`, ...over });
  return { t, clock };
}

const req = (name: string, over: Partial<AskRequest> = {}): AskRequest => ({ name, proto: 'tcp', port: 443, dst: '10.0.0.1', via: 'sni', ...over });
const isTicket = (x: Ticket | AskOutcome): x is Ticket => 'created' in x;

describe('AskTable', () => {
  it('requests for one name share one pending decision; the first creates it', () => {
    const { t } = table();
    const got: AskOutcome[] = [];
    const a = t.enter(req('new.test'), (o) => got.push(o));
    const b = t.enter(req('new.test', { proto: 'dns', via: 'dns' }), (o) => got.push(o));
    expect(isTicket(a) && a.created).toBe(true);
    expect(isTicket(b) && !b.created && b.id === (a as Ticket).id).toBe(true);
    expect(t.list()).toEqual([{ id: 'id0', name: 'new.test', proto: 'tcp', port: 443, dst: '10.0.0.1', via: 'sni', since: new Date(0).toISOString(), waiters: 2 }]);
    const taken = t.take('id0')!;
    expect(t.list()).toEqual([]);
    expect(t.take('id0')).toBeUndefined(); // a second answer finds nothing
    expect(t.settle(taken.id, taken.name, 'allow-once', { allow: true, verdict: 'allow-once', by: 'api', id: 'id0' })).toBe(2);
    expect(got).toHaveLength(2);
    expect(t.stats()).toMatchObject({ pending: 0, asked: 1, joined: 1, allowedOnce: 1 });
  });

  it('a request for a name already taken for a verdict joins it and gets that verdict', () => {
    const { t } = table();
    const got: AskOutcome[] = [];
    t.enter(req('a.test'), (o) => got.push(o));
    const taken = t.take('id0')!;
    const late = t.enter(req('a.test'), (o) => got.push(o));
    expect(isTicket(late) && late.id).toBe('id0');
    t.settle(taken.id, taken.name, 'deny', { allow: false, reason: 'ask-denied', by: 'api', id: 'id0' });
    expect(got.map((o) => !o.allow && o.reason)).toEqual(['ask-denied', 'ask-denied']);
  });

  it('refuses past maxPending (a guest flooding unique names), counted, reason named', () => {
    const { t } = table({ maxPending: 4 });
    for (let i = 0; i < 4; i++) expect(isTicket(t.enter(req(`n${i}.test`), () => {}))).toBe(true);
    const over = t.enter(req('n4.test'), () => {});
    expect(over).toMatchObject({ allow: false, reason: 'ask-pending-full' });
    expect(t.stats()).toMatchObject({ pending: 4, refusedPendingFull: 1 });
    // Joining an existing name still works when the table is full.
    expect(isTicket(t.enter(req('n0.test'), () => {}))).toBe(true);
  });

  it('refuses past maxWaitersPerName (thousands of connections on one name), counted, reason named', () => {
    const { t } = table({ maxWaitersPerName: 3 });
    for (let i = 0; i < 3; i++) expect(isTicket(t.enter(req('one.test'), () => {}))).toBe(true);
    expect(t.enter(req('one.test'), () => {})).toMatchObject({ allow: false, reason: 'ask-waiters-full', id: 'id0' });
    expect(t.stats()).toMatchObject({ refusedWaitersFull: 1 });
    expect(t.list()[0]!.waiters).toBe(3);
  });

  it('refuses past maxWaiters over all decisions (ask-waiters-full), counted; leaving and settling free places', () => {
    const { t } = table({ maxWaiters: 4, maxWaitersPerName: 3 });
    const a = t.enter(req('a.test'), () => {}) as Ticket;
    t.enter(req('a.test'), () => {});
    t.enter(req('b.test'), () => {});
    t.enter(req('c.test'), () => {});
    expect(t.enter(req('d.test'), () => {})).toMatchObject({ allow: false, reason: 'ask-waiters-full', id: null });
    expect(t.stats()).toMatchObject({ waiting: 4, refusedAllWaitersFull: 1, pending: 3 });
    t.leave(a);
    expect(isTicket(t.enter(req('d.test'), () => {}))).toBe(true);
    const k = t.take(a.id)!;
    t.settle(k.id, k.name, 'deny', { allow: false, reason: 'ask-denied', by: 'api', id: k.id });
    expect(t.stats().waiting).toBe(3);
  });

  it('a waiter that leaves gets no outcome and frees its place', () => {
    const { t } = table({ maxWaitersPerName: 1 });
    const got: AskOutcome[] = [];
    const a = t.enter(req('x.test'), (o) => got.push(o)) as Ticket;
    t.leave(a);
    expect(isTicket(t.enter(req('x.test'), (o) => got.push(o)))).toBe(true);
    const k = t.take(a.id)!;
    expect(t.settle(k.id, k.name, 'deny', { allow: false, reason: 'ask-denied', by: 'api', id: k.id })).toBe(1);
    expect(got).toHaveLength(1);
  });

  it('expires decisions at their deadline, not before', () => {
    const { t, clock } = table({ timeoutMs: 1000 });
    t.enter(req('a.test'), () => {});
    clock.now = 500;
    t.enter(req('b.test'), () => {});
    expect(t.nextDeadline()).toBe(1000);
    clock.now = 999;
    expect(t.expire()).toEqual([]);
    clock.now = 1000;
    expect(t.expire()).toEqual([{ id: 'id0', name: 'a.test' }]);
    expect(t.list().map((p) => p.name)).toEqual(['b.test']);
    expect(t.get('id0')).toBeUndefined();
  });

  it('deny-name remembers the name (refused at entry), bounded: the oldest is forgotten, counted', () => {
    const { t } = table({ maxDeniedNames: 2 });
    const deny = (name: string): void => {
      const tk = t.enter(req(name), () => {}) as Ticket;
      const k = t.take(tk.id)!;
      t.settle(k.id, k.name, 'deny-name', { allow: false, reason: 'ask-denied-name', by: 'api', id: k.id });
    };
    deny('d1.test');
    expect(t.enter(req('d1.test'), () => {})).toMatchObject({ allow: false, reason: 'ask-denied-name' });
    deny('d2.test');
    deny('d3.test');
    expect(t.stats()).toMatchObject({ deniedNames: 2, deniedNamesForgotten: 1, refusedDeniedName: 1 });
    expect(t.isDenied('d1.test')).toBe(false); // forgotten: asked again, never let through silently
    expect(isTicket(t.enter(req('d1.test'), () => {}))).toBe(true);
    expect(t.isDenied('d3.test')).toBe(true);
  });

  it('allow-name adds the exact host, or host:port off 80/443', () => {
    expect(allowNameRule(req('a.test'))).toBe('a.test');
    expect(allowNameRule(req('a.test', { proto: 'dns', port: 53 }))).toBe('a.test');
    expect(allowNameRule(req('a.test', { port: 8443 }))).toBe('a.test:8443');
  });

  it('rejects bounds that are not positive integers', () => {
    expect(() => table({ maxPending: 0 })).toThrow(/maxPending/);
    expect(() => table({ timeoutMs: 1.5 })).toThrow(/timeoutMs/);
  });

  it('property: every waiter that stays gets exactly one outcome; refused entries none; the table ends empty', () => {
    type Op = { k: 'enter'; name: number } | { k: 'leave'; i: number } | { k: 'answer'; i: number; v: 0 | 1 | 2 | 3 } | { k: 'tick'; ms: number };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ k: fc.constant('enter' as const), name: fc.integer({ min: 0, max: 6 }) }),
      fc.record({ k: fc.constant('leave' as const), i: fc.nat() }),
      fc.record({ k: fc.constant('answer' as const), i: fc.nat(), v: fc.constantFrom(0 as const, 1 as const, 2 as const, 3 as const) }),
      fc.record({ k: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 700 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 120 }), (ops) => {
        const { t, clock } = table({ maxPending: 3, maxWaitersPerName: 4, maxDeniedNames: 2, timeoutMs: 1000 });
        const verdicts = ['allow-once', 'allow-name', 'deny', 'deny-name'] as const;
        const waiters: { ticket: Ticket | null; left: boolean; outcomes: number }[] = [];
        const settleTaken = (k: { id: string; name: string } | undefined, v: (typeof verdicts)[number] | 'timeout'): void => {
          if (k === undefined) return;
          const o: AskOutcome = v === 'allow-once' || v === 'allow-name' ? { allow: true, verdict: v, by: 'api', id: k.id } : { allow: false, reason: v === 'timeout' ? 'ask-timeout' : 'ask-denied', by: 'api', id: k.id };
          t.settle(k.id, k.name, v, o);
        };
        for (const o of ops) {
          if (o.k === 'enter') {
            const w = { ticket: null as Ticket | null, left: false, outcomes: 0 };
            const r = t.enter(req(`n${o.name}.test`), () => w.outcomes++);
            if (isTicket(r)) w.ticket = r;
            waiters.push(w);
          } else if (o.k === 'leave' && waiters.length > 0) {
            const w = waiters[o.i % waiters.length]!;
            if (w.ticket !== null && !w.left && w.outcomes === 0) {
              t.leave(w.ticket);
              w.left = true;
            }
          } else if (o.k === 'answer') {
            const list = t.list();
            if (list.length > 0) settleTaken(t.take(list[o.i % list.length]!.id), verdicts[o.v]);
          } else if (o.k === 'tick') {
            clock.now += o.ms;
            for (const d of t.expire()) settleTaken(d, 'timeout');
          }
        }
        clock.now += 10_000;
        for (const d of t.expire()) settleTaken(d, 'timeout');
        for (const w of waiters) {
          const expected = w.ticket === null || w.left ? 0 : 1;
          if (w.outcomes !== expected) return false;
        }
        return t.list().length === 0 && t.open().length === 0 && t.stats().waiting === 0;
      }),
      { numRuns: 300 },
    );
  });
});
