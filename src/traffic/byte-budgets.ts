/**
 * Byte budgets per allow rule (--budget 'RULE=SIZE[/PERIOD]'): how many bytes
 * the flows a rule allowed may move, in total, per period (or for the
 * process lifetime). The rule charged is the one that allowed the flow (the
 * decision's `rule`): a host two rules cover (`api.example.com` and
 * `*.example.com`) is charged to whichever the policy picked for that flow
 * (the exact host first), never to both and never to none.
 *
 * Counted: egress bytes (guest -> world) by default, both directions with
 * direction 'both'. A flow charges as bytes pass (`FlowMeter.charge`) and is
 * given back what may still pass; once a rule's budget is spent, every open
 * flow under it is told (`onSpent`: the NAT resets it, records it) and the
 * policy refuses new flows the rule would allow (Egress: reason 'budget').
 *
 * Periods are fixed windows from the moment the budget was set: at each
 * boundary `used` goes back to 0. A reload keeps `used` (and the window) of
 * every budget whose rule is still budgeted, whatever its new size: a reload
 * is not a way to get a fresh budget, and a smaller size takes effect at once.
 *
 * Counters are plain numbers: exact up to 2^53 bytes (8 PiB); a size is at
 * most 1 PiB (units.ts), and `used` stops growing at the size.
 */
import { formatBytes } from './units.js';

export interface BudgetSpec {
  /** The rule's text, as the allowlist holds it (dns/rules.ts canonical form). */
  rule: string;
  bytes: number;
  /** Milliseconds per window; undefined: the process lifetime. */
  periodMs?: number;
}

export type BudgetDirection = 'egress' | 'both';

export interface BudgetStats {
  rule: string;
  limit: number;
  periodMs: number | null;
  used: number;
  remaining: number;
  spent: boolean;
  /** Milliseconds until `used` goes back to 0 (null: never). */
  resetsInMs: number | null;
  /** Flows open under the rule now. */
  flows: number;
  /** New flows refused because it was spent; open flows reset when it ran out. */
  refused: number;
  reset: number;
}

/** One open flow's account with its rule's budget. */
export interface FlowMeter {
  readonly rule: string;
  /**
   * Charges `n` bytes moving `dir`; returns how many of them may pass. When
   * this charge spends the budget, `ended` is true afterwards: the caller
   * passes what it was given and then ends the flow (the other flows under
   * the rule were told through their onSpent already).
   */
  charge(n: number, dir: 'egress' | 'ingress'): number;
  /** The budget ran out under this flow: nothing more may pass. */
  readonly ended: boolean;
  /** Bytes that may still pass `dir` now (Infinity when that direction is not counted); charge() what did pass. */
  remaining(dir: 'egress' | 'ingress'): number;
  /** The flow ended. */
  close(): void;
}

interface Account {
  spec: BudgetSpec;
  used: number;
  windowStart: number;
  refused: number;
  reset: number;
  readonly flows: Set<MeterImpl>;
}

class MeterImpl implements FlowMeter {
  /** Closed by its flow, or ended by its budget. */
  closed = false;
  ended = false;
  /** Its budget was removed by a reload: counts nothing more. */
  unmetered = false;
  constructor(
    private readonly owner: ByteBudgets,
    readonly rule: string,
    readonly onSpent: () => void,
  ) {}

  charge(n: number, dir: 'egress' | 'ingress'): number {
    if (this.unmetered) return n;
    if (this.ended) return 0;
    return this.closed ? n : this.owner.charge(this, n, dir);
  }

  remaining(dir: 'egress' | 'ingress'): number {
    if (this.unmetered || this.closed) return Infinity;
    if (this.ended) return 0;
    return this.owner.remaining(this, dir);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.owner.release(this);
  }
}

export class ByteBudgets {
  private accounts = new Map<string, Account>();

  constructor(
    specs: readonly BudgetSpec[],
    readonly direction: BudgetDirection,
    private readonly now: () => number,
    /** Audit mode (--mode audit): bytes are counted, nothing is cut (spent rules' new flows are recorded would-block by Egress). */
    private readonly audit = false,
  ) {
    this.replace(specs);
  }

  get size(): number {
    return this.accounts.size;
  }

  /** The budgets as given (for GET /allowlist and reloads). */
  specs(): BudgetSpec[] {
    return [...this.accounts.values()].map((a) => a.spec);
  }

  /**
   * Sets the budgets (start-up, reload). A rule still budgeted keeps its use
   * and window; a rule no longer budgeted loses its account, and its open
   * flows are no longer metered.
   */
  replace(specs: readonly BudgetSpec[]): void {
    const next = new Map<string, Account>();
    const t = this.now();
    for (const spec of specs) {
      const old = this.accounts.get(spec.rule);
      if (old !== undefined) {
        old.spec = spec;
        next.set(spec.rule, old);
      } else {
        next.set(spec.rule, { spec, used: 0, windowStart: t, refused: 0, reset: 0, flows: new Set() });
      }
    }
    for (const [rule, old] of this.accounts) {
      if (next.has(rule)) continue;
      for (const m of old.flows) m.unmetered = true;
    }
    this.accounts = next;
    // A smaller size may already be spent: end the flows under it now.
    if (!this.audit) for (const a of next.values()) if (this.spentNow(a)) this.endFlows(a);
  }

  /** Is `rule`'s budget spent (so a new flow it allows must be refused)? Counts the refusal when `count`. */
  spent(rule: string | null, count = false): boolean {
    if (rule === null) return false;
    const a = this.accounts.get(rule);
    if (a === undefined || !this.spentNow(a)) return false;
    if (count) a.refused++;
    return true;
  }

  /** A meter for a flow `rule` allowed, or undefined when the rule has no budget. `onSpent`: end the flow (the budget ran out under it). */
  open(rule: string | null, onSpent: () => void): FlowMeter | undefined {
    if (rule === null) return undefined;
    const a = this.accounts.get(rule);
    if (a === undefined) return undefined;
    const m = new MeterImpl(this, rule, onSpent);
    a.flows.add(m);
    return m;
  }

  /** @internal (MeterImpl) */
  charge(m: MeterImpl, n: number, dir: 'egress' | 'ingress'): number {
    if (dir === 'ingress' && this.direction === 'egress') return n;
    const a = this.accounts.get(m.rule);
    if (a === undefined || !a.flows.has(m)) return n; // the budget was removed by a reload
    this.roll(a);
    const passed = Math.max(0, Math.min(n, a.spec.bytes - a.used));
    if (this.audit) {
      a.used += n;
      return n;
    }
    a.used += passed;
    if (a.used >= a.spec.bytes) {
      // Spent: this flow passes what it was given and is ended by its caller; every other one now.
      a.flows.delete(m);
      m.ended = true;
      a.reset++;
      this.endFlows(a);
    }
    return passed;
  }

  /** @internal (MeterImpl) */
  remaining(m: MeterImpl, dir: 'egress' | 'ingress'): number {
    if ((dir === 'ingress' && this.direction === 'egress') || this.audit) return Infinity;
    const a = this.accounts.get(m.rule);
    if (a === undefined || !a.flows.has(m)) return Infinity;
    this.roll(a);
    return Math.max(0, a.spec.bytes - a.used);
  }

  /** @internal (MeterImpl) */
  release(m: MeterImpl): void {
    this.accounts.get(m.rule)?.flows.delete(m);
  }

  stats(): BudgetStats[] {
    const t = this.now();
    return [...this.accounts.values()].map((a) => {
      this.roll(a);
      const p = a.spec.periodMs;
      return {
        rule: a.spec.rule,
        limit: a.spec.bytes,
        periodMs: p ?? null,
        used: a.used,
        remaining: Math.max(0, a.spec.bytes - a.used),
        spent: a.used >= a.spec.bytes,
        resetsInMs: p === undefined ? null : a.windowStart + p - t,
        flows: a.flows.size,
        refused: a.refused,
        reset: a.reset,
      };
    });
  }

  /** For logs: "allowed.test=1 MiB/3600s". */
  describe(rule: string): string | undefined {
    const a = this.accounts.get(rule);
    if (a === undefined) return undefined;
    return `${rule}=${formatBytes(a.spec.bytes)}${a.spec.periodMs === undefined ? '' : `/${a.spec.periodMs / 1000}s`}`;
  }

  private spentNow(a: Account): boolean {
    this.roll(a);
    return a.used >= a.spec.bytes;
  }

  /** A new window: `used` back to 0 (whole windows elapsed are skipped). */
  private roll(a: Account): void {
    const p = a.spec.periodMs;
    if (p === undefined) return;
    const t = this.now();
    if (t - a.windowStart < p) return;
    a.windowStart += Math.floor((t - a.windowStart) / p) * p;
    a.used = 0;
  }

  private endFlows(a: Account): void {
    const flows = [...a.flows];
    a.flows.clear();
    for (const m of flows) {
      m.ended = true;
      a.reset++;
      m.onSpent();
    }
  }
}
