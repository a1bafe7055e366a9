/**
 * The logs' global budget (src/log-budget.ts) on a ManualClock: each bound
 * (lines, bytes, reasons in a summary) driven past, the summary lines
 * counted, and the decision counters untouched by what the budget holds back.
 */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../netstack/clock.js';
import { BudgetedWriter, DEFAULT_LOG_BUDGET, LogBudget, MAX_REASON_CHARS, MAX_SUMMARY_REASONS, OTHER_REASONS, type LogBudgetLimits, type Schedule } from '../../src/log-budget.js';
import { createLogger } from '../../src/log.js';
import { DecisionLog, logStats, type DecisionRecord } from '../../src/egress/decision-log.js';
import { DEFAULT_DECISION_LOG_LIMITS } from '../../src/egress/decision-log.js';

/** A Schedule whose timers fire when the test says (run() fires those due on `clock`). */
function manualSchedule(clock: ManualClock): { schedule: Schedule; pending: () => number; run: () => void } {
  const timers = new Set<{ at: number; fn: () => void }>();
  return {
    schedule: (fn, ms) => {
      const t = { at: clock.now() + ms, fn };
      timers.add(t);
      return { cancel: () => timers.delete(t) };
    },
    pending: () => timers.size,
    run: () => {
      for (const t of [...timers]) {
        if (t.at > clock.now()) continue;
        timers.delete(t);
        t.fn();
      }
    },
  };
}

const SMALL: LogBudgetLimits = { linesPerSec: 2, lineBurst: 10, bytesPerSec: 1000, byteBurst: 5000 };

function writer(limits: LogBudgetLimits = SMALL) {
  const clock = new ManualClock(1_000);
  const timers = manualSchedule(clock);
  const out: string[] = [];
  const budget = new LogBudget({ limits, now: () => clock.now() });
  const w = new BudgetedWriter({
    stream: { write: (l: string) => out.push(l) },
    budget,
    summaryLine: (s) => JSON.stringify({ msg: 'log lines suppressed', ...s }) + '\n',
    schedule: timers.schedule,
  });
  const summaries = () => out.filter((l) => l.includes('"log lines suppressed"')).map((l) => JSON.parse(l) as { suppressed: number; byReason: Record<string, number>; suppressedTotal: number });
  const lines = () => out.filter((l) => !l.includes('"log lines suppressed"'));
  return { clock, timers, out, budget, w, summaries, lines };
}

describe('LogBudget', () => {
  it('lines: the burst, then linesPerSec; the lines beyond are suppressed and counted', () => {
    const { clock, w, budget, lines } = writer();
    for (let i = 0; i < 25; i++) w.write('no-rule', `line ${i}\n`);
    expect(lines()).toHaveLength(10);
    expect(budget.stats).toMatchObject({ written: 10, suppressed: 15 });
    clock.advance(1_000); // 2 lines/s
    for (let i = 0; i < 5; i++) w.write('no-rule', 'again\n');
    expect(lines()).toHaveLength(12);
    expect(budget.stats.suppressed).toBe(18);
  });

  it('bytes: a line the byte bucket cannot cover is suppressed and costs no line token', () => {
    const { clock, w, budget, lines } = writer({ linesPerSec: 100, lineBurst: 100, bytesPerSec: 100, byteBurst: 1000 });
    const big = 'x'.repeat(399) + '\n'; // 400 bytes
    expect(w.write('big', big)).toBe(true);
    expect(w.write('big', big)).toBe(true);
    expect(w.write('big', big)).toBe(false); // 200 bytes left
    expect(w.write('small', 'y'.repeat(199) + '\n')).toBe(true); // the refused line took nothing
    expect(budget.stats).toMatchObject({ written: 3, writtenBytes: 1000, suppressed: 1 });
    clock.advance(4_000); // 400 bytes back
    expect(w.write('big', big)).toBe(true);
    expect(lines().join('').length).toBe(1400);
    // A byte is a byte of UTF-8, not a UTF-16 unit.
    clock.advance(10_000);
    const b2 = writer({ linesPerSec: 100, lineBurst: 100, bytesPerSec: 1, byteBurst: 10 });
    expect(b2.w.write('utf8', 'ééééé\n')).toBe(false); // 11 bytes
    expect(b2.w.write('utf8', 'éééé\n')).toBe(true); // 9 bytes
  });

  it('a line over budget is never built', () => {
    const { w } = writer({ ...SMALL, lineBurst: 1 });
    let built = 0;
    const line = () => {
      built++;
      return 'l\n';
    };
    w.write('r', line);
    w.write('r', line);
    w.write('r', line);
    expect(built).toBe(1);
  });

  it('a 35 s flood: one summary per 10 s while it lasts and one after it ends, per reason, adding up to every suppressed line', () => {
    const { clock, timers, w, budget, summaries, lines } = writer();
    const start = clock.now();
    // 100 lines/s for 35 s, three reasons.
    for (let i = 0; i < 3_500; i++) {
      w.write(['dns-sinkhole', 'no-rule', 'sni-mismatch'][i % 3]!, `{"n":${i}}\n`);
      clock.advance(10);
      timers.run();
    }
    const elapsedS = (clock.now() - start) / 1000;
    // Written: within the burst plus the rate over the time.
    expect(lines().length).toBeLessThanOrEqual(SMALL.lineBurst + SMALL.linesPerSec * elapsedS);
    expect(lines().length).toBeGreaterThanOrEqual(SMALL.lineBurst + SMALL.linesPerSec * (elapsedS - 1));
    expect(summaries()).toHaveLength(3); // at ~10, ~20, ~30 s
    // The flood is over: the timer writes the rest, and then no timer is left.
    clock.advance(10_000);
    timers.run();
    expect(summaries()).toHaveLength(4);
    expect(timers.pending()).toBe(0);
    const all = summaries();
    const total = all.reduce((n, s) => n + s.suppressed, 0);
    expect(total).toBe(budget.stats.suppressed);
    expect(total).toBe(3_500 - lines().length);
    expect(all.at(-1)!.suppressedTotal).toBe(total);
    for (const s of all) expect(Object.values(s.byReason).reduce((a, b) => a + b, 0)).toBe(s.suppressed);
    expect(Object.keys(all[0]!.byReason).sort()).toEqual(['dns-sinkhole', 'no-rule', 'sni-mismatch']);
    expect(budget.stats.summaries).toBe(4);
    // Quiet again: lines are written, no summary.
    clock.advance(60_000);
    w.write('no-rule', 'after\n');
    expect(lines().at(-1)).toBe('after\n');
    expect(summaries()).toHaveLength(4);
  });

  it('a summary that is due goes out before the next line, even if its timer has not run', () => {
    const { clock, w, out } = writer({ ...SMALL, lineBurst: 1 });
    w.write('a', 'first\n');
    w.write('a', 'suppressed\n');
    clock.advance(10_000);
    w.write('a', 'next\n');
    expect(out.map((l) => (l.includes('suppressed"') ? 'summary' : l.trim()))).toEqual(['first', 'summary', 'next']);
  });

  it('a summary is bounded: at most MAX_SUMMARY_REASONS reasons (the rest under (other)), each cut to MAX_REASON_CHARS', () => {
    const { w, summaries } = writer({ ...SMALL, lineBurst: 1 });
    w.write('x', 'in\n');
    for (let i = 0; i < 1_000; i++) w.write(`reason-${i}-${'z'.repeat(200)}`, 'l\n');
    w.close();
    const [s] = summaries();
    expect(Object.keys(s!.byReason)).toHaveLength(MAX_SUMMARY_REASONS + 1);
    expect(s!.byReason[OTHER_REASONS]).toBe(1_000 - MAX_SUMMARY_REASONS);
    for (const k of Object.keys(s!.byReason)) expect(k.length).toBeLessThanOrEqual(MAX_REASON_CHARS);
    expect(s!.suppressed).toBe(1_000);
  });

  it('close() writes what is pending at once and leaves no timer', () => {
    const { w, timers, summaries } = writer({ ...SMALL, lineBurst: 1 });
    w.write('a', 'l\n');
    w.write('a', 'l\n');
    expect(timers.pending()).toBe(1);
    w.close();
    expect(timers.pending()).toBe(0);
    expect(summaries()).toMatchObject([{ suppressed: 1, byReason: { a: 1 } }]);
    w.close();
    expect(summaries()).toHaveLength(1);
  });
});

describe('the main log with a budget (createLogger)', () => {
  function mainLog(limits: LogBudgetLimits = DEFAULT_LOG_BUDGET) {
    const clock = new ManualClock(0);
    const timers = manualSchedule(clock);
    const lines: Record<string, unknown>[] = [];
    let bytes = 0;
    const log = createLogger({
      level: 'info',
      format: 'json',
      stream: {
        write: (l: string) => {
          bytes += Buffer.byteLength(l);
          lines.push(JSON.parse(l) as Record<string, unknown>);
        },
      },
      now: () => new Date(0),
      budget: { limits, clock: () => clock.now(), schedule: timers.schedule },
    });
    return { log, lines, clock, timers, bytes: () => bytes };
  }

  it('a normal start-up and a few hundred decisions are never suppressed with the defaults', () => {
    const { log, lines } = mainLog();
    const child = log.child({ component: 'egress' });
    for (let i = 0; i < 30; i++) log.info('start-up step', { i, config: { allow: Array.from({ length: 20 }, (_, j) => `host-${j}.example.com`) } });
    for (let i = 0; i < 300; i++) child.info('egress decision', { id: `abc-${i}`, decision: 'blocked', reason: 'no-rule', proto: 'tcp', dst: `203.0.113.${i % 250}:443`, name: `blocked-${i}.example` });
    expect(lines).toHaveLength(330);
    expect(log.budgetStats!()).toMatchObject({ written: 330, suppressed: 0, summaries: 0 });
  });

  it('a flood is cut to the budget; the summary is a warn line counting per message, whatever the level; children share the budget', () => {
    const { log, lines, clock, timers, bytes } = mainLog({ linesPerSec: 5, lineBurst: 20, bytesPerSec: 4096, byteBurst: 8192 });
    const log2 = createLogger({ level: 'error', format: 'json', stream: { write: () => {} } }); // no budget: no stats
    expect(log2.budgetStats).toBeUndefined();
    const dns = log.child({ component: 'dns' });
    const egress = log.child({ component: 'egress' });
    for (let i = 0; i < 1_200; i++) {
      dns.info('dns decision', { name: `n${i}.blocked.test` });
      egress.info('egress decision', { dst: `n${i}.blocked.test` });
      clock.advance(10); // 12 s in all
      timers.run();
    }
    expect(bytes()).toBeLessThanOrEqual(8192 + 4096 * 12 + 2 * 1024); // + the summaries
    const summaries = lines.filter((l) => l['msg'] === 'log lines suppressed');
    const written = lines.length - summaries.length;
    expect(written).toBeLessThanOrEqual(20 + 5 * 12);
    expect(summaries).toHaveLength(1); // at ~10.1 s
    expect(summaries[0]).toMatchObject({ level: 'warn', byReason: { 'dns decision': expect.any(Number), 'egress decision': expect.any(Number) } });
    log.flush!();
    const all = lines.filter((l) => l['msg'] === 'log lines suppressed');
    expect(all.reduce((n, s) => n + (s['suppressed'] as number), 0)).toBe(2_400 - written);
    expect(log.budgetStats!()).toMatchObject({ written, suppressed: 2_400 - written, summaries: all.length });
  });
});

describe('the decision log with a budget (DecisionLog)', () => {
  const rec = (d: DecisionLog, name: string): DecisionRecord => ({
    id: d.nextId(),
    decision: 'blocked',
    reason: 'dns-sinkhole',
    rule: null,
    proto: 'dns',
    dst: name,
    name,
    via: 'dns',
    detail: 'A',
  });

  it('unique names pass the per-destination limit but not the global budget; every decision is still counted and seen', () => {
    const clock = new ManualClock(0);
    const timers = manualSchedule(clock);
    const file: string[] = [];
    const main: Record<string, unknown>[] = [];
    const limits = { linesPerSec: 10, lineBurst: 50, bytesPerSec: 100_000, byteBurst: 100_000 };
    const log = createLogger({ level: 'info', format: 'json', stream: { write: (l: string) => main.push(JSON.parse(l) as Record<string, unknown>) }, budget: { limits, clock: () => clock.now(), schedule: timers.schedule } });
    const d = new DecisionLog({ ...DEFAULT_DECISION_LOG_LIMITS, now: () => clock.now(), sink: { write: (l: string) => file.push(l) }, budget: limits, schedule: timers.schedule }, log);
    let seen = 0;
    d.subscribe(() => seen++);
    for (let i = 0; i < 5_000; i++) {
      d.record(rec(d, `x${i}.exfil.test`));
      if (i % 100 === 99) {
        clock.advance(100); // 5,000 in 5 s
        timers.run();
      }
    }
    d.close();
    log.flush!();
    expect(d.stats).toMatchObject({ blocked: 5_000, suppressedLines: 0 });
    expect(seen).toBe(5_000);
    const records = file.map((l) => JSON.parse(l) as Record<string, unknown>);
    const summaries = records.filter((r) => r['msg'] === 'log lines suppressed');
    const written = records.length - summaries.length;
    expect(written).toBeLessThanOrEqual(50 + 10 * 5);
    expect(summaries.reduce((n, s) => n + (s['suppressed'] as number), 0)).toBe(5_000 - written);
    expect(summaries[0]).toMatchObject({ byReason: { 'dns-sinkhole': expect.any(Number) }, time: expect.any(String) });
    expect(d.budgetStats()).toMatchObject({ written, suppressed: 5_000 - written });
    // /stats.logs reports both logs' budgets.
    const stats = logStats(log, d, undefined) as { main: { suppressed: number }; decisionLog: { suppressed: number } };
    expect(stats.decisionLog.suppressed).toBe(5_000 - written);
    expect(stats.main.suppressed).toBeGreaterThan(4_000);
    expect(main.filter((l) => l['msg'] === 'egress decision').length).toBeLessThanOrEqual(50 + 10 * 5);
  });

  it('without a file there is no budget to report; the per-destination limit still comes first', () => {
    const d = new DecisionLog({ ...DEFAULT_DECISION_LOG_LIMITS, now: () => 0 }, createLogger({ level: 'error', format: 'json', stream: { write: () => {} } }));
    expect(d.budgetStats()).toBeUndefined();
    for (let i = 0; i < 30; i++) d.record(rec(d, 'same.test'));
    expect(d.stats.suppressedLines).toBe(30 - DEFAULT_DECISION_LOG_LIMITS.burst);
  });
});
