/**
 * The flags of rate limits and byte budgets, shared by `moat serve` (per
 * guest) and `moat proxy` (per client address): --rate-egress,
 * --rate-ingress, their bursts, --budget (repeatable), --budget-direction.
 * Structural like src/log-flags.ts: docs in config.ts's FlagDoc shape, and
 * parsers that return an error message naming the flag (config.ts turns it
 * into a ConfigError). The grammar of the values is src/traffic/units.ts.
 */
import { parseRules, RuleSetError } from '../../dns/rules.js';
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

/** One `RULE=SIZE[/PERIOD]`; the rule in its canonical text (so that it compares with the allowlist's). */
export function parseBudgetSpec(text: string): BudgetSpec | string {
  const eq = text.lastIndexOf('=');
  if (eq <= 0) return `must be RULE=SIZE[/PERIOD] (e.g. api.example.com=50MiB/1h), got "${text}"`;
  const ruleText = text.slice(0, eq).trim();
  const value = text.slice(eq + 1).trim();
  let rule: string;
  try {
    const rules = parseRules([ruleText]);
    if (rules.length !== 1) return `"${text}": needs one rule before "="`;
    rule = rules[0]!.text;
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

/** Every budget of a list; an error names the first bad one. Two budgets for one rule are an error. */
export function parseBudgetList(items: readonly string[], label: string): BudgetSpec[] | string {
  const out: BudgetSpec[] = [];
  for (const item of items) {
    const b = parseBudgetSpec(item);
    if (typeof b === 'string') return `${label}: ${b}`;
    if (out.some((o) => o.rule === b.rule)) return `${label}: rule "${b.rule}" has two budgets`;
    out.push(b);
  }
  return out;
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

/** Reads the traffic flags; an error message naming the flag when one is bad. `ruleTexts`: the --allow rules, which each budget must name. */
export function parseTrafficFlags(str: Getter, list: ListGetter, ruleTexts: readonly string[]): TrafficSettings | string {
  const rateEgress = parseLimit('rate-egress', 'rate-egress-burst', str);
  if (typeof rateEgress === 'string') return rateEgress;
  const rateIngress = parseLimit('rate-ingress', 'rate-ingress-burst', str);
  if (typeof rateIngress === 'string') return rateIngress;
  const b = list('budget');
  const budgets = parseBudgetList(b.items, b.label);
  if (typeof budgets === 'string') return budgets;
  if (budgets.length > 0 && ruleTexts.length === 0) return `${b.label}: needs --allow rules (a budget belongs to a rule)`;
  const missing = budgets.filter((x) => !ruleTexts.includes(x.rule)).map((x) => `"${x.rule}"`);
  if (missing.length > 0) return `${b.label}: names no --allow rule: ${missing.join(', ')} (write the RULE as one of the --allow rules)`;
  const d = str('budget-direction');
  if (d !== undefined && d.text !== 'egress' && d.text !== 'both') return `${d.label}: must be egress or both, got "${d.text}"`;
  return {
    ...(rateEgress !== undefined ? { rateEgress } : {}),
    ...(rateIngress !== undefined ? { rateIngress } : {}),
    budgets,
    budgetDirection: (d?.text as BudgetDirection | undefined) ?? 'egress',
  };
}
