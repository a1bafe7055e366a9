/**
 * The egress wall of `moat serve --allow`: the one place the NAT asks
 * "may this flow go out, and where to?". It owns the current policy (swapped
 * whole on an allowlist reload), the pins (addresses Moat resolved per name),
 * the decision log, and the name resolution for dial-by-name.
 *
 * The decisions themselves are sni/policy.ts (pure); this class only keeps
 * state and turns each decision into a logged record with an id.
 */
import { formatIPv4, type IPv4 } from '../../netstack/addr.js';
import type { Decision, EgressPolicy, FlowInput } from '../../sni/policy.js';
import type { PinTable } from '../../sni/pins.js';
import type { DecisionLog, DecisionRecord } from './decision-log.js';
import type { AskGate } from './ask-gate.js';
import type { AskOutcome } from './ask-table.js';
import type { DialTargets } from './dial-targets.js';
import type { ByteBudgets } from '../traffic/byte-budgets.js';

import type { Injector } from '../inject/interceptor.js';

/** The proto of a flow's decision record: 'quic' for a UDP flow read by its QUIC Initial. */
export type FlowProto = 'tcp' | 'udp' | 'quic' | 'icmp';

/** enforce: refusals are refused. audit: everything flows and each refusal is recorded as 'would-block'. */
export type EgressMode = 'enforce' | 'audit';

export interface EgressOptions {
  mode: EgressMode;
  /** A connection held for its SNI/Host that names nothing in this long is reset. */
  peekTimeoutMs: number;
  /** Bytes read from a held connection before its name must be known. */
  maxPeekBytes: number;
  /** Connections held for their name at once; SYNs beyond it are refused. */
  maxHeld: number;
  /** After a refusal has been written (403, TLS alert), how long the guest has to close before it is reset. */
  refusalLingerMs: number;
  /** A 403 lists the allow rules (--refusal-details, for debugging); off, it names only reason and decision id. */
  refusalDetails: boolean;
  /** Refuse TLS ClientHellos that carry encrypted_client_hello (reason 'ech'), GREASE ECH included. */
  refuseEch?: boolean;
  /** Credential injection (src/inject/): connections to a host with an --inject rule are intercepted. */
  injector?: Injector;
}

export const DEFAULT_EGRESS_OPTIONS: Readonly<EgressOptions> = Object.freeze({
  mode: 'enforce' as EgressMode,
  peekTimeoutMs: 10_000,
  // The largest ClientHello the protocol allows spans ~132 KiB of records; real ones are 0.5-8 KiB.
  maxPeekBytes: 160 * 1024,
  maxHeld: 1024,
  refusalLingerMs: 5_000,
  refusalDetails: false,
});

/**
 * A flow decided but not yet joined to its destination (held, resolving,
 * dialing), with what it was decided under: re-decided by recheck() when the
 * policy changed since.
 */
export interface InFlight {
  /** Egress.version when the flow was decided. */
  version: number;
  /**
   * What was decided, and so how it is decided again: a flow as the NAT
   * sees it (decide), a name a proxy client named (decideName), or an
   * address a proxy client named (decideAddress: with the rebinding filter).
   */
  target: { kind: 'flow'; flow: FlowInput } | { kind: 'name'; name: string; port: number } | { kind: 'address'; proto: 'tcp' | 'udp'; address: string; port: number };
  /** Where the decision sent it. */
  dial: Extract<Decision, { verdict: 'allow' }>['dial'];
  /** For the record: 'sni', 'host', 'target', 'pin' or null. */
  via: string | null;
  /**
   * The name whose pin let the flow out by address (reason 'pinned'). A
   * reload clears the live pins, so the re-decision asks whether that name
   * is still allowed on the port instead of finding no pin.
   */
  pinnedName?: string;
}

/** keep, or the refusal: its decision record's id and reason (for a 403 that names them). */
export type Recheck = { keep: true } | { keep: false; id: string; reason: string };
const KEEP: Recheck = Object.freeze({ keep: true });

/** The fields an asked request's decision record carries (DecisionRecord.asked, answeredBy, askId). */
export type AskMark = Pick<DecisionRecord, 'asked' | 'answeredBy' | 'askId'>;

export function askMark(o: AskOutcome): AskMark {
  return { asked: true, ...(o.by === null ? {} : { answeredBy: o.by }), ...(o.id === null ? {} : { askId: o.id }) };
}

export class Egress {
  private current: EgressPolicy;
  private generation = 0;
  /** Ask mode (--on-unlisted ask): where a request for an unlisted name waits; undefined: refuse. */
  ask: AskGate | undefined;

  constructor(
    policy: EgressPolicy,
    readonly pins: PinTable,
    readonly decisions: DecisionLog,
    readonly targets: DialTargets,
    readonly options: EgressOptions,
    /** Byte budgets per rule (--budget): an allow by a rule whose budget is spent becomes a refusal, reason 'budget'. */
    readonly budgets?: ByteBudgets,
  ) {
    this.current = policy;
  }

  /** Audit mode: callers let refused flows through (link-local excepted) after recording them. */
  get audit(): boolean {
    return this.options.mode === 'audit';
  }

  /**
   * Ask mode: is this refusal one to ask about? Only a name no rule covers
   * (never an address, a bad name, link-local or rebinding), and never in
   * audit mode (which lets it through anyway).
   */
  askable(d: Decision): d is Extract<Decision, { verdict: 'block' }> & { name: string } {
    return this.ask !== undefined && !this.audit && d.verdict === 'block' && d.reason === 'name-not-allowed' && d.name !== null;
  }

  /** Ask mode's allow-once: this request (only) goes to `name`, dialed by name like any name the rules allow. */
  askedOnce(name: string): Extract<Decision, { verdict: 'allow' }> {
    return { verdict: 'allow', reason: 'asked-once', rule: null, name, dial: { kind: 'name', name } };
  }

  get policy(): EgressPolicy {
    return this.current;
  }

  /** Bumped by every setPolicy(): a flow decided under an older version is re-decided (recheck). */
  get version(): number {
    return this.generation;
  }

  /**
   * Replace the policy (allowlist reload). Established flows keep going
   * (unless the caller drops them); flows still in flight are re-decided by
   * recheck(), at the latest when their dial completes.
   */
  setPolicy(policy: EgressPolicy): void {
    this.current = policy;
    this.generation++;
  }

  /**
   * Is `f`, decided under an older policy, still allowed — to the same place —
   * by the current one? Unchanged version: yes, at no cost. Otherwise the
   * current policy decides again; `connected` (the address a by-name dial
   * reached) must pass its rebinding filter too. A refusal is recorded
   * (detail: `why`) and its id returned; in audit mode it is recorded as
   * would-block and the flow kept, except for link-local (metadata is never
   * let through by audit). A kept flow is marked current.
   */
  recheck(f: InFlight, why: string, connected?: string): Recheck {
    if (f.version === this.generation) return KEEP;
    const t = f.target;
    const fresh = t.kind === 'flow' ? this.decide(t.flow) : t.kind === 'name' ? this.decideName('tcp', t.name, t.port) : this.decideAddress(t.proto, t.address, t.port);
    const port = t.kind === 'flow' ? t.flow.port : t.port;
    const dst = t.kind === 'flow' ? t.flow.dst : t.kind === 'name' ? t.name : t.address;
    const detail = `allowlist changed ${why}`;
    let refusal: { reason: string; rule: string | null; name: string | null } | null = null;
    if (fresh.verdict === 'peek' && f.pinnedName !== undefined) refusal = this.pinStillAllowed(f.pinnedName, dst, port);
    else if (fresh.verdict === 'peek') refusal = { reason: 'no-name', rule: null, name: null }; // let out by address, it never gave a name
    else if (fresh.verdict === 'block') refusal = fresh;
    else if (!sameDial(fresh.dial, f.dial)) refusal = { reason: 'dial-changed', rule: fresh.rule, name: fresh.name };
    else if (connected !== undefined && f.dial.kind === 'name' && this.current.admitResolved([connected], port).admitted.length === 0) {
      refusal = { reason: 'rebinding', rule: fresh.rule, name: fresh.name };
    }
    if (refusal === null) {
      f.version = this.generation;
      return KEEP;
    }
    const name = refusal.name ?? (t.kind === 'name' ? t.name : t.kind === 'flow' ? (t.flow.peeked?.name ?? null) : null);
    const proto: FlowProto = t.kind === 'flow' ? (t.flow.peeked?.via === 'quic' ? 'quic' : t.flow.proto) : t.kind === 'address' ? t.proto : 'tcp';
    const id = this.recordBlock(refusal.reason, proto, dst, port, name, f.via, connected === undefined ? detail : `${detail} (connected to ${connected})`);
    if (this.audit && refusal.reason !== 'link-local') {
      f.version = this.generation;
      return KEEP;
    }
    return { keep: false, id, reason: refusal.reason };
  }

  /**
   * The decision for an address a proxy client named (a TCP target or a UDP
   * datagram's destination), at admission and at every re-decision
   * (recheck): decide(), then the rebinding filter names get
   * (policy.admitResolved), so that a literal cannot reach what a name
   * resolving to it could not: under --allow-all (no IP rules) loopback,
   * private and link-local addresses are refused unless --admit-resolved
   * admits them; an address an IP rule allows passes (the rule admits it).
   * A 'peek' (only hostname rules cover the port) is refused 'no-rule': an
   * address target has no name to check (RFC 6066 3 forbids literal
   * addresses in SNI). The NAT's guest flows are not decided here: they
   * have no filter at the SYN (the alias exemption, an empty rule set).
   */
  decideAddress(proto: 'tcp' | 'udp', address: string, port: number): Decision {
    const d = this.decide({ proto, dst: address, port });
    // UDP a hostname rule covers is peeked for a QUIC name only on the NAT's guest flows; a proxy's UDP datagram (SOCKS5) has no such reader: IP rules alone, as before.
    if (d.verdict === 'peek' && proto === 'udp') return { verdict: 'block', reason: 'udp-needs-ip-rule', rule: null, name: null };
    if (d.verdict === 'peek') {
      return { verdict: 'block', reason: 'no-rule', rule: null, name: null, detail: 'an address target needs an IP/CIDR rule (hostname rules cover this port: connect by name)' };
    }
    if (d.verdict !== 'allow') return d;
    const { refused } = this.current.admitResolved([address], port);
    if (refused.length === 0) return d;
    return { verdict: 'block', reason: 'rebinding', rule: null, name: null, detail: `${address} is in a special range (${refused[0]!.range}) nothing admits` };
  }

  /**
   * Audit mode dials refused flows anyway, but never into 169.254/16 unless
   * a rule inside it admits the address: the addresses of `addresses` an
   * audit dial may use, in order.
   */
  auditAddresses(addresses: readonly string[], port: number): string[] {
    const { refused } = this.current.admitResolved(addresses, port);
    const metadata = new Set(refused.filter((r) => r.range === 'link-local').map((r) => r.address));
    return addresses.filter((a) => !metadata.has(a));
  }

  decide(flow: FlowInput): Decision {
    return this.withBudget(this.current.decide(flow, this.pins));
  }

  /** The policy's decision for a target named by name (the proxy), with the rule's byte budget applied. */
  decideName(proto: 'tcp' | 'udp', name: string, port: number, via: 'target' | 'sni' | 'host' = 'target'): Decision {
    return this.withBudget(this.current.decideName(proto, name, port, via));
  }

  /** An allow by a rule whose byte budget is spent is a refusal (reason 'budget', the rule named). */
  private withBudget(d: Decision): Decision {
    if (d.verdict !== 'allow' || this.budgets === undefined || this.budgets.size === 0 || !this.budgets.spent(d.rule, true)) return d;
    return { verdict: 'block', reason: 'budget', rule: d.rule, name: d.name, detail: `byte budget ${this.budgets.describe(d.rule!) ?? d.rule} is spent` };
  }

  /** A flow cut because its rule's byte budget ran out while it was open: one refusal record naming the rule. */
  recordBudgetCut(proto: FlowProto, dst: string, port: number, rule: string, name: string | null, via: string | null): string {
    const id = this.decisions.nextId();
    this.decisions.record({
      id, decision: this.refusedVerdict(), reason: 'budget', rule, proto, dst: `${dst}:${port}`, name, via,
      detail: `byte budget ${this.budgets?.describe(rule) ?? rule} spent while open: reset`,
    });
    return id;
  }

  /** Decision for a fresh flow from the guest (no bytes seen yet). */
  decideFlow(proto: 'tcp' | 'udp' | 'icmp', dst: IPv4, port: number): Decision {
    return this.decide({ proto, dst: formatIPv4(dst), port });
  }

  /** A pinned flow's name still allowed on its port, its address still past the rebinding filter: null; else why not. */
  private pinStillAllowed(name: string, address: string, port: number): { reason: string; rule: string | null; name: string | null } | null {
    const byName = this.decideName('tcp', name, port, 'target');
    if (byName.verdict !== 'allow') return { reason: byName.verdict === 'block' ? byName.reason : 'name-not-allowed', rule: null, name };
    if (this.current.admitResolved([address], port).admitted.length === 0) return { reason: 'rebinding', rule: byName.rule, name };
    return null;
  }

  /** Logs a decision (rate-limited per destination) and returns its id. `ech`: for TLS flows. */
  record(decision: Decision, proto: FlowProto, dst: string, port: number, via: string | null, detail?: string, ech?: boolean, mark?: AskMark): string {
    const id = this.decisions.nextId();
    const r: DecisionRecord = {
      id,
      decision: decision.verdict === 'block' ? this.refusedVerdict() : 'allowed',
      reason: decision.verdict === 'peek' ? 'peek' : decision.reason,
      rule: decision.verdict === 'peek' ? null : decision.rule,
      proto,
      dst: `${dst}:${port}`,
      name: decision.verdict === 'peek' ? null : decision.name,
      via,
      ...(detail !== undefined ? { detail } : decision.verdict === 'block' && decision.detail !== undefined ? { detail: decision.detail } : {}),
      ...(ech !== undefined ? { ech } : {}),
      ...mark,
    };
    this.decisions.record(r);
    return id;
  }

  private refusedVerdict(): 'blocked' | 'would-block' {
    return this.audit ? 'would-block' : 'blocked';
  }

  /** Logs a refusal decided outside the policy (peek timeout, unreadable first bytes...). */
  recordBlock(reason: string, proto: FlowProto, dst: string, port: number, name: string | null, via: string | null, detail?: string, ech?: boolean, mark?: AskMark): string {
    const id = this.decisions.nextId();
    this.decisions.record({
      id, decision: this.refusedVerdict(), reason, rule: null, proto, dst: `${dst}:${port}`, name, via,
      ...(detail !== undefined ? { detail } : {}),
      ...(ech !== undefined ? { ech } : {}),
      ...mark,
    });
    return id;
  }
}

function sameDial(a: InFlight['dial'], b: InFlight['dial']): boolean {
  return a.kind === 'address' ? b.kind === 'address' && a.address === b.address : b.kind === 'name' && a.name === b.name;
}
