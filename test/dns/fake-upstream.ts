/**
 * Test doubles for dns/: virtual time that advances itself when nothing else
 * can happen, and a scriptable fake upstream resolver.
 */
import type { ResolvedAddresses, Resolver, ServiceRecords, ServiceType, Timers } from '../../dns/preresolve.js';
import { NXDOMAIN_CODE } from '../../dns/preresolve.js';

interface Pending {
  at: number;
  seq: number;
  fire: () => void;
}

/**
 * Virtual clock. `run(promise)` lets microtasks and I/O callbacks settle,
 * then jumps to the earliest pending sleep and fires it, until the promise
 * settles. Elapsed virtual time is exact, so tests can assert the schedule.
 */
export class VirtualTimers implements Timers {
  private t = 0;
  private seq = 0;
  private pending: Pending[] = [];

  now(): number {
    return this.t;
  }

  sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason);
      const entry: Pending = {
        at: this.t + ms,
        seq: this.seq++,
        fire: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        this.pending = this.pending.filter((p) => p !== entry);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.pending.push(entry);
    });
  }

  /** Timers still pending (a leak check: attempts must release their deadline). */
  get pendingCount(): number {
    return this.pending.length;
  }

  async run<T>(p: Promise<T>): Promise<T> {
    let settled = false;
    p.then(
      () => (settled = true),
      () => (settled = true),
    );
    for (;;) {
      await new Promise((r) => setImmediate(r));
      if (settled) return p;
      if (this.pending.length === 0) throw new Error('deadlock: promise pending and no timer left');
      this.pending.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.pending.shift()!;
      this.t = next.at;
      next.fire();
    }
  }
}

/** The service's real timers: the one test that needs wall-clock time uses them. */
export { realTimers } from '../../src/allowlist/resolver.js';

export function nxdomain(): Error {
  return Object.assign(new Error('queryA ENOTFOUND'), { code: NXDOMAIN_CODE });
}

/** One scripted step: an answer, a failure, or never answering. */
export type Step =
  | { answer: ResolvedAddresses; afterMs?: number }
  | { fail: Error; afterMs?: number }
  | { hang: true };

/**
 * A resolver whose behaviour per (family, name) is a script of steps; the
 * last step repeats. Unscripted names are NXDOMAIN. Counts every call.
 */
export class FakeResolver implements Resolver {
  readonly calls: string[] = [];
  private readonly scripts = new Map<string, Step[]>();

  constructor(private readonly timers: Timers) {}

  script(family: 'A' | 'AAAA', name: string, ...steps: Step[]): this {
    this.scripts.set(`${family} ${name}`, steps);
    return this;
  }

  /** Shorthand: A records (and optionally AAAA) that always answer. */
  host(name: string, a: string[], aaaa: string[] = [], ttl = 300): this {
    this.script('A', name, { answer: { addresses: a, ttl } });
    return this.script('AAAA', name, { answer: { addresses: aaaa, ttl } });
  }

  /** HTTPS/SVCB records (raw RDATA) that `name` always answers with; unscripted names are NXDOMAIN. */
  service(type: ServiceType, name: string, records: Uint8Array[], ttl = 300): this {
    this.services.set(`${type} ${name}`, { records, ttl });
    return this;
  }

  private readonly services = new Map<string, ServiceRecords>();

  async resolveService(name: string, type: ServiceType, signal: AbortSignal): Promise<ServiceRecords> {
    signal.throwIfAborted();
    this.calls.push(`${type} ${name}`);
    const r = this.services.get(`${type} ${name}`);
    if (r === undefined) throw nxdomain();
    return r;
  }

  callsFor(family: 'A' | 'AAAA', name: string): number {
    return this.calls.filter((c) => c === `${family} ${name}`).length;
  }

  resolve4(name: string, signal: AbortSignal): Promise<ResolvedAddresses> {
    return this.play('A', name, signal);
  }

  resolve6(name: string, signal: AbortSignal): Promise<ResolvedAddresses> {
    return this.play('AAAA', name, signal);
  }

  private async play(family: 'A' | 'AAAA', name: string, signal: AbortSignal): Promise<ResolvedAddresses> {
    const key = `${family} ${name}`;
    const n = this.callsFor(family, name);
    this.calls.push(key);
    const steps = this.scripts.get(key);
    if (steps === undefined) throw nxdomain();
    const step = steps[Math.min(n, steps.length - 1)]!;
    // A hanging upstream ignores the signal on purpose: the deadline must cut it anyway.
    if ('hang' in step) return new Promise<never>(() => {});
    if (step.afterMs) await this.timers.sleep(step.afterMs, signal);
    if ('fail' in step) throw step.fail;
    return step.answer;
  }
}
