/**
 * The flags of rate limits and byte budgets, shared by `moat serve` (per
 * guest) and `moat proxy` (per client address): --rate-egress,
 * --rate-ingress, their bursts, --budget (repeatable), --budget-direction.
 * Structural like src/log-flags.ts: docs in config.ts's FlagDoc shape, and
 * parsers that return an error message naming the flag (config.ts turns it
 * into a ConfigError). The grammar of the values is src/traffic/units.ts.
 */
import { parseRule, parseRules, RuleError, RuleSetError, type Rule } from '../../dns/rules.js';
import type { BudgetDirection, BudgetSpec } from './byte-budgets.js';
import { defaultBurst, type RateLimitSpec } from './rate-limiter.js';
import { parsePeriod, parseRate, parseSize } from './units.js';

export interface TrafficSettings {
  /** Guest (client) bytes towards the world, per guest (per client); undefined: unlimited. */
  rateEgress?: RateLimitSpec;
  /** Bytes from the world towards the guest (client). */
  rateIngress?: RateLimitSpec;
  budgets: BudgetSpec[];
  budgetDirection: BudgetDirection;
}

export const DEFAULT_TRAFFIC: Readonly<TrafficSettings> = Object.freeze({ budgets: [], budgetDirection: 'egress' as BudgetDirection });

type Getter = (flag: string) => { text: string; label: string } | undefined;
type ListGetter = (flag: string) => { items: string[]; label: string };

export const TRAFFIC_FLAG_NAMES: readonly string[] = ['rate-egress', 'rate-egress-burst', 'rate-ingress', 'rate-ingress-burst', 'budget', 'budget-direction'];

/** The flags in config.ts's FlagDoc shape; `who`: "guest" (serve) or "client address" (proxy). */
export function trafficFlagDocs(who: 'guest' | 'client address'): { name: string; type: 'string'; multiple?: boolean; value: string; default?: string; help: string; example?: string }[] {
  const per = who === 'guest' ? 'for the guest (all its flows together)' : 'per client address (all its connections together)';
  const paused = 'applied by pausing reads (TCP windows close), never by dropping TCP bytes; UDP datagrams over the rate are dropped and counted (a datagram cannot wait)';
  return [
    {
      name: 'rate-egress',
      type: 'string',
      value: 'RATE',
      default: 'unlimited',
      help: `Bytes towards the world ${per}: a token bucket of RATE with a burst of --rate-egress-burst, ${paused}. RATE is bits (50Mbit, 100kbit/s; SI k M G or binary Ki Mi Gi) or bytes per second (10MiB/s, 500kB/s); a bare number or a unit read two ways (Mb, Mbps, mbit) is an error. /stats: rate.`,
      example: '50Mbit',
    },
    { name: 'rate-egress-burst', type: 'string', value: 'SIZE', default: 'RATE x 100 ms, at least 64KiB', help: 'Bytes that may pass at once before --rate-egress applies (a SIZE: 1MiB, 256KiB).' },
    { name: 'rate-ingress', type: 'string', value: 'RATE', default: 'unlimited', help: `Bytes from the world ${per}, as --rate-egress.`, example: '200Mbit' },
    { name: 'rate-ingress-burst', type: 'string', value: 'SIZE', default: 'RATE x 100 ms, at least 64KiB', help: 'Bytes that may pass at once before --rate-ingress applies.' },
    {
      name: 'budget',
      type: 'string',
      multiple: true,
      value: 'RULE=SIZE[/PERIOD]',
      help: 'With --allow: the bytes the flows one allow rule lets out may move, in total, per PERIOD (s min h d: 1h, 30min, 7d; none: the process lifetime). RULE is one of the --allow rules, written the same way. The rule charged is the one that allowed the flow. When it is spent, its open flows are reset and new ones refused (reason budget, the rule named); DNS for names only spent rules cover is refused. /stats: budgets; GET /allowlist; PUT /allowlist takes "budgets". Repeatable.',
      example: "'api.example.com=50MiB/1h'",
    },
    { name: 'budget-direction', type: 'string', value: 'egress|both', default: 'egress', help: 'What budgets count: egress (guest -> world, the upload an exfiltration needs) or both directions.' },
  ];
}

/**
 * One `RULE=SIZE[/PERIOD]`. The rule is checked here and kept as written;
 * matchBudgetRules() ties it to the allow rule it means.
 */
export function parseBudgetSpec(text: string): BudgetSpec | string {
  const eq = text.lastIndexOf('=');
  if (eq <= 0) return `must be RULE=SIZE[/PERIOD] (e.g. api.example.com=50MiB/1h), got "${text}"`;
  const ruleText = text.slice(0, eq).trim();
  const value = text.slice(eq + 1).trim();
  let rule: string;
  try {
    const rules = parseRules([ruleText]);
    if (rules.length !== 1) return `"${text}": needs one rule before "="`;
    rule = rules[0]!.text.trim();
  } catch (e) {
    return `"${text}": ${e instanceof RuleSetError ? e.message : String(e)}`;
  }
  const slash = value.indexOf('/');
  const bytes = parseSize(slash < 0 ? value : value.slice(0, slash));
  if (typeof bytes === 'string') return `"${text}": size ${bytes}`;
  if (bytes < 1) return `"${text}": the size must be at least 1 byte (to refuse a rule, remove it)`;
  if (slash < 0) return { rule, bytes };
  const periodMs = parsePeriod(value.slice(slash + 1));
  if (typeof periodMs === 'string') return `"${text}": period ${periodMs}`;
  return { rule, bytes, periodMs };
}

/** What a rule means, independent of how it was written (case, IPv6 spelling): its kind, host/domain/network and port. */
export function ruleKey(r: Rule): string {
  const what = r.kind === 'host' ? r.host : r.kind === 'wildcard' ? r.domain : r.kind === 'address' ? r.address : `${r.network}/${r.prefixLength}`;
  return `${r.kind} ${what} ${r.port ?? '*'}`;
}

/** Every budget of a list; an error names the first bad one. Two budgets for one rule are an error. */
export function parseBudgetList(items: readonly string[], label: string): BudgetSpec[] | string {
  const out: BudgetSpec[] = [];
  const keys = new Set<string>();
  for (const item of items) {
    const b = parseBudgetSpec(item);
    if (typeof b === 'string') return `${label}: ${b}`;
    const key = ruleKey(parseRule(b.rule) as Rule);
    if (keys.has(key)) return `${label}: rule "${b.rule}" has two budgets`;
    keys.add(key);
    out.push(b);
  }
  return out;
}

/**
 * Ties each budget to the allow rule it means (same kind, name and port,
 * however written) and names it by that rule's text, which is what the
 * policy's decisions carry. Returns the budgets so named, or the rules of
 * the budgets that name no allow rule.
 */
export function matchBudgetRules(budgets: readonly BudgetSpec[], rules: readonly Rule[]): { budgets: BudgetSpec[] } | { missing: string[] } {
  const byKey = new Map(rules.map((r) => [ruleKey(r), r.text]));
  const out: BudgetSpec[] = [];
  const missing: string[] = [];
  for (const b of budgets) {
    const parsed = parseRule(b.rule);
    const text = parsed instanceof RuleError ? undefined : byKey.get(ruleKey(parsed));
    if (text === undefined) missing.push(b.rule);
    else out.push({ ...b, rule: text });
  }
  return missing.length > 0 ? { missing } : { budgets: out };
}

function parseLimit(rateFlag: string, burstFlag: string, str: Getter): RateLimitSpec | undefined | string {
  const r = str(rateFlag);
  const b = str(burstFlag);
  if (r === undefined) return b === undefined ? undefined : `${b.label}: needs --${rateFlag}`;
  const rate = parseRate(r.text);
  if (typeof rate === 'string') return `${r.label}: ${rate}`;
  if (b === undefined) return { rate, burst: defaultBurst(rate) };
  const burst = parseSize(b.text);
  if (typeof burst === 'string') return `${b.label}: ${burst}`;
  // Less than one host read would wake flows for a few bytes at a time.
  if (burst < 1500) return `${b.label}: must be at least 1500 bytes (one packet), got "${b.text}"`;
  return { rate, burst };
}

/** Reads the traffic flags; an error message naming the flag when one is bad. `rules`: the --allow rules, which each budget must name. */
export function parseTrafficFlags(str: Getter, list: ListGetter, rules: readonly Rule[]): TrafficSettings | string {
  const rateEgress = parseLimit('rate-egress', 'rate-egress-burst', str);
  if (typeof rateEgress === 'string') return rateEgress;
  const rateIngress = parseLimit('rate-ingress', 'rate-ingress-burst', str);
  if (typeof rateIngress === 'string') return rateIngress;
  const b = list('budget');
  const budgets = parseBudgetList(b.items, b.label);
  if (typeof budgets === 'string') return budgets;
  if (budgets.length > 0 && rules.length === 0) return `${b.label}: needs --allow rules (a budget belongs to a rule)`;
  const matched = matchBudgetRules(budgets, rules);
  if ('missing' in matched) return `${b.label}: names no --allow rule: ${matched.missing.map((r) => `"${r}"`).join(', ')} (the RULE must be one of the --allow rules)`;
  const d = str('budget-direction');
  if (d !== undefined && d.text !== 'egress' && d.text !== 'both') return `${d.label}: must be egress or both, got "${d.text}"`;
  return {
    ...(rateEgress !== undefined ? { rateEgress } : {}),
    ...(rateIngress !== undefined ? { rateIngress } : {}),
    budgets: matched.budgets,
    budgetDirection: (d?.text as BudgetDirection | undefined) ?? 'egress',
  };
}
