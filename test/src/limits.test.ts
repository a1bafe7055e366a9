import { afterEach, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiServer } from '../../src/api-server.js';
import { parseServeArgs, serveHelp, ConfigError } from '../../src/config.js';
import { BufferBudget, DEFAULT_LIMITS, LIMIT_SPECS, parseLimits, RefusalLog, type BudgetMember } from '../../src/limits.js';
import { limitsOf, natOptionsFor, stackConfigFor } from '../../src/network.js';
import { captureLogger, FakeForwards } from './shell-fakes.js';

const NO_FILES = { readFile: (p: string): string => { throw new Error(`no file ${p}`); }, readResolvConf: () => 'nameserver 192.0.2.53\n' };

function serveArgs(extra: string[]) {
  const r = parseServeArgs(['--listen-qemu', 'unix:///tmp/q.sock', ...extra], NO_FILES);
  if (r.kind !== 'config') throw new Error('help?');
  return r.config;
}

describe('limit flags', () => {
  it('every limit is a documented flag with its default in serve --help', () => {
    const help = serveHelp();
    for (const s of LIMIT_SPECS) {
      expect(help).toContain(`--${s.flag} N`);
      expect(help).toContain(`Default: ${s.default}.`);
    }
  });

  it('defaults apply when no flag is given, and flags reach the stack and the NAT', () => {
    expect(serveArgs([]).limits).toEqual(DEFAULT_LIMITS);
    const c = serveArgs(['--max-tcp-flows', '20', '--max-half-open', '8', '--max-udp-flows', '16', '--total-buffer-bytes', '1048576', '--max-fragment-datagrams', '4', '--dns-max-in-flight', '3']);
    expect(limitsOf(c).maxTcpFlows).toBe(20);
    const stack = stackConfigFor(c);
    expect(stack.tcp.maxHeldSyns).toBe(8);
    expect(stack.fragments.maxDatagrams).toBe(4);
    // The stack's own connection bound is never below its default (port-forward connections live there too).
    expect(stack.tcp.maxConnections).toBeGreaterThanOrEqual(16_384);
    expect(stack.tcp.maxTimeWait).toBe(65_536);
    expect(stackConfigFor(serveArgs(['--max-time-wait', '100'])).tcp.maxTimeWait).toBe(100);
    expect(() => serveArgs(['--max-time-wait', '0'])).toThrow(/--max-time-wait/);
    const nat = natOptionsFor(c);
    expect(nat).toMatchObject({ maxTcpFlows: 20, maxUdpFlows: 16, totalBufferBytes: 1_048_576, dnsMaxInFlight: 3 });
  });

  it('a value out of bounds is a ConfigError naming the flag', () => {
    expect(() => serveArgs(['--max-tcp-flows', '0'])).toThrow(ConfigError);
    expect(() => serveArgs(['--max-tcp-flows', '0'])).toThrow(/--max-tcp-flows: must be an integer 1\.\./);
    expect(() => serveArgs(['--api-max-body-bytes', '12k'])).toThrow(/--api-max-body-bytes/);
    expect(parseLimits((f) => (f === 'max-udp-flows' ? { text: '-1', label: 'x.json: "max-udp-flows"' } : undefined))).toMatch(/^x\.json: "max-udp-flows"/);
  });
});

describe('RefusalLog', () => {
  afterEach(() => vi.useRealTimers());

  it('logs the first refusal at once, then one summary per interval however many follow', () => {
    vi.useFakeTimers();
    const { log, lines } = captureLogger('info');
    const r = new RefusalLog(log, 1000);
    for (let i = 0; i < 10_000; i++) r.refused('tcpFlows', { n: i });
    expect(r.count('tcpFlows')).toBe(10_000);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ msg: 'limit reached: refusing new work', limit: 'tcpFlows', n: 0 });
    vi.advanceTimersByTime(1000);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({ limit: 'tcpFlows', refused: 9_999, refusedTotal: 10_000 });
    // A quiet interval writes nothing, and the next refusal is logged at once again.
    vi.advanceTimersByTime(5000);
    expect(lines).toHaveLength(2);
    r.refused('tcpFlows');
    expect(lines).toHaveLength(3);
    // Limits are independent.
    r.refused('udpFlows');
    expect(lines).toHaveLength(4);
    r.close();
  });
});

class FakeFlow implements BudgetMember {
  resumed = 0;
  constructor(public bytes: number) {}
  bufferedBytes(): number {
    return this.bytes;
  }
  resumeFromBudget(): void {
    this.resumed++;
  }
}

describe('BufferBudget', () => {
  afterEach(() => vi.useRealTimers());

  it('pauses only flows above their fair share once the total passes the cap, and resumes them as it drains', () => {
    vi.useFakeTimers();
    let now = 0;
    const budget = new BufferBudget(1000, () => now);
    const hog = new FakeFlow(0);
    const small = new FakeFlow(0);
    budget.add(hog);
    budget.add(small);
    hog.bytes = 300;
    expect(budget.charge(hog, 300)).toBe(false);
    now += 100;
    hog.bytes = 1100;
    expect(budget.charge(hog, 800)).toBe(true); // total 1100 >= 1000 and hog holds more than 1000 / 2
    // A flow under its fair share still takes data while the budget is exhausted: one hog cannot starve the rest.
    small.bytes = 100;
    expect(budget.charge(small, 100)).toBe(false);
    expect(budget.stats()).toMatchObject({ max: 1000, current: 1200, pausedFlows: 1, pauses: 1, peak: 1200 });
    // Still above 3/4 of the cap: the hog stays paused.
    vi.advanceTimersByTime(200);
    expect(hog.resumed).toBe(0);
    // The guest read: below 750 in total, everyone resumes.
    hog.bytes = 500;
    vi.advanceTimersByTime(60);
    expect(hog.resumed).toBe(1);
    expect(budget.stats().pausedFlows).toBe(0);
    budget.close();
  });

  it('receive-window growth is granted only while buffered + granted + growth fits the cap and the grants half of it; a grant is held until its flow goes', () => {
    let now = 0;
    const budget = new BufferBudget(1000, () => (now += 100));
    const a = new FakeFlow(0);
    const b = new FakeFlow(0);
    budget.add(a);
    budget.add(b);
    expect(budget.growWindow(a, 300)).toBe(true);
    expect(budget.growWindow(b, 300)).toBe(false); // grants would pass half the cap
    expect(budget.growWindow(b, 200)).toBe(true);
    expect(budget.stats().windowBytes).toBe(500);
    budget.remove(a);
    expect(budget.stats().windowBytes).toBe(200);
    b.bytes = 700; // buffered 700 + granted 200 + 200 > 1000
    expect(budget.growWindow(b, 200)).toBe(false);
    expect(budget.growWindow(b, 100)).toBe(true);
    // A flow that is gone gets nothing (its grant would never be released).
    expect(budget.growWindow(a, 1)).toBe(false);
    expect(budget.stats().windowBytes).toBe(300);
    budget.close();
  });

  it("bytes already received into a flow's window count in the total but do not decide whether it is paused (pausing cannot shed them)", () => {
    vi.useFakeTimers();
    const budget = new BufferBudget(1000, () => 0);
    const ring = Object.assign(new FakeFlow(1100), { received: 1100, receivedBytes(): number { return this.received; } });
    budget.add(ring);
    budget.add(new FakeFlow(0)); // two flows: a fair share of 500
    expect(budget.charge(ring, 0)).toBe(false); // total 1100 is over the cap, but all of it is in the ring
    expect(budget.stats().current).toBe(1100);
    ring.bytes = 1700;
    expect(budget.charge(ring, 600)).toBe(true); // 600 of its own beyond the ring: paused
    // Its host drains; the ring still holds 1100 (the total stays over 3/4 of the cap): resumed all the same.
    ring.bytes = 1100;
    vi.advanceTimersByTime(60);
    expect(ring.resumed).toBe(1);
    budget.close();
  });

  it('a paused flow that goes away is forgotten (never resumed)', () => {
    vi.useFakeTimers();
    const budget = new BufferBudget(100, () => 0);
    const f = new FakeFlow(200);
    budget.add(f);
    expect(budget.charge(f, 200)).toBe(true);
    budget.remove(f);
    vi.advanceTimersByTime(1000);
    expect(f.resumed).toBe(0);
    expect(budget.stats()).toMatchObject({ current: 0, pausedFlows: 0 });
  });
});

describe('ApiServer body limit', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('answers 413 past --api-max-body-bytes, counts it, and still serves the next request', async () => {
    dir = mkdtempSync(join(tmpdir(), 'mz9l-api-'));
    const socketPath = join(dir, 'api.sock');
    const { log } = captureLogger();
    const refused: unknown[] = [];
    const api = new ApiServer(
      { forwards: new FakeForwards(), leases: () => [], stats: () => ({}), guestConnected: () => false },
      log,
      { maxBodyBytes: 2048, onTooLarge: (f) => refused.push(f) },
    );
    await api.listen(socketPath);
    try {
      const post = (body: string): Promise<number> =>
        new Promise((resolve, reject) => {
          const req = request({ socketPath, method: 'POST', path: '/services/forwarder/expose', headers: { 'content-type': 'application/json' } }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode!));
          });
          req.on('error', reject);
          req.end(body);
        });
      // Just over the bound, sent chunked (no Content-Length): the reader counts and stops.
      expect(await post('x'.repeat(2049))).toBe(413);
      expect(api.tooLarge).toBe(1);
      expect(refused).toHaveLength(1);
      // A small body is read (and judged on its content: 400 for this one).
      expect(await post('{"local":')).toBe(400);
      expect(api.tooLarge).toBe(1);
    } finally {
      await api.close();
    }
  });
});
