/**
 * The gateway's DNS server in allowlist mode: one DNS message in, one out.
 * (Without an allowlist the service forwards instead: src/dns-forward.ts.)
 *
 * What it guarantees:
 *  - No name outside the allowed zones is ever sent upstream: sinkholed and
 *    built-in names are answered from the zone table; only names below a
 *    `*.domain` zone are looked up live, with the shared retry policy.
 *  - The question is copied byte for byte from the query into the answer and
 *    answer records point at it (compression pointer to offset 12), so
 *    0x20 case randomisation round-trips exactly (RFC 4343 section 4.1 and
 *    draft-vixie-dnsext-dns0x20).
 *  - UDP answers fit the client's EDNS0 payload size (RFC 6891 6.2.3),
 *    or 512 bytes without EDNS0 (RFC 1035 4.2.1); a larger answer goes out
 *    with no records and TC set so the client retries over TCP (RFC 2181 9).
 *  - Opcode other than QUERY → NOTIMP; a message that does not decode but
 *    has a readable header → FORMERR; no readable header, or a response
 *    (QR set) → dropped and counted (RFC 1035 4.1.1, RFC 5452 9.1).
 *
 *  - Live lookups spend from the guest's LiveLookupBudget (dns/live-budget.ts):
 *    a new name over budget gets SERVFAIL with Extended DNS Error 15 naming
 *    the budget; with live lookups off it gets the sinkhole's answer.
 *  - HTTPS/SVCB (types 65/64) of allowed names are asked upstream and passed
 *    on without `ech`, with `ipv4hint` (and, when the guest network carries
 *    IPv6, `ipv6hint`; else it is removed) cut to the addresses Moat pinned
 *    (dns/svcb-filter.ts); sinkholed names get NODATA.
 *  - AAAA (guest network with IPv6): pre-resolved for exact hosts, live below
 *    wildcards, `::` from the sinkhole as A gets 0.0.0.0.
 *
 * dns-packet validates and decodes the query; the answer is written by hand
 * because it is small and must reuse the query's own question bytes.
 */
import dnsPacket from 'dns-packet';
import { Address4, Address6 } from 'ip-address';
import {
  clampTtl,
  DEFAULT_RETRY_POLICY,
  DEFAULT_TTL_CLAMP,
  isNxdomain,
  lookup,
  withRetry,
  type RecordFamily,
  type Resolver,
  type RetryPolicy,
  type ServiceType,
  type Timers,
  type TtlClamp,
} from './preresolve.js';
import type { LiveLookupBudget } from './live-budget.js';
import { canonicalHostname, RuleError } from './rules.js';
import { emitSvcb, parseSvcb, SvcbError, targetText } from './svcb.js';
import { filterServiceRecord } from './svcb-filter.js';
import { TtlCache } from './ttl-cache.js';
import type { ZoneTable } from './zones.js';

export type DnsTransport = 'udp' | 'tcp';

/** How a query was handled, for the one-line decision log. */
export type DnsOutcome =
  | 'builtin' // a gateway/host alias name, answered locally
  | 'allowed' // an allowed name, answered from pre-resolved records
  | 'live' // below a wildcard zone, resolved upstream now
  | 'audit-live' // outside the allowlist, but resolved upstream because the responder audits (would have been sinkholed)
  | 'sinkholed' // outside the allowlist
  | 'upstream-nxdomain'
  | 'upstream-failed' // SERVFAIL after the retries
  | 'live-budget' // a new name below a wildcard, over the live-lookup budget: SERVFAIL + EDE 15, nothing asked
  | 'live-off' // a new name below a wildcard with live lookups turned off: the sinkhole's answer
  | 'budget' // a name the rules allow, refused by the owner (refuseName: its rules' byte budgets are spent): the sinkhole's answer
  | 'refused' // class other than IN
  | 'formerr'
  | 'notimp';

export interface DnsDecision {
  /** Canonical name, or the name as asked when it is not a valid hostname; '' when unknown. */
  readonly name: string;
  /** Record type as asked ('A', 'AAAA', ...), '' when unknown. */
  readonly type: string;
  /** Fully qualified zone that decided ('github.com.', '.'), null when no question was read. */
  readonly zone: string | null;
  /** Was the name inside the allowlist (or built in)? */
  readonly allowed: boolean;
  readonly outcome: DnsOutcome;
  readonly rcode: Rcode;
  /** Addresses given to the guest (never the sinkhole's); they feed the egress pin. */
  readonly addresses: readonly string[];
  /** TTL of those addresses in seconds, null when none. */
  readonly ttl: number | null;
  /** Set on sinkholed answers when the responder was given `decisionId`: the same id is in the answer's Extended DNS Error text and in the logs. */
  readonly id?: string;
}

export interface DnsReply {
  readonly bytes: Uint8Array;
  readonly decision: DnsDecision;
}

export type Rcode = 'NOERROR' | 'FORMERR' | 'SERVFAIL' | 'NXDOMAIN' | 'NOTIMP' | 'REFUSED' | 'BADVERS';

const RCODE_VALUE: Record<Rcode, number> = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  BADVERS: 16, // extended: 4 bits in the header, 8 in the OPT TTL (RFC 6891 6.1.3)
};

export interface ResponderOptions {
  table: ZoneTable;
  resolver: Resolver;
  timers: Timers;
  /**
   * Does the guest network carry IPv6? Then AAAA is answered like A (pre-resolved, live, sinkhole
   * `::`) and an HTTPS/SVCB ipv6hint is kept cut to pinned addresses. If not, AAAA is NODATA
   * without a lookup and ipv6hint is removed.
   */
  ipv6: boolean;
  policy?: RetryPolicy;
  ttlClamp?: TtlClamp;
  /** TTL of the sinkhole's 0.0.0.0, seconds. */
  sinkholeTtl?: number;
  /** EDNS0 payload size we advertise and the most we send over UDP (RFC 6891 6.2.5; 1232 avoids fragmentation). */
  maxUdpPayload?: number;
  /** Live upstream lookups in flight at once; a query beyond it gets SERVFAIL at once. */
  maxLiveLookups?: number;
  /**
   * Names each sinkhole decision. When given, a sinkholed answer to a query
   * that carried EDNS0 also carries Extended DNS Error 15 "Blocked" (RFC 8914)
   * whose text names the decision, so a client (or a coding agent reading
   * `dig` output) can tell "blocked by policy" from "the name does not exist".
   */
  decisionId?: () => string;
  /**
   * Audit mode (`--mode audit`): a name outside the allowlist is resolved
   * upstream like a wildcard subdomain instead of being sinkholed, and its
   * decision says so (outcome 'audit-live', allowed false, with an id), so
   * a job runs unhindered while every name it would have been refused is
   * on record.
   */
  audit?: boolean;
  /** What live lookups may cost (shared with dial-by-name); absent: unbudgeted. */
  budget?: LiveLookupBudget;
  /**
   * Addresses Moat pinned for a name (the egress pin table): an HTTPS/SVCB
   * answer's ipv4hint (and ipv6hint) keeps only these. Default: the zone table's
   * pre-resolved addresses of an exact host.
   */
  pinned?: (name: string) => readonly string[];
  /**
   * A name the rules allow that must still be refused, and why (the owner's
   * byte budgets: every rule covering it is spent), or null. The answer is
   * the sinkhole's, with an Extended DNS Error 15 saying why.
   */
  refuseName?: (name: string) => string | null;
}

export interface ResponderStats {
  queries: number;
  answered: number;
  sinkholed: number;
  live: number;
  /** Names outside the allowlist answered anyway (audit mode). */
  audited: number;
  upstreamFailed: number;
  /** Live lookups refused because maxLiveLookups were already in flight (also counted in upstreamFailed). */
  overloaded: number;
  /** New names refused by the live-lookup budget (SERVFAIL + EDE 15). */
  liveOverBudget: number;
  /** New names below a wildcard refused because live lookups are off. */
  liveOff: number;
  /** HTTPS/SVCB answers passed on from upstream (filtered), and the records among them whose `ech` was removed. */
  service: number;
  echRemoved: number;
  truncated: number;
  formerr: number;
  notimp: number;
  refused: number;
  /** Messages dropped without an answer (no readable header, or a response). */
  dropped: number;
}

const HEADER = 12;
const QR = 0x8000;
const AA = 0x0400;
const TC = 0x0200;
const RD = 0x0100;
const RA = 0x0080;
const CD = 0x0010;
const TYPE_A = 1;
const TYPE_AAAA = 28;
const TYPE_OPT = 41;
const TYPE_SVCB = 64;
const TYPE_HTTPS = 65;
/** Records of one HTTPS/SVCB answer passed on, at most: the upstream's answer is data the guest receives. */
const MAX_SERVICE_RECORDS = 8;
/** Upstream HTTPS/SVCB answers kept until their (clamped) TTL, at most. */
const MAX_CACHED_SERVICES = 1024;
/** RFC 8914 section 4: the EDNS0 option code of Extended DNS Errors, and INFO-CODE 15 "Blocked". */
const OPTION_EDE = 15;
const EDE_BLOCKED = 15;
/** Extra text is for humans; keep it short so a blocked answer always fits 512 bytes. */
const MAX_EDE_TEXT = 160;
const CLASS_IN = 1;
const MIN_UDP = 512;
const MAX_TCP = 65_535;

export const DEFAULT_SINKHOLE_TTL = 60;
export const DEFAULT_MAX_UDP_PAYLOAD = 1232;
/** A guest asking for many random names below a wildcard must not queue unbounded work upstream. */
export const DEFAULT_MAX_LIVE_LOOKUPS = 64;

/** The question as read off the wire, plus where its bytes end. */
interface ParsedQuery {
  id: number;
  flags: number;
  questionEnd: number;
  name: string;
  type: string;
  qclass: string;
  /** Requestor's EDNS0 payload size, or null without an OPT record. */
  ednsPayload: number | null;
  ednsVersion: number;
}

/** What to put in the answer section. */
interface Plan {
  rcode: Rcode;
  aa: boolean;
  recordType: number;
  ttl: number;
  rdata: Uint8Array[];
  decision: Omit<DnsDecision, 'rcode'>;
  /** Extended DNS Error 15 text (RFC 8914), sent when the query carried EDNS0. */
  ede?: Uint8Array;
}

export class DnsResponder {
  readonly stats: ResponderStats = {
    queries: 0,
    answered: 0,
    sinkholed: 0,
    live: 0,
    audited: 0,
    upstreamFailed: 0,
    overloaded: 0,
    liveOverBudget: 0,
    liveOff: 0,
    service: 0,
    echRemoved: 0,
    truncated: 0,
    formerr: 0,
    notimp: 0,
    refused: 0,
    dropped: 0,
  };
  private table: ZoneTable;
  private readonly policy: RetryPolicy;
  private readonly ttlClamp: TtlClamp;
  private readonly sinkholeTtl: number;
  private readonly maxUdpPayload: number;
  private readonly maxLiveLookups: number;
  private liveInFlight = 0;
  /** "TYPE name" -> the upstream's raw records: a repeat within the TTL is answered without a query. */
  private readonly serviceCache = new TtlCache<readonly Uint8Array[]>(MAX_CACHED_SERVICES);

  constructor(private readonly opts: ResponderOptions) {
    this.table = opts.table;
    this.policy = opts.policy ?? DEFAULT_RETRY_POLICY;
    this.ttlClamp = opts.ttlClamp ?? DEFAULT_TTL_CLAMP;
    this.sinkholeTtl = opts.sinkholeTtl ?? DEFAULT_SINKHOLE_TTL;
    this.maxUdpPayload = Math.max(MIN_UDP, opts.maxUdpPayload ?? DEFAULT_MAX_UDP_PAYLOAD);
    this.maxLiveLookups = opts.maxLiveLookups ?? DEFAULT_MAX_LIVE_LOOKUPS;
  }

  /** Swap in a new table (allowlist reload); queries in flight finish on the old one. */
  setTable(table: ZoneTable): void {
    this.table = table;
  }

  get zoneTable(): ZoneTable {
    return this.table;
  }

  /**
   * Answer one DNS message. Resolves null when the message is dropped.
   * `signal` cancels a live upstream lookup (the answer is then SERVFAIL).
   * `once.resolveUnlisted`: this one query is answered as audit mode would
   * (a name outside the allowlist resolved upstream, outcome 'audit-live'):
   * ask mode's allow-once verdict for a held query.
   */
  async respond(query: Uint8Array, transport: DnsTransport, signal?: AbortSignal, once?: { resolveUnlisted?: boolean }): Promise<DnsReply | null> {
    this.stats.queries++;
    if (query.length < HEADER || (query[2]! & 0x80) !== 0) {
      this.stats.dropped++;
      return null;
    }
    const flags = (query[2]! << 8) | query[3]!;
    const opcode = (flags >> 11) & 0xf;
    if (opcode !== 0) {
      this.stats.notimp++;
      return { bytes: headerOnly(query, 'NOTIMP'), decision: bare('notimp', 'NOTIMP') };
    }
    const parsed = parseQuery(query);
    if (parsed === null) {
      this.stats.formerr++;
      return { bytes: headerOnly(query, 'FORMERR'), decision: bare('formerr', 'FORMERR') };
    }

    const limit = transport === 'tcp' ? MAX_TCP : Math.min(this.maxUdpPayload, Math.max(MIN_UDP, parsed.ednsPayload ?? MIN_UDP));
    // RFC 6891 6.1.3: we speak EDNS version 0 only.
    if (parsed.ednsPayload !== null && parsed.ednsVersion !== 0) {
      const decision = { ...questionDecision(parsed, null, false, 'formerr'), rcode: 'BADVERS' as const };
      this.stats.formerr++;
      return { bytes: this.encode(query, parsed, emptyPlan('BADVERS', decision), limit), decision };
    }

    const plan = await this.plan(parsed, signal, once?.resolveUnlisted === true);
    const decision: DnsDecision = { ...plan.decision, rcode: plan.rcode };
    this.count(decision);
    return { bytes: this.encode(query, parsed, plan, limit), decision };
  }

  private async plan(q: ParsedQuery, signal: AbortSignal | undefined, resolveUnlisted: boolean): Promise<Plan> {
    if (q.qclass !== 'IN') return emptyPlan('REFUSED', questionDecision(q, null, false, 'refused'));
    const canonical = canonicalHostname(q.name);
    const name = canonical instanceof RuleError ? q.name : canonical;
    const zone = canonical instanceof RuleError ? this.table.zones[this.table.zones.length - 1]! : this.table.match(canonical);
    const zoneName = zone.name === '' ? '.' : `${zone.name}.`;

    if (zone.kind === 'allowed' && this.opts.refuseName !== undefined && (name === zone.name || zone.liveSubdomains)) {
      const why = this.opts.refuseName(name);
      if (why !== null) return this.sinkhole(q, name, zoneName, 'budget', why);
    }
    if (zone.kind !== 'root' && zone.apex !== null && name === zone.name) {
      // A name from the rules: its HTTPS/SVCB records are asked upstream, outside the budget (the rules bound these names).
      if (zone.kind === 'allowed' && isServiceType(q.type)) {
        return this.upstream(q, name, null, false, { name, type: q.type, zone: zoneName, allowed: true, outcome: 'allowed' }, signal);
      }
      const family = q.type === 'A' ? zone.apex.a : q.type === 'AAAA' && this.opts.ipv6 ? zone.apex.aaaa : [];
      return this.addresses(q.type, family, zone.apex.ttl, true, {
        name,
        type: q.type,
        zone: zoneName,
        allowed: true,
        outcome: zone.kind === 'builtin' ? 'builtin' : 'allowed',
      });
    }
    if (zone.liveSubdomains && name !== zone.name) {
      return this.live(q, name, { name, type: q.type, zone: `${zone.name}.`, allowed: true, outcome: 'live' }, signal);
    }
    if ((this.opts.audit === true || resolveUnlisted) && !(canonical instanceof RuleError)) {
      const id = this.opts.decisionId?.();
      return this.live(q, name, { name, type: q.type, zone: zoneName, allowed: false, outcome: 'audit-live', ...(id === undefined ? {} : { id }) }, signal);
    }
    return this.sinkhole(q, name, zoneName);
  }

  private async live(
    q: ParsedQuery,
    name: string,
    base: Omit<DnsDecision, 'rcode' | 'addresses' | 'ttl'>,
    signal: AbortSignal | undefined,
  ): Promise<Plan> {
    const family = q.type === 'A' ? 'A' : q.type === 'AAAA' && this.opts.ipv6 ? 'AAAA' : null;
    // Only addresses and HTTPS/SVCB (filtered) are looked up: other types
    // would be a channel out of the sandbox with no use to a guest that may
    // only connect to addresses.
    if (family === null && !isServiceType(q.type)) return emptyPlan('NOERROR', { ...base, addresses: [], ttl: null });
    return this.upstream(q, name, family, true, base, signal);
  }

  /** One upstream lookup: addresses of `family`, or (family null) the HTTPS/SVCB records; `budgeted` spends from the live budget. */
  private async upstream(
    q: ParsedQuery,
    name: string,
    family: RecordFamily | null,
    budgeted: boolean,
    base: Omit<DnsDecision, 'rcode' | 'addresses' | 'ttl'>,
    signal: AbortSignal | undefined,
  ): Promise<Plan> {
    if (family === null) {
      const hit = this.serviceCache.get(`${q.type} ${name}`, this.opts.timers.now());
      if (hit !== undefined) return this.servicePlan(q, name, base, hit.value, Math.ceil(hit.remainingMs / 1000));
    }
    if (this.liveInFlight >= this.maxLiveLookups) {
      this.stats.overloaded++;
      return emptyPlan('SERVFAIL', { ...base, outcome: 'upstream-failed', addresses: [], ttl: null });
    }
    const budget = budgeted ? this.opts.budget : undefined;
    const spend = budget?.spend(name);
    if (spend === 'over-budget') return this.overBudget(base, budget!);
    if (spend === 'off') return this.sinkhole(q, name, base.zone ?? '.', 'live-off');
    this.liveInFlight++;
    const ctx = { timers: this.opts.timers, policy: this.policy, ...(signal ? { signal } : {}) };
    try {
      if (family === null) {
        const plan = await this.service(q, name, base, ctx);
        budget?.answered(name, plan.ttl);
        return plan;
      }
      const r = await lookup(this.opts.resolver, family, name, ctx);
      const ttl = clampTtl(r.ttl, this.ttlClamp);
      budget?.answered(name, ttl);
      return this.addresses(q.type, r.addresses, ttl, false, base);
    } catch (err) {
      if (isNxdomain(err)) {
        budget?.answered(name, this.ttlClamp.min); // asking again soon tells the upstream nothing new
        return emptyPlan('NXDOMAIN', { ...base, outcome: 'upstream-nxdomain', addresses: [], ttl: null });
      }
      return emptyPlan('SERVFAIL', { ...base, outcome: 'upstream-failed', addresses: [], ttl: null });
    } finally {
      this.liveInFlight--;
    }
  }

  /** HTTPS/SVCB from upstream, each record filtered (no ech; ipv4hint, and ipv6hint on an IPv6 guest, only to pinned addresses). */
  private async service(
    q: ParsedQuery,
    name: string,
    base: Omit<DnsDecision, 'rcode' | 'addresses' | 'ttl'>,
    ctx: { timers: Timers; policy: RetryPolicy; signal?: AbortSignal },
  ): Promise<Plan> {
    const type = q.type as ServiceType;
    const recordType = type === 'HTTPS' ? TYPE_HTTPS : TYPE_SVCB;
    const resolver = this.opts.resolver;
    if (resolver.resolveService === undefined) return { ...emptyPlan('NOERROR', { ...base, addresses: [], ttl: null }), recordType };
    const r = await withRetry((s) => resolver.resolveService!(name, type, s), ctx);
    const ttl = clampTtl(r.ttl, this.ttlClamp);
    const records = r.records.slice(0, MAX_SERVICE_RECORDS);
    this.serviceCache.set(`${type} ${name}`, records, this.opts.timers.now() + ttl * 1000);
    return this.servicePlan(q, name, base, records, ttl);
  }

  /** The answer to an HTTPS/SVCB query from the upstream's records, filtered now (pins change). */
  private servicePlan(q: ParsedQuery, name: string, base: Omit<DnsDecision, 'rcode' | 'addresses' | 'ttl'>, records: readonly Uint8Array[], ttl: number): Plan {
    const recordType = q.type === 'HTTPS' ? TYPE_HTTPS : TYPE_SVCB;
    const rdata: Uint8Array[] = [];
    for (const raw of records) {
      const record = parseSvcb(raw);
      if (record instanceof SvcbError) continue; // a record the guest could not use either
      const filtered = filterServiceRecord(record, this.pinned(targetText(record) || name), this.opts.ipv6);
      if (filtered.echRemoved) this.stats.echRemoved++;
      if (filtered.record !== null) rdata.push(emitSvcb(filtered.record));
    }
    this.stats.service++;
    return { rcode: 'NOERROR', aa: false, recordType, ttl, rdata, decision: { ...base, addresses: [], ttl: null } };
  }

  private pinned(name: string): readonly string[] {
    if (this.opts.pinned) return this.opts.pinned(name);
    const zone = this.table.match(name);
    if (zone.kind === 'root' || zone.apex === null || zone.name !== name) return [];
    return this.opts.ipv6 ? [...zone.apex.a, ...zone.apex.aaaa] : zone.apex.a;
  }

  /** SERVFAIL (try again later) with EDE 15 naming the budget; nothing asked upstream. */
  private overBudget(base: Omit<DnsDecision, 'rcode' | 'addresses' | 'ttl'>, budget: LiveLookupBudget): Plan {
    const text = `moat live lookup budget exhausted (${budget.describe}): new names below this domain must wait`;
    return { ...emptyPlan('SERVFAIL', { ...base, outcome: 'live-budget', addresses: [], ttl: null }), ede: new TextEncoder().encode(text) };
  }

  private sinkhole(q: ParsedQuery, name: string, zoneName: string, outcome: 'sinkholed' | 'live-off' | 'budget' = 'sinkholed', why?: string): Plan {
    const id = this.opts.decisionId?.();
    const decision = {
      name,
      type: q.type,
      zone: zoneName,
      allowed: false,
      outcome,
      addresses: [],
      ttl: null,
      ...(id === undefined ? {} : { id }),
    };
    const ede = id === undefined ? undefined : blockedText(name, id, why ?? (outcome === 'live-off' ? 'live lookups are off and it was not resolved at start-up' : 'is not allowed'));
    const extra = ede === undefined ? {} : { ede };
    if (this.table.sinkhole === 'nxdomain') return { ...emptyPlan('NXDOMAIN', decision), aa: true, ...extra };
    // AAAA gets `::` exactly when the guest network carries IPv6: the unspecified address of the family
    // asked, as A gets 0.0.0.0, so a dual-stack client fails the same way on both families (at once, in
    // the guest) and an IPv6-first client is not told "no address" (NODATA) where an IPv4 one is told
    // "nowhere". An IPv4-only guest gets NODATA for AAAA, as for every other type.
    if (q.type === 'AAAA' && this.opts.ipv6) return { rcode: 'NOERROR', aa: true, recordType: TYPE_AAAA, ttl: this.sinkholeTtl, rdata: [new Uint8Array(16)], decision, ...extra };
    if (q.type !== 'A') return { ...emptyPlan('NOERROR', decision), aa: true, ...extra };
    return { rcode: 'NOERROR', aa: true, recordType: TYPE_A, ttl: this.sinkholeTtl, rdata: [new Uint8Array(4)], decision, ...extra };
  }

  private addresses(
    type: string,
    addresses: readonly string[],
    ttl: number,
    authoritative: boolean,
    base: Omit<DnsDecision, 'rcode' | 'addresses' | 'ttl'>,
  ): Plan {
    const recordType = type === 'A' ? TYPE_A : TYPE_AAAA;
    const rdata = type === 'A' || type === 'AAAA' ? addresses.map((a) => addressBytes(type, a)) : [];
    return {
      rcode: 'NOERROR',
      aa: authoritative,
      recordType,
      ttl,
      rdata,
      decision: { ...base, addresses: rdata.length > 0 ? [...addresses] : [], ttl: rdata.length > 0 ? ttl : null },
    };
  }

  private count(d: DnsDecision): void {
    switch (d.outcome) {
      case 'sinkholed':
      case 'budget':
        this.stats.sinkholed++;
        break;
      case 'live':
        this.stats.live++;
        this.stats.answered++;
        break;
      case 'audit-live':
        this.stats.audited++;
        this.stats.answered++;
        break;
      case 'upstream-failed':
        this.stats.upstreamFailed++;
        break;
      case 'live-budget':
        this.stats.liveOverBudget++;
        break;
      case 'live-off':
        this.stats.liveOff++;
        break;
      case 'refused':
        this.stats.refused++;
        break;
      default:
        this.stats.answered++;
    }
  }

  private encode(query: Uint8Array, q: ParsedQuery, plan: Plan, limit: number): Uint8Array {
    const question = query.subarray(HEADER, q.questionEnd);
    const rrLength = (rd: Uint8Array): number => 2 + 2 + 2 + 4 + 2 + rd.length;
    // Only refusals carry an EDE (a sinkholed name, a name over the live budget); an audited name got its real answer.
    const ede = q.ednsPayload !== null && plan.ede !== undefined ? plan.ede : null;
    const edeLength = ede === null ? 0 : 4 + 2 + ede.length;
    const optLength = q.ednsPayload === null ? 0 : 11 + edeLength;
    let answerBytes = 0;
    for (const rd of plan.rdata) answerBytes += rrLength(rd);
    let truncated = false;
    if (HEADER + question.length + answerBytes + optLength > limit) {
      truncated = true;
      answerBytes = 0;
      this.stats.truncated++;
    }
    const out = new Uint8Array(HEADER + question.length + answerBytes + optLength);
    const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
    const rcode = RCODE_VALUE[plan.rcode];
    let flags = QR | RA | (q.flags & (RD | CD)) | (rcode & 0xf);
    if (plan.aa) flags |= AA;
    if (truncated) flags |= TC;
    view.setUint16(0, q.id);
    view.setUint16(2, flags);
    view.setUint16(4, 1);
    view.setUint16(6, truncated ? 0 : plan.rdata.length);
    view.setUint16(8, 0);
    view.setUint16(10, optLength > 0 ? 1 : 0);
    out.set(question, HEADER);
    let off = HEADER + question.length;
    if (!truncated) {
      for (const rd of plan.rdata) {
        view.setUint16(off, 0xc000 | HEADER); // name: pointer to the question's name
        view.setUint16(off + 2, plan.recordType);
        view.setUint16(off + 4, CLASS_IN);
        view.setUint32(off + 6, plan.ttl);
        view.setUint16(off + 10, rd.length);
        out.set(rd, off + 12);
        off += 12 + rd.length;
      }
    }
    if (optLength > 0) {
      // OPT RR (RFC 6891 6.1.2): root name, our payload size in CLASS, the
      // extended RCODE's upper 8 bits and version 0 in TTL; the only option
      // we send is an Extended DNS Error on blocked answers.
      out[off] = 0;
      view.setUint16(off + 1, TYPE_OPT);
      view.setUint16(off + 3, this.maxUdpPayload);
      view.setUint32(off + 5, ((rcode >> 4) & 0xff) << 24);
      view.setUint16(off + 9, edeLength);
      if (ede !== null) {
        view.setUint16(off + 11, OPTION_EDE);
        view.setUint16(off + 13, 2 + ede.length);
        view.setUint16(off + 15, EDE_BLOCKED);
        out.set(ede, off + 17);
      }
    }
    return out;
  }
}

/** The EXTRA-TEXT of a blocked answer (UTF-8, no NUL: RFC 8914 section 2). */
function blockedText(name: string, id: string, why: string): Uint8Array {
  let text = `blocked by moat allowlist: ${name} ${why} (decision ${id})`;
  if (text.length > MAX_EDE_TEXT) text = `blocked by moat allowlist (decision ${id})`;
  return new TextEncoder().encode(text);
}

function bare(outcome: DnsOutcome, rcode: Rcode): DnsDecision {
  return { name: '', type: '', zone: null, allowed: false, outcome, rcode, addresses: [], ttl: null };
}

function questionDecision(q: ParsedQuery, zone: string | null, allowed: boolean, outcome: DnsOutcome): Omit<DnsDecision, 'rcode'> {
  return { name: q.name, type: q.type, zone, allowed, outcome, addresses: [], ttl: null };
}

function emptyPlan(rcode: Rcode, decision: Omit<DnsDecision, 'rcode'>): Plan {
  return { rcode, aa: false, recordType: TYPE_A, ttl: 0, rdata: [], decision };
}

/** A reply of just a header: the query's ID, opcode and RD, no sections. */
function headerOnly(query: Uint8Array, rcode: Rcode): Uint8Array {
  const out = new Uint8Array(HEADER);
  out[0] = query[0]!;
  out[1] = query[1]!;
  out[2] = 0x80 | (query[2]! & 0x79); // QR, opcode (bits 3-6) and RD kept; AA and TC cleared
  out[3] = RA | RCODE_VALUE[rcode];
  return out;
}

/**
 * Decode with dns-packet (any malformation throws there) and require exactly
 * one question (RFC 9619) and at most one OPT (RFC 6891 6.1.1). Returns
 * null when the query must get FORMERR.
 */
function parseQuery(query: Uint8Array): ParsedQuery | null {
  let decoded: ReturnType<typeof dnsPacket.decode>;
  try {
    decoded = dnsPacket.decode(Buffer.from(query.buffer, query.byteOffset, query.byteLength));
  } catch {
    return null;
  }
  const questions = decoded.questions ?? [];
  if (questions.length !== 1) return null;
  const questionEnd = endOfFirstQuestion(query);
  if (questionEnd < 0) return null;
  const opts = (decoded.additionals ?? []).filter((a) => a.type === 'OPT') as {
    udpPayloadSize: number;
    ednsVersion?: number;
  }[];
  if (opts.length > 1) return null;
  const q = questions[0]!;
  return {
    id: (query[0]! << 8) | query[1]!,
    flags: (query[2]! << 8) | query[3]!,
    questionEnd,
    name: q.name,
    type: typeName(String(q.type)),
    qclass: String(q.class ?? 'IN'),
    ednsPayload: opts.length === 1 ? opts[0]!.udpPayloadSize : null,
    ednsVersion: opts.length === 1 ? (opts[0]!.ednsVersion ?? 0) : 0,
  };
}

/** Offset just past QTYPE/QCLASS of the first question; -1 if it uses compression or overruns. */
function endOfFirstQuestion(msg: Uint8Array): number {
  let off = HEADER;
  for (;;) {
    if (off >= msg.length) return -1;
    const len = msg[off]!;
    if (len === 0) break;
    if ((len & 0xc0) !== 0) return -1; // a pointer in the first name has nothing to point back to
    off += 1 + len;
  }
  off += 1 + 4;
  return off <= msg.length ? off : -1;
}

/** dns-packet 5.6 names types 64/65 "UNKNOWN_64"/"UNKNOWN_65". */
function typeName(type: string): string {
  return type === 'UNKNOWN_64' ? 'SVCB' : type === 'UNKNOWN_65' ? 'HTTPS' : type;
}

function isServiceType(type: string): type is ServiceType {
  return type === 'HTTPS' || type === 'SVCB';
}

function addressBytes(type: 'A' | 'AAAA', address: string): Uint8Array {
  if (type === 'A') return Uint8Array.from(new Address4(address).toArray());
  return Uint8Array.from(new Address6(address).toUnsignedByteArray());
}
