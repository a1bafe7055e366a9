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
import type { DialTargets } from './dial-targets.js';

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
  /** Refuse TLS ClientHellos that carry encrypted_client_hello (reason 'ech'), GREASE ECH included. */
  refuseEch?: boolean;
}

export const DEFAULT_EGRESS_OPTIONS: Readonly<EgressOptions> = Object.freeze({
  mode: 'enforce' as EgressMode,
  peekTimeoutMs: 10_000,
  // The largest ClientHello the protocol allows spans ~132 KiB of records; real ones are 0.5-8 KiB.
  maxPeekBytes: 160 * 1024,
  maxHeld: 1024,
  refusalLingerMs: 5_000,
});

export class Egress {
  private current: EgressPolicy;

  constructor(
    policy: EgressPolicy,
    readonly pins: PinTable,
    readonly decisions: DecisionLog,
    readonly targets: DialTargets,
    readonly options: EgressOptions,
  ) {
    this.current = policy;
  }

  /** Audit mode: callers let refused flows through (link-local excepted) after recording them. */
  get audit(): boolean {
    return this.options.mode === 'audit';
  }

  get policy(): EgressPolicy {
    return this.current;
  }

  /** Replace the policy (allowlist reload); flows already decided keep going. */
  setPolicy(policy: EgressPolicy): void {
    this.current = policy;
  }

  decide(flow: FlowInput): Decision {
    return this.current.decide(flow, this.pins);
  }

  /** Decision for a fresh flow from the guest (no bytes seen yet). */
  decideFlow(proto: 'tcp' | 'udp', dst: IPv4, port: number): Decision {
    return this.decide({ proto, dst: formatIPv4(dst), port });
  }

  /** Logs a decision (rate-limited per destination) and returns its id. `ech`: for TLS flows. */
  record(decision: Decision, proto: 'tcp' | 'udp', dst: string, port: number, via: string | null, detail?: string, ech?: boolean): string {
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
    };
    this.decisions.record(r);
    return id;
  }

  private refusedVerdict(): 'blocked' | 'would-block' {
    return this.audit ? 'would-block' : 'blocked';
  }

  /** Logs a refusal decided outside the policy (peek timeout, unreadable first bytes...). */
  recordBlock(reason: string, proto: 'tcp' | 'udp', dst: string, port: number, name: string | null, via: string | null, detail?: string, ech?: boolean): string {
    const id = this.decisions.nextId();
    this.decisions.record({
      id, decision: this.refusedVerdict(), reason, rule: null, proto, dst: `${dst}:${port}`, name, via,
      ...(detail !== undefined ? { detail } : {}),
      ...(ech !== undefined ? { ech } : {}),
    });
    return id;
  }
}
