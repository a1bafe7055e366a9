/**
 * `moat learn --budgets`: byte budgets for learned rules, from the flow lines
 * of a decision log (src/egress/decision-log.ts flowClosed: `{"reason":
 * "flow-closed", proto, dst, name, bytesUp, bytesDown, ...}`, one per flow
 * that moved bytes). Pure: no I/O.
 *
 * Each flow is charged to the learned rule the policy would allow it by,
 * exactly as `moat serve` would charge it (sni/policy.ts: by its name when
 * it has one, else by its address), so the budgets name the rules printed
 * with them. The proposal is what the rule's flows moved in the whole log
 * (egress by default, both directions with direction 'both') times
 * `margin`, rounded up to a whole KiB, MiB or GiB, and at least MIN_BUDGET;
 * no period: the log is taken as one run of the job. A rule no flow line
 * names gets no budget (a note says so).
 */
import { parseRules } from '../../dns/rules.js';
import { EgressPolicy } from '../../sni/policy.js';
import { parseIpv4 } from '../../sni/ranges.js';

export interface FlowBytes {
  proto: 'tcp' | 'udp' | 'quic';
  /** "ip:port" (moat serve) or "name:port" (moat proxy targets). */
  dst: string;
  name: string | null;
  bytesUp: number;
  bytesDown: number;
}

export interface BudgetProposal {
  /** `RULE=SIZE`, in the order of the rules. */
  budgets: string[];
  notes: string[];
}

export const DEFAULT_BUDGET_MARGIN = 2;
/** Below this a budget would cut a retry of the same job for a few packets of noise. */
export const MIN_BUDGET = 64 * 1024;

const PROTOS = new Set(['tcp', 'udp', 'quic']);

/** One line → a flow's bytes, or null when the line is not a flow line. */
export function parseFlowBytesLine(line: string): FlowBytes | null {
  const text = line.trim();
  if (!text.startsWith('{') || !text.includes('"flow-closed"')) return null;
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof o !== 'object' || o === null) return null;
  const r = o as Record<string, unknown>;
  if (r['reason'] !== 'flow-closed' || typeof r['proto'] !== 'string' || !PROTOS.has(r['proto']) || typeof r['dst'] !== 'string') return null;
  const up = r['bytesUp'];
  const down = r['bytesDown'];
  if (typeof up !== 'number' || typeof down !== 'number' || !(up >= 0) || !(down >= 0)) return null;
  const name = typeof r['name'] === 'string' ? r['name'] : null;
  return { proto: r['proto'] as FlowBytes['proto'], dst: r['dst'], name, bytesUp: up, bytesDown: down };
}

export function readFlowBytes(text: string): FlowBytes[] {
  const out: FlowBytes[] = [];
  for (const line of text.split('\n')) {
    const f = parseFlowBytesLine(line);
    if (f !== null) out.push(f);
  }
  return out;
}

/** Rounds up to a whole KiB, MiB or GiB and writes it in that unit ("3MiB"). */
export function roundedSize(bytes: number): string {
  const n = Math.max(MIN_BUDGET, Math.ceil(bytes));
  for (const [unit, mult] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (n >= mult || unit === 'KiB') return `${Math.ceil(n / mult)}${unit}`;
  }
  return `${n}`;
}

export function proposeBudgets(
  rules: readonly string[],
  flows: Iterable<FlowBytes>,
  opts: { margin?: number; direction?: 'egress' | 'both'; hostAlias: string },
): BudgetProposal {
  const margin = opts.margin ?? DEFAULT_BUDGET_MARGIN;
  const policy = EgressPolicy.compile({
    rules: parseRules(rules),
    admitResolved: [],
    guestSubnet: { network: '192.168.127.0', prefix: 24 },
    hostAlias: opts.hostAlias,
    hostAliasExempt: false,
    allowLinkLocal: false,
  });
  const noPins = { namesFor: (): readonly string[] => [] };
  const used = new Map<string, number>();
  let unmatched = 0;
  for (const f of flows) {
    const colon = f.dst.lastIndexOf(':');
    const host = f.dst.slice(0, colon);
    const port = Number(f.dst.slice(colon + 1));
    const proto = f.proto === 'tcp' ? 'tcp' : 'udp';
    let rule: string | null = null;
    if (f.name !== null) {
      // As the NAT decides a named flow (its peeked name), or the proxy a target named by name.
      const d =
        parseIpv4(host) !== null
          ? policy.decide({ proto, dst: host, port, peeked: { via: f.proto === 'quic' ? 'quic' : 'sni', name: f.name } }, noPins)
          : policy.decideName(proto, f.name, port, 'target');
      if (d.verdict === 'allow') rule = d.rule;
    }
    if (rule === null && parseIpv4(host) !== null) {
      const d = policy.decide({ proto, dst: host, port }, noPins);
      if (d.verdict === 'allow') rule = d.rule;
    }
    if (rule === null) {
      unmatched++;
      continue;
    }
    const bytes = f.bytesUp + (opts.direction === 'both' ? f.bytesDown : 0);
    used.set(rule, (used.get(rule) ?? 0) + bytes);
  }
  const budgets: string[] = [];
  const notes: string[] = [];
  const without: string[] = [];
  for (const r of rules) {
    const n = used.get(r);
    if (n === undefined) without.push(r);
    else budgets.push(`${r}=${roundedSize(n * margin)}`);
  }
  if (without.length > 0) notes.push(`no budget for ${without.length} rule(s) no flow line names (flows that moved no bytes, or a log without flow lines): ${without.join(', ')}`);
  if (unmatched > 0) notes.push(`${unmatched} flow line(s) matched none of the learned rules (refused flows left out, or --refused-only)`);
  return { budgets, notes };
}
