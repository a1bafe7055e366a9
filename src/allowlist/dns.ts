/**
 * The gateway's DNS in allowlist mode (`moat serve --allow ...`): a
 * GatewayDns that answers every query with dns/'s DnsResponder from the zone
 * table, instead of forwarding it. Allowed names get their pre-resolved
 * records, names below a `*.domain` are looked up live, every other name is
 * sinkholed here and no query for it leaves the host.
 *
 * Each decision is logged as one structured line ("dns decision") with the
 * name, type, zone and outcome, so what the guest tried to reach is on record.
 * TCP connections (2-byte framing, several queries, answers in order) use
 * the same DnsTcpSession as the forwarder.
 */
import { canonicalHostname } from '../../dns/rules.js';
import { DnsResponder, type DnsDecision, type ResponderStats } from '../../dns/responder.js';
import type { Resolver, Timers } from '../../dns/preresolve.js';
import type { LiveBudgetStats, LiveLookupBudget } from '../../dns/live-budget.js';
import type { ZoneTable } from '../../dns/zones.js';
import { DEFAULT_DNS_FORWARDER_OPTIONS, DnsTcpSession } from '../dns-forward.js';
import type { DnsTcpLimits, DnsVia, GatewayDns, GatewayDnsStats } from '../gateway-dns.js';
import type { Logger } from '../log.js';
import { realTimers } from './resolver.js';
import { PerKeyRateLimit } from '../egress/decision-log.js';
import { GUEST_IPV6 } from './zones.js';
import type { AskGate } from '../egress/ask-gate.js';
import type { AskOutcome } from '../egress/ask-table.js';

export interface AllowlistDnsOptions {
  table: ZoneTable;
  /** Live lookups of names below `*.domain` zones. */
  resolver: Resolver;
  timers?: Timers;
  tcp?: Partial<DnsTcpLimits>;
  /** Names each sinkhole decision (the id goes into the answer's Extended DNS Error and the logs). */
  decisionId?: () => string;
  /** Audit mode: names outside the allowlist are resolved upstream instead of sinkholed (see DnsResponder). */
  audit?: boolean;
  /** Sees every decision after it is answered: the egress wall pins the addresses the guest was given. `asked`: the query waited on ask mode's decision. */
  onDecision?: (decision: DnsDecision, asked?: AskOutcome) => void;
  /**
   * Ask mode (--on-unlisted ask): a query for a name outside the allowlist
   * waits here instead of being sinkholed at once. allow-name: answered
   * from the table the verdict added the name to (its pinned addresses);
   * allow-once: resolved upstream for this query only; a refusal or the
   * timeout: the sinkhole's answer, as without ask mode.
   */
  ask?: AskGate;
  /** The runtime's live-lookup budget (shared with dial-by-name). */
  budget?: LiveLookupBudget;
  /** Addresses Moat pinned for a name: what an HTTPS/SVCB answer's ipv4hint/ipv6hint may keep. */
  pinned?: (name: string) => readonly string[];
  /** A name the rules allow that is refused anyway (its rules' byte budgets are spent), and why; see DnsResponder. */
  refuseName?: (name: string) => string | null;
  /** The guest network carries IPv6: AAAA answered like A (dns/responder.ts). Default false. */
  ipv6?: boolean;
}

export type AllowlistDnsStats = GatewayDnsStats &
  ResponderStats & { mode: 'allowlist'; zones: number; liveBudget?: LiveBudgetStats & { enabled: boolean } };

export class AllowlistDns implements GatewayDns {
  readonly responder: DnsResponder;
  private readonly tcpLimits: DnsTcpLimits;
  private readonly sessions = new Set<DnsTcpSession>();
  /** Aborted on close(): live lookups in flight end (SERVFAIL, then dropped). */
  private readonly closing = new AbortController();
  private readonly onDecision: ((d: DnsDecision, asked?: AskOutcome) => void) | undefined;
  private readonly ask: AskGate | undefined;
  /** A guest asking one name in a loop must not fill the log: a few lines per name and type per window, then a count. */
  private readonly lineLimit: PerKeyRateLimit;
  private readonly budget: LiveLookupBudget | undefined;

  constructor(
    opts: AllowlistDnsOptions,
    private readonly log: Logger,
  ) {
    this.responder = new DnsResponder({
      table: opts.table,
      resolver: opts.resolver,
      timers: opts.timers ?? realTimers,
      ipv6: opts.ipv6 ?? GUEST_IPV6,
      ...(opts.decisionId ? { decisionId: opts.decisionId } : {}),
      ...(opts.audit ? { audit: true } : {}),
      ...(opts.budget ? { budget: opts.budget } : {}),
      ...(opts.pinned ? { pinned: opts.pinned } : {}),
      ...(opts.refuseName ? { refuseName: opts.refuseName } : {}),
    });
    this.budget = opts.budget;
    this.onDecision = opts.onDecision;
    this.ask = opts.ask;
    const timers = opts.timers ?? realTimers;
    this.lineLimit = new PerKeyRateLimit({ now: () => timers.now(), burst: 5, windowMs: 10_000, maxKeys: 4096 });
    this.tcpLimits = {
      maxTcpPipelined: opts.tcp?.maxTcpPipelined ?? DEFAULT_DNS_FORWARDER_OPTIONS.maxTcpPipelined,
      tcpIdleTimeoutMs: opts.tcp?.tcpIdleTimeoutMs ?? DEFAULT_DNS_FORWARDER_OPTIONS.tcpIdleTimeoutMs,
    };
  }

  /** Swap in a new table (allowlist reload). */
  setTable(table: ZoneTable): void {
    this.responder.setTable(table);
  }

  async resolve(query: Uint8Array, via: DnsVia): Promise<Uint8Array | undefined> {
    if (this.closing.signal.aborted) return undefined;
    let reply = await this.responder.respond(query, via, this.closing.signal);
    let asked: AskOutcome | undefined;
    if (reply !== null && this.ask !== undefined && reply.decision.outcome === 'sinkholed' && isHostname(reply.decision.name) && !this.closing.signal.aborted) {
      asked = await this.ask.ask({ name: reply.decision.name, proto: 'dns', port: 53, dst: reply.decision.name, via: 'dns' }, this.closing.signal);
      if (asked.allow) reply = await this.responder.respond(query, via, this.closing.signal, { resolveUnlisted: asked.verdict === 'allow-once' });
    }
    if (reply === null || this.closing.signal.aborted) return undefined;
    // Over budget every query is a new name: one line per interval with the count, not one per query.
    if (reply.decision.outcome === 'live-budget') this.reportBudget(reply.decision.name);
    else this.logDecision(reply.decision, via);
    this.onDecision?.(reply.decision, asked);
    return reply.bytes;
  }

  openTcpSession(): DnsTcpSession {
    const session = new DnsTcpSession(this, this.tcpLimits, () => this.sessions.delete(session));
    this.sessions.add(session);
    return session;
  }

  stats(): AllowlistDnsStats {
    return {
      mode: 'allowlist',
      ...this.responder.stats,
      zones: this.responder.zoneTable.zones.length,
      ...(this.budget ? { liveBudget: { enabled: this.budget.enabled, ...this.budget.stats } } : {}),
    };
  }

  async close(): Promise<void> {
    this.closing.abort(new Error('gateway DNS closed'));
    for (const s of [...this.sessions]) s.abort();
  }

  private reportBudget(name: string): void {
    const refused = this.budget?.takeReport() ?? 0;
    if (refused === 0) return;
    this.log.warn('live lookup budget exhausted', { refused, budget: this.budget!.describe, lastName: name.slice(0, 64), hint: 'new names below wildcards get SERVFAIL until the budget refills; see --live-lookup-rate' });
  }

  private logDecision(d: DnsDecision, via: DnsVia): void {
    const suppressedBefore = this.lineLimit.admit(`${d.name} ${d.type}`);
    if (suppressedBefore < 0) return;
    this.log.info('dns decision', {
      ...(suppressedBefore > 0 ? { suppressedBefore } : {}),
      decision: d.outcome === 'sinkholed' ? 'sinkholed' : d.outcome === 'audit-live' ? 'would-sinkhole' : d.allowed ? 'allowed' : 'rejected',
      name: d.name,
      type: d.type,
      zone: d.zone,
      outcome: d.outcome,
      rcode: d.rcode,
      via,
      ...(d.id !== undefined ? { id: d.id } : {}),
      ...(d.addresses.length > 0 ? { addresses: d.addresses, ttl: d.ttl } : {}),
    });
  }
}

/**
 * A name ask mode can ask about: a hostname in canonical form (not a
 * malformed or numeric name, not the root), and not a reverse-lookup name
 * (in-addr.arpa, ip6.arpa: a guest's resolver asks those by itself; no rule
 * could name them usefully).
 */
function isHostname(name: string): boolean {
  return name !== '' && canonicalHostname(name) === name && name !== 'arpa' && !name.endsWith('.arpa');
}
