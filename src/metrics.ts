/**
 * GET /metrics: one network's counters in the Prometheus text exposition
 * format, version 0.0.4 (what every monitoring stack scrapes). Every number
 * comes from the same objects /stats reports, so the two never disagree;
 * docs/metrics.md lists each metric, its type and labels.
 *
 * Label values come only from fixed sets or from reason strings written in
 * Moat's own code, never from what a guest sends (names, addresses): a guest
 * must not be able to grow the scrape or inject text into it. Even so each
 * reason is checked against a strict pattern and each family holds at most
 * MAX_LABEL_VALUES values; anything else is counted under "other".
 */
import type { DecisionRecord } from './egress/decision-log.js';

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** Distinct values of one label in one family; more are summed under "other". */
export const MAX_LABEL_VALUES = 64;
/** What a reason label may look like ("tcp:bad-checksum", "name-not-allowed"). */
const REASON_PATTERN = /^[a-z0-9][a-z0-9:._-]{0,63}$/;
export const OTHER = 'other';

export type MetricType = 'counter' | 'gauge';

export interface Sample {
  readonly labels?: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface MetricFamily {
  /** `moat_...`; counters end in `_total`. */
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  readonly samples: readonly Sample[];
}

/** A label value in the exposition format: backslash, double quote and newline escaped. */
export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** HELP text: backslash and newline escaped (quotes are literal there). */
function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** The families as exposition text: HELP and TYPE first, each family's samples together. */
export function renderExposition(families: readonly MetricFamily[]): string {
  const out: string[] = [];
  for (const f of families) {
    out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = s.labels === undefined ? [] : Object.entries(s.labels);
      const text = labels.length === 0 ? '' : `{${labels.map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(',')}}`;
      out.push(`${f.name}${text} ${formatValue(s.value)}`);
    }
  }
  return out.join('\n') + '\n';
}

/**
 * Counts by a reason label, bounded: a value that does not look like one of
 * Moat's reasons, or any beyond MAX_LABEL_VALUES distinct ones, counts under
 * "other".
 */
export function boundedReasons(counts: Iterable<[string, number]>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [raw, n] of counts) {
    let key = REASON_PATTERN.test(raw) ? raw : OTHER;
    if (!out.has(key) && out.size >= MAX_LABEL_VALUES - 1 && key !== OTHER) key = OTHER;
    out.set(key, (out.get(key) ?? 0) + n);
  }
  return out;
}

/**
 * Egress decisions by verdict and reason, counted as they are recorded
 * (DecisionLog.subscribe): /stats has the verdict totals only. Bounded like
 * every label here.
 */
export class DecisionCounts {
  private readonly counts = new Map<string, number>();

  readonly record = (r: Pick<DecisionRecord, 'decision' | 'reason'>): void => {
    const reason = REASON_PATTERN.test(r.reason) ? r.reason : OTHER;
    let key = `${r.decision}\u0000${reason}`;
    if (!this.counts.has(key) && this.counts.size >= MAX_LABEL_VALUES * 3 - 3) key = `${r.decision}\u0000${OTHER}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  };

  samples(): Sample[] {
    return [...this.counts].map(([k, value]) => {
      const [verdict, reason] = k.split('\u0000') as [string, string];
      return { labels: { verdict, reason }, value };
    });
  }
}

type Obj = Record<string, unknown>;
function obj(x: unknown): Obj {
  return typeof x === 'object' && x !== null ? (x as Obj) : {};
}
function num(x: unknown): number {
  return typeof x === 'number' && Number.isFinite(x) ? x : 0;
}

/**
 * Each limit of /stats.limits as (label, max, current, refused): the field
 * names differ per limit, this table says which is which.
 */
const LIMITS: readonly { label: string; key: string; max: string; current?: string; refused?: string }[] = [
  { label: 'tcp-flows', key: 'tcpFlows', max: 'max', current: 'current', refused: 'refused' },
  { label: 'half-open', key: 'halfOpen', max: 'max', current: 'current', refused: 'refused' },
  { label: 'time-wait', key: 'timeWait', max: 'max', current: 'current' },
  { label: 'udp-flows', key: 'udpFlows', max: 'max', current: 'current', refused: 'refused' },
  { label: 'buffer-bytes', key: 'buffers', max: 'max', current: 'current' },
  { label: 'fragment-bytes', key: 'fragments', max: 'maxBytes', current: 'bytes', refused: 'refused' },
  { label: 'fragment-datagrams', key: 'fragments', max: 'maxDatagrams', current: 'datagrams' },
  { label: 'peek', key: 'peek', max: 'max', current: 'current', refused: 'refused' },
  { label: 'dns-in-flight', key: 'dnsInFlight', max: 'max', current: 'current', refused: 'refused' },
  { label: 'quic', key: 'quic', max: 'max', current: 'current', refused: 'refused' },
  { label: 'icmp-echo', key: 'icmpEcho', max: 'max', current: 'current', refused: 'refused' },
  { label: 'api-body-bytes', key: 'apiBody', max: 'max', refused: 'refused' },
];

/**
 * DNS answers by outcome, disjoint: each query the gateway answered (or
 * dropped) counts in one. Allowlist mode has the responder's outcomes
 * (dns/responder.ts DnsOutcome; "answered" is allowed, built-in names and
 * upstream NXDOMAIN); forward mode has answered, servfail and dropped.
 */
function dnsOutcomes(dns: Obj): Sample[] {
  const o = (outcome: string, value: number): Sample => ({ labels: { outcome }, value });
  if (dns['mode'] === 'forward') {
    return [o('answered', num(dns['answered'])), o('servfail', num(dns['servfail'])), o('dropped', num(dns['malformed']))];
  }
  return [
    o('answered', num(dns['answered']) - num(dns['live']) - num(dns['audited'])),
    o('live', num(dns['live'])),
    o('audit-live', num(dns['audited'])),
    o('sinkholed', num(dns['sinkholed'])),
    o('upstream-failed', num(dns['upstreamFailed'])),
    o('live-budget', num(dns['liveOverBudget'])),
    o('live-off', num(dns['liveOff'])),
    o('overloaded', num(dns['overloaded'])),
    o('refused', num(dns['refused'])),
    o('formerr', num(dns['formerr'])),
    o('notimp', num(dns['notimp'])),
    o('dropped', num(dns['dropped'])),
  ];
}

/** moat_icmp_echo_total's outcomes and their /stats.nat.icmpEcho fields. */
const ICMP_OUTCOMES: Readonly<Record<string, string>> = {
  forwarded: 'forwarded',
  replied: 'replied',
  refused: 'refused',
  'rate-limited': 'rateLimited',
  'outstanding-full': 'outstandingFull',
  unavailable: 'unavailable',
  'send-error': 'sendErrors',
  unmatched: 'unmatched',
};

/** What one network's /metrics is built from. */
export interface NetworkMetricsInput {
  /** The network's /stats object. */
  stats: Obj;
  /** Decisions by verdict and reason (with --allow). */
  decisions?: DecisionCounts;
  /** Resident set size of the process in bytes. */
  rss: number;
}

/** One network's metric families, from its /stats object. */
export function networkMetrics(input: NetworkMetricsInput): MetricFamily[] {
  const s = input.stats;
  const frames = obj(s['frames']);
  const bytes = obj(s['bytes']);
  const link = obj(s['link']);
  const nat = obj(s['nat']);
  const tcp = obj(nat['tcp']);
  const udp = obj(nat['udp']);
  const dns = obj(nat['dns']);
  const limits = obj(s['limits']);
  const icmp = obj(nat['icmpEcho']);
  const dir = (inV: unknown, outV: unknown): Sample[] => [
    { labels: { direction: 'in' }, value: num(inV) },
    { labels: { direction: 'out' }, value: num(outV) },
  ];
  const toHostGuest = (h: unknown, g: unknown): Sample[] => [
    { labels: { direction: 'to-host' }, value: num(h) },
    { labels: { direction: 'to-guest' }, value: num(g) },
  ];
  const drops = boundedReasons(Object.entries(obj(s['drops'])).map(([k, v]) => [k, num(v)] as [string, number]));

  const families: MetricFamily[] = [
    { name: 'moat_guest_connected', help: 'Whether a guest is attached to the link (1) or not (0).', type: 'gauge', samples: [{ value: link['guestConnected'] === true ? 1 : 0 }] },
    { name: 'moat_frames_total', help: 'Ethernet frames on the guest link, by direction (in: from the guest).', type: 'counter', samples: dir(frames['in'], frames['out']) },
    { name: 'moat_bytes_total', help: 'Bytes of Ethernet frames on the guest link, by direction (in: from the guest).', type: 'counter', samples: dir(bytes['in'], bytes['out']) },
    {
      name: 'moat_drops_total',
      help: 'Frames dropped, by reason (layer:what, a fixed set in Moat\'s code; see /stats.drops).',
      type: 'counter',
      samples: [...drops].map(([reason, value]) => ({ labels: { reason }, value })),
    },
    {
      name: 'moat_flows',
      help: 'NAT flows open now, by protocol.',
      type: 'gauge',
      samples: [
        { labels: { proto: 'tcp' }, value: num(nat['tcpFlows']) },
        { labels: { proto: 'udp' }, value: num(nat['udpFlows']) },
      ],
    },
    {
      name: 'moat_flows_opened_total',
      help: 'NAT flows opened to the host, by protocol.',
      type: 'counter',
      samples: [
        { labels: { proto: 'tcp' }, value: num(tcp['opened']) },
        { labels: { proto: 'udp' }, value: num(udp['opened']) },
      ],
    },
    { name: 'moat_tcp_bytes_total', help: 'TCP payload bytes carried by the NAT, by direction.', type: 'counter', samples: toHostGuest(tcp['bytesToHost'], tcp['bytesToGuest']) },
    { name: 'moat_udp_datagrams_total', help: 'UDP datagrams carried by the NAT, by direction.', type: 'counter', samples: toHostGuest(udp['datagramsToHost'], udp['datagramsToGuest']) },
    { name: 'moat_dns_queries_total', help: 'DNS queries the gateway received from the guest.', type: 'counter', samples: [{ value: num(dns['queries']) }] },
    { name: 'moat_dns_answers_total', help: 'DNS queries by outcome (each query counts in one).', type: 'counter', samples: dnsOutcomes(dns) },
  ];
  if (nat['icmpEcho'] !== undefined) {
    families.push({
      name: 'moat_icmp_echo_total',
      help: 'ICMP echo beyond the gateway, by outcome: requests forwarded, refused (policy), rate-limited, outstanding-full, unavailable (no ping socket), send-error; replies replied (to the guest) or unmatched (dropped).',
      type: 'counter',
      samples: Object.entries(ICMP_OUTCOMES).map(([outcome, key]) => ({ labels: { outcome }, value: num(icmp[key]) })),
    });
  }
  if (input.decisions !== undefined) {
    families.push({ name: 'moat_decisions_total', help: 'Egress decisions (--allow) by verdict (allowed, blocked, would-block) and reason.', type: 'counter', samples: input.decisions.samples() });
  }
  const present = LIMITS.filter((l) => limits[l.key] !== undefined);
  families.push(
    { name: 'moat_limit_max', help: 'Each resource bound (see /stats.limits and the --max-* flags).', type: 'gauge', samples: present.map((l) => ({ labels: { limit: l.label }, value: num(obj(limits[l.key])[l.max]) })) },
    {
      name: 'moat_limit_current',
      help: 'What each bounded resource holds now.',
      type: 'gauge',
      samples: present.filter((l) => l.current !== undefined).map((l) => ({ labels: { limit: l.label }, value: num(obj(limits[l.key])[l.current!]) })),
    },
    {
      name: 'moat_limit_refused_total',
      help: 'Work refused because a bound was reached, by limit.',
      type: 'counter',
      samples: present.filter((l) => l.refused !== undefined).map((l) => ({ labels: { limit: l.label }, value: num(obj(limits[l.key])[l.refused!]) })),
    },
    { name: 'moat_resident_memory_bytes', help: 'Resident set size of the Moat process (all its networks).', type: 'gauge', samples: [{ value: input.rss }] },
  );
  return families;
}

/**
 * `moat host`'s own GET /metrics: the process (networks, memory). Each
 * network's counters are at /networks/{name}/metrics, so a network name
 * (chosen by whoever POSTs it) never becomes a label value.
 */
export function hostMetrics(networks: number, rss: number): string {
  return renderExposition([
    { name: 'moat_networks', help: 'Guest networks this moat host runs.', type: 'gauge', samples: [{ value: networks }] },
    { name: 'moat_resident_memory_bytes', help: 'Resident set size of the Moat process (all its networks).', type: 'gauge', samples: [{ value: rss }] },
  ]);
}
