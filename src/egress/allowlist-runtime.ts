/**
 * The allowlist as it runs: one object that owns both walls built from the
 * same rules, so they always agree —
 *   - the gateway's DNS (AllowlistDns over the zone table), and
 *   - the egress policy for flows (Egress over sni/policy.ts), with the pins
 *     (addresses Moat resolved per name) that both walls feed and read.
 *
 * start() resolves every allowed host first (fail closed, nothing partial).
 * reload() does the same off to the side and swaps DNS table, pins and
 * policy together only when everything resolved; on any failure nothing
 * changes and the caller gets the error. Reloads are serialised.
 */
import { PinTable } from '../../sni/pins.js';
import { EgressPolicy } from '../../sni/policy.js';
import { parseRules, type Rule } from '../../dns/rules.js';
import type { Resolver, Timers } from '../../dns/preresolve.js';
import { DEFAULT_LIVE_BUDGET, LiveLookupBudget } from '../../dns/live-budget.js';
import type { LiveLookupSettings } from '../allowlist/live-lookup-flags.js';
import type { SinkholeMode, ZoneTable } from '../../dns/zones.js';
import type { DnsDecision } from '../../dns/responder.js';
import { AllowlistDns } from '../allowlist/dns.js';
import { realTimers } from '../allowlist/resolver.js';
import { buildAllowlistTable } from '../allowlist/zones.js';
import type { Logger, LogStream } from '../log.js';
import type { LogBudgetLimits } from '../log-budget.js';
import { DecisionLog, DEFAULT_DECISION_LOG_LIMITS } from './decision-log.js';
import { DialTargets } from './dial-targets.js';
import { askMark, Egress, type EgressOptions } from './egress.js';
import { AskGate, type AskCallback, type AskSettings } from './ask-gate.js';
import type { AskOutcome } from './ask-table.js';
import { ByteBudgets, type BudgetDirection, type BudgetSpec } from '../traffic/byte-budgets.js';
import { matchBudgetRules } from '../traffic/flags.js';

export interface AllowlistRuntimeOptions {
  rules: readonly Rule[];
  resolver: Resolver;
  timers?: Timers;
  gatewayIpv4: string;
  hostAliasIpv4: string;
  sinkhole: SinkholeMode;
  guestSubnet: { network: string; prefix: number };
  /** --admit-resolved: ranges resolved answers may lie in for hostname-authorised dials. */
  admitResolved: readonly string[];
  /** --allow-host-alias */
  hostAliasExempt: boolean;
  allowLinkLocal: boolean;
  egress: EgressOptions;
  /** The --decision-log file, if any. */
  decisionSink?: LogStream;
  /** That file's global budget (--log-lines-per-sec ...); DEFAULT_LOG_BUDGET when absent. */
  decisionBudget?: LogBudgetLimits;
  /** The `moat host` network (every decision record names it). */
  network?: string;
  /** Monotonic milliseconds, for pin expiry and log rate limits. */
  now: () => number;
  signal?: AbortSignal;
  /** The live-lookup budget (--live-lookup-*); DEFAULT_LIVE_BUDGET, enabled, when absent. */
  liveLookups?: LiveLookupSettings;
  /** Byte budgets per rule (--budget); each must name one of `rules`. */
  budgets?: readonly BudgetSpec[];
  /** What budgets count (--budget-direction): 'egress' when absent. */
  budgetDirection?: BudgetDirection;
  /** Ask mode (--on-unlisted ask): requests for unlisted names wait for a verdict; absent: refused at once. */
  ask?: { settings: AskSettings; callback?: AskCallback };
  /** The guest network carries IPv6 (issue 19); absent or null: IPv4 only, as before. */
  ipv6?: AllowlistIpv6Options | null;
}

/**
 * What the allowlist needs to know of a guest network with IPv6. With it:
 * allowed hosts are pre-resolved A and AAAA and both are pinned; the gateway
 * answers AAAA (sinkhole `::`) and passes ipv6hint cut to pins; dial-by-name
 * looks up both families; the policy knows the guest's prefix (its answers
 * are 'guest-subnet' for the rebinding guard) and the IPv6 host alias.
 */
export interface AllowlistIpv6Options {
  /** The guest's own IPv6 prefix (its ULA, e.g. fd00:6d6f:6174::/64). */
  guestPrefix: { network: string; prefix: number };
  /** The gateway's IPv6 address: gateway.containers.internal's AAAA. */
  gatewayIpv6?: string;
  /** The IPv6 host alias: host.containers.internal's AAAA; the policy treats it as it treats the IPv4 alias. */
  hostAliasIpv6?: string;
}

/** Live lookups of names below `*.domain` for dial-by-name, at once. */
const MAX_DIAL_LOOKUPS = 64;

export interface ReloadResult {
  rules: string[];
  zones: string[];
  budgets: BudgetSpec[];
}

/** A budget whose rule is not in the allowlist: it would count nothing, silently. */
export class BudgetRuleError extends Error {
  constructor(readonly rules: readonly string[]) {
    super(`budget names no allow rule: ${rules.map((r) => `"${r}"`).join(', ')} (a budget's RULE must be one of the --allow rules, written the same way)`);
    this.name = 'BudgetRuleError';
  }
}

/** The budgets named by the allow rules they mean (their text, as decisions carry it); throws BudgetRuleError naming every budget whose rule is not one of `rules`. */
export function checkBudgetRules(budgets: readonly BudgetSpec[], rules: readonly Rule[]): BudgetSpec[] {
  const m = matchBudgetRules(budgets, rules);
  if ('missing' in m) throw new BudgetRuleError(m.missing);
  return m.budgets;
}

export class AllowlistRuntime {
  private reloading: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly o: AllowlistRuntimeOptions,
    readonly dns: AllowlistDns,
    readonly egress: Egress,
    private rules: readonly Rule[],
    private readonly log: Logger,
    /** One budget for every live lookup this runtime makes: its DNS, dial-by-name, proxy targets. */
    readonly liveBudget: LiveLookupBudget,
  ) {}

  static async start(o: AllowlistRuntimeOptions, log: Logger): Promise<AllowlistRuntime> {
    const policy = compilePolicy(o, o.rules); // an invalid --admit-resolved fails before any lookup
    const initialBudgets = checkBudgetRules(o.budgets ?? [], o.rules);
    warnBroadRules(policy, log);
    const table = await buildTable(o, o.rules, o.signal);
    const pins = new PinTable(o.now);
    seedPins(pins, table);
    const decisions = new DecisionLog(
      { ...DEFAULT_DECISION_LOG_LIMITS, now: o.now, ...(o.decisionSink ? { sink: o.decisionSink } : {}), ...(o.decisionBudget ? { budget: o.decisionBudget } : {}), ...(o.network !== undefined ? { network: o.network } : {}) },
      log.child({ component: 'egress' }),
    );
    const liveBudget = new LiveLookupBudget({ ...(o.liveLookups ?? { ...DEFAULT_LIVE_BUDGET, enabled: true }), now: o.now });
    const wildcards = o.rules.filter((r) => r.kind === 'wildcard').map((r) => r.text);
    if (!liveBudget.enabled && wildcards.length > 0) {
      log.warn('live lookups are off: names below these wildcards are answered only when a rule names them exactly', { rules: wildcards });
    }
    // DNS for a name is refused when every name rule covering it has a spent byte budget (no rule left to allow a flow to it).
    let runtime: AllowlistRuntime | undefined;
    const spentRuleFor = (name: string): string | null => (runtime === undefined ? null : runtime.spentRuleFor(name));
    const targets = new DialTargets({ resolver: o.resolver, timers: o.timers ?? realTimers, pins, maxLookups: MAX_DIAL_LOOKUPS, budget: liveBudget, ipv6: o.ipv6 != null });
    const budgets = new ByteBudgets(initialBudgets, o.budgetDirection ?? 'egress', o.now, o.egress.mode === 'audit');
    const egress = new Egress(policy, pins, decisions, targets, o.egress, budgets);
    // allow-name adds its rule through the runtime built below (the gate needs it, it needs the gate).
    let self: AllowlistRuntime | undefined;
    const ask =
      o.ask === undefined
        ? undefined
        : new AskGate(o.ask.settings, { addHost: async (rule) => void (await self!.addHost(rule)), now: o.now, ...(o.ask.callback ? { callback: o.ask.callback } : {}) }, log.child({ component: 'ask' }));
    egress.ask = ask;
    const dns = new AllowlistDns(
      {
        table,
        resolver: o.resolver,
        ...(o.timers ? { timers: o.timers } : {}),
        decisionId: () => decisions.nextId(),
        audit: o.egress.mode === 'audit',
        budget: liveBudget,
        pinned: (name) => pins.addressesFor(name),
        refuseName: (name) => {
          const rule = spentRuleFor(name);
          return rule === null ? null : `byte budget of rule ${rule} is spent`;
        },
        ipv6: o.ipv6 != null,
        ...(ask ? { ask } : {}),
        onDecision: (d, asked) => {
          // The responder clamps live TTLs (at least 5 s), so a pin always outlives the answer's use.
          if (d.addresses.length > 0 && d.ttl !== null && (d.outcome === 'live' || d.outcome === 'audit-live')) {
            pins.pin(d.name, d.addresses, d.ttl * 1000);
          }
          if (asked !== undefined) recordAsked(d, asked);
          else if (d.outcome === 'budget' && d.id !== undefined) {
            decisions.record({ id: d.id, decision: 'blocked', reason: 'budget', rule: spentRuleFor(d.name), proto: 'dns', dst: d.name, name: d.name, via: 'dns', detail: d.type });
          } else if ((d.outcome === 'sinkholed' || d.outcome === 'live-off' || d.outcome === 'audit-live') && d.id !== undefined) {
            const decision = d.outcome === 'audit-live' ? 'would-block' : 'blocked';
            const reason = d.outcome === 'live-off' ? 'live-off' : 'dns-sinkhole';
            decisions.record({ id: d.id, decision, reason, rule: null, proto: 'dns', dst: d.name, name: d.name, via: 'dns', detail: d.type });
          } else if (d.outcome === 'allowed' || d.outcome === 'live') {
            // What the guest looked up is part of what a job needs (moat learn reads it).
            const zone = d.zone === null ? null : d.zone.slice(0, -1);
            decisions.record({ id: decisions.nextId(), decision: 'allowed', reason: d.outcome === 'live' ? 'dns-live' : 'dns-allowed', rule: zone, proto: 'dns', dst: d.name, name: d.name, via: 'dns', detail: d.type });
          }
        },
      },
      log.child({ component: 'dns' }),
    );
    /** A query that waited on ask mode: one record, marked asked, whatever the verdict. */
    const recordAsked = (d: DnsDecision, asked: AskOutcome): void => {
      const base = { proto: 'dns' as const, dst: d.name, name: d.name, via: 'dns', detail: d.type, ...askMark(asked) };
      if (!asked.allow) decisions.record({ id: d.id ?? decisions.nextId(), decision: 'blocked', reason: asked.reason, rule: null, ...base });
      else if (d.allowed || d.outcome === 'audit-live') {
        const reason = asked.verdict === 'allow-once' ? 'asked-once' : 'dns-allowed';
        decisions.record({ id: decisions.nextId(), decision: 'allowed', reason, rule: d.zone === null || asked.verdict === 'allow-once' ? null : d.zone.slice(0, -1), ...base });
      } else decisions.record({ id: d.id ?? decisions.nextId(), decision: 'blocked', reason: d.outcome === 'sinkholed' ? 'dns-sinkhole' : d.outcome, rule: null, ...base });
    };
    runtime = new AllowlistRuntime(o, dns, egress, o.rules, log, liveBudget);
    self = runtime;
    return runtime;
  }

  /**
   * The rule to name when DNS for `name` is refused for budgets: the first
   * host or wildcard rule covering the name, when every such rule has a
   * spent budget (audit mode never refuses); null otherwise.
   */
  spentRuleFor(name: string): string | null {
    const budgets = this.egress.budgets;
    if (budgets === undefined || budgets.size === 0 || this.egress.audit) return null;
    let first: string | null = null;
    for (const r of this.rules) {
      const covers = r.kind === 'host' ? r.host === name : r.kind === 'wildcard' ? name.endsWith(`.${r.domain}`) : false;
      if (!covers) continue;
      if (!budgets.spent(r.text)) return null;
      first ??= r.text;
    }
    return first;
  }

  /** Ask mode's gate (undefined unless --on-unlisted ask). */
  get ask(): AskGate | undefined {
    return this.egress.ask;
  }

  get ruleTexts(): string[] {
    return this.rules.map((r) => r.text);
  }

  get zoneTable(): ZoneTable {
    return this.dns.responder.zoneTable;
  }

  /** The byte budgets (--budget), reloaded with the rules. */
  get budgets(): ByteBudgets {
    return this.egress.budgets!;
  }

  /**
   * Replace the rules: parse (RuleSetError names every bad rule), resolve
   * (PreresolveError names every host that failed), then swap. Throws
   * without changing anything on any failure. `budgets`: the new byte
   * budgets; absent, the current ones are kept (and must still name rules:
   * a budget is never dropped silently by a reload that forgot it).
   */
  reload(texts: readonly string[], budgets?: readonly BudgetSpec[]): Promise<ReloadResult> {
    return this.update(() => texts, budgets);
  }

  /**
   * Ask mode's allow-name: `name` becomes an exact host rule, resolved and
   * pinned first, through the same serialised path as reload(): the rules it
   * adds to are the ones current when its turn comes, so a reload racing it
   * is neither lost nor undone. A name a rule already names exactly changes
   * nothing. The byte budgets stay as they are.
   */
  addHost(name: string): Promise<ReloadResult> {
    return this.update((current) => (current.includes(name) ? current : [...current, name]));
  }

  private update(next: (current: readonly string[]) => readonly string[], budgets?: readonly BudgetSpec[]): Promise<ReloadResult> {
    const run = this.reloading.then(async () => {
      const texts = next(this.rules.map((r) => r.text));
      const rules = parseRules(texts);
      if (rules.length === 0) throw new EmptyAllowlistError();
      const nextBudgets = checkBudgetRules(budgets ?? this.budgets.specs(), rules);
      const policy = compilePolicy(this.o, rules);
      const table = await buildTable(this.o, rules, undefined);
      // Nothing above changed any state; from here on everything swaps at once.
      this.dns.setTable(table);
      this.egress.pins.clear();
      seedPins(this.egress.pins, table);
      this.egress.setPolicy(policy);
      this.budgets.replace(nextBudgets);
      this.rules = rules;
      warnBroadRules(policy, this.log);
      // Ask mode: requests waiting on a name the new rules cover need no answer any more.
      this.egress.ask?.releaseCovered((name) => coversName(table, name));
      return { rules: rules.map((r) => r.text), zones: zoneNames(table), budgets: this.budgets.specs() };
    });
    this.reloading = run.catch(() => undefined);
    return run;
  }

  async close(): Promise<void> {
    this.egress.ask?.close(); // every waiter refused (ask-closed) before the DNS and flows go
    await this.dns.close();
    this.egress.decisions.close(); // the decision log's last "log lines suppressed" summary
  }
}

/** An empty rule set would mean "allow everything": not something a reload should do by accident. */
export class EmptyAllowlistError extends Error {
  constructor() {
    super('an empty allowlist would allow everything; give at least one rule (restart without --allow to turn the allowlist off)');
    this.name = 'EmptyAllowlistError';
  }
}

export function zoneNames(table: ZoneTable): string[] {
  return table.zones.map((z) => (z.name === '' ? '.' : `${z.name}.`));
}

function compilePolicy(o: AllowlistRuntimeOptions, rules: readonly Rule[]): EgressPolicy {
  return EgressPolicy.compile({
    rules,
    admitResolved: o.admitResolved,
    guestSubnet: o.guestSubnet,
    hostAlias: o.hostAliasIpv4,
    hostAliasExempt: o.hostAliasExempt,
    allowLinkLocal: o.allowLinkLocal,
    guestPrefix6: o.ipv6?.guestPrefix ?? null,
    hostAlias6: o.ipv6?.hostAliasIpv6 ?? null,
  });
}

function buildTable(o: AllowlistRuntimeOptions, rules: readonly Rule[], signal: AbortSignal | undefined): Promise<ZoneTable> {
  return buildAllowlistTable({
    rules,
    resolver: o.resolver,
    gatewayIpv4: o.gatewayIpv4,
    hostAliasIpv4: o.hostAliasIpv4,
    sinkhole: o.sinkhole,
    ...(o.timers ? { timers: o.timers } : {}),
    ...(signal ? { signal } : {}),
    ...(o.ipv6 != null ? { ipv6: { ...(o.ipv6.gatewayIpv6 ? { gatewayIpv6: o.ipv6.gatewayIpv6 } : {}), ...(o.ipv6.hostAliasIpv6 ? { hostAliasIpv6: o.ipv6.hostAliasIpv6 } : {}) } } : {}),
  });
}

/**
 * A rule like `0.0.0.0/0:80` or `192.168.0.0/16` contains the host alias or
 * 169.254/16 but does not open them (sni/policy.ts, steps 1-2): say so, once
 * per rule, so that nobody believes they are open (or closed by accident).
 */
function warnBroadRules(policy: EgressPolicy, log: Logger): void {
  for (const w of policy.warnings()) log.warn('allow rule contains a range it does not open', { rule: w.rule, contains: w.contains, detail: w.message });
}

/** An exact host's pre-resolved addresses (A, and AAAA when the guest has IPv6: the table holds none otherwise) are where its name leads for as long as this allowlist lives. */
function seedPins(pins: PinTable, table: ZoneTable): void {
  for (const z of table.zones) {
    if (z.kind !== 'allowed' || z.apex === null) continue;
    const addresses = [...z.apex.a, ...z.apex.aaaa];
    if (addresses.length > 0) pins.pin(z.name, addresses, Infinity);
  }
}

/** Does the table answer `name` from an allowed (or built-in) zone, as a rule naming it or a wildcard above it would? */
function coversName(table: ZoneTable, name: string): boolean {
  const z = table.match(name);
  return z.kind !== 'root' && !(z.name === name && z.apex === null && z.kind === 'allowed');
}
