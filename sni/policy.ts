/**
 * The egress policy: one pure decision per flow, from (protocol, the
 * destination the guest chose, the name it sent if we peeked one, the rules,
 * the addresses Moat resolved) to allow / peek / block with a reason.
 *
 * The decision order (issue 5, sni/SNI-SPEC Part B) for a non-empty rule set:
 *  1. 169.254.0.0/16 (cloud metadata): only an IP/CIDR rule that contains
 *     dst AND lies inside 169.254.0.0/16 (`169.254.169.254`,
 *     `169.254.0.0/16:80`). A rule that merely contains link-local space
 *     (`0.0.0.0/0`, `128.0.0.0/1`, `169.0.0.0/8`) does not open it: nobody
 *     writing `0.0.0.0/0:80` meant "and the cloud's credentials too".
 *  2. The host alias (the host's own loopback): exempt if configured, else
 *     only an IP rule naming that exact address (`192.168.127.254[:port]`,
 *     or /32); a CIDR containing it (`192.168.0.0/16`) does not.
 *     warnings() names the rules that contain either without opening it.
 *  3. An IP/CIDR rule containing dst (port matching) allows, dialed by address.
 *  4. UDP: a port no hostname rule covers for UDP is refused
 *     'udp-needs-ip-rule'. A hostname rule covers UDP on its own port, or
 *     on 443 for a rule without one (QUIC, HTTP/3; never 80). Such a flow
 *     is peeked (the SNI of its QUIC Initial, sni/quic-initial.ts) and
 *     decided by step 7 with via 'quic'; pins never let UDP out by
 *     address (step 6 is TCP's).
 *  5. Hostname rules must "cover" the port: their own port, or 80/443 for a
 *     rule without one.
 *  6. Before a peek: on a port that is not 80/443, a destination Moat itself
 *     resolved for a covered name (the pin table) is allowed by address,
 *     unless it is a special range nobody admitted (DNS rebinding). Otherwise
 *     hold the connection and peek at the SNI / Host.
 *  7. After the peek: the canonical name must match a covering rule. The
 *     connection is then dialed BY NAME: Moat resolves it and connects to its
 *     own answers (filtered by admitResolved), never to the guest's dst. That
 *     is what defeats "SNI of an allowed name sent to the attacker's IP".
 * An empty rule set allows everything except 169.254/16 (unless allowLinkLocal).
 *
 * IPv6 (issue 19: no family may become the bypass). A dst is either family;
 * the same steps decide an IPv6 one, with IPv6 rules, the guest's IPv6
 * prefix and host alias, and sni/ranges6.ts's ranges:
 *  - An IPv6 address that IS an IPv4 address (IPv4-mapped ::ffff:0:0/96,
 *    -compatible ::/96, SIIT ::ffff:0:0:0/96, NAT64 64:ff9b::/96 and
 *    64:ff9b:1::/96) is decided as that IPv4 address, by IPv4 rules alone,
 *    and dialed at it (Moat acts as the NAT64): `::/0` opens none of them,
 *    `::ffff:169.254.169.254` is 169.254.169.254.
 *  - 6to4 (2002::/16) and Teredo (2001::/32) go THROUGH their embedded
 *    IPv4 relays: if any relay is a special IPv4 address the flow is refused
 *    (as 'link-local' for 169.254/16, else 'special-range') whatever the
 *    rules, even with an empty allowlist; otherwise it is an ordinary IPv6
 *    address.
 *  - Step 1's guarded ranges are fe80::/10 and fd00:ec2::/32 (cloud
 *    metadata, fd00:ec2::254): only an IPv6 rule lying inside one opens it;
 *    refused as 'link-local', so audit mode never lets them out either.
 *    admitResolved also guards ::1 as it guards 127/8.
 *  - IPv6 rules never match IPv4 destinations and IPv4 rules never match
 *    IPv6 ones (other than the embedded forms above). An IPv6 rule inside
 *    one such /96 (`::ffff:1.2.3.4`, `[64:ff9b::10.0.0.0/104]:443`) is
 *    compiled as the IPv4 rule it spells.
 *
 * Choices where the spec is silent (a firewall fails closed):
 *  - A dst that is neither a strict dotted quad nor an IPv6 address as
 *    ranges6.ts parseIpv6 takes it (no zone id), or a port outside 1..65535
 *    (port 0 cannot be connected to), is blocked 'no-rule' with a detail,
 *    even with an empty rule set: the caller has a bug, not a flow.
 *  - A protocol other than 'tcp' is treated like UDP (IP rules only): only
 *    TCP streams can be peeked.
 *  - 'icmp' (an echo request) has no port: its port is ignored and only an
 *    IP rule without a port (one that opens every UDP port too) allows it;
 *    otherwise 'icmp-needs-ip-rule'. Steps 1-3 apply as to UDP.
 *  - When several IP rules contain dst, the reported rule is the most
 *    specific (exact address, then longest prefix, then rule order). When
 *    several name rules match, the exact host rule wins, then the wildcard of
 *    the longest domain, then rule order.
 *  - `name` in a block decision for an unusable peeked name is the name as
 *    sent, cut to 256 characters (a Host header may be kilobytes).
 *  - An address in admitResolved that is not an IP address is refused as
 *    'reserved'.
 *  - admitResolved applies step 1's "inside" test to link-local AND loopback
 *    answers (a name resolving to 127.0.0.1 reaches the host as the alias
 *    does): only an IP rule or --admit-resolved network inside 169.254/16
 *    (127/8) admits them, never `0.0.0.0/0`.
 *
 * compile() turns the rules into maps and number arrays once, so decide(),
 * which runs for every SYN, does a few map lookups and integer compares.
 */
import { Address6 } from 'ip-address';
import { canonicalHostname, RuleError, type Rule } from '../dns/rules.js';
import {
  formatIpv4,
  inIpv4Network,
  ipv4Network,
  parseIpv4,
  parseIpv4Cidr,
  prefixMask,
  specialRangeOfIpv4,
  type Ipv4Network,
  type SpecialRange,
} from './ranges.js';
import {
  formatIpv6,
  embeddedIpv4,
  inIpv6Network,
  ipv6Network,
  ipv6NetInside,
  LINK_LOCAL6,
  LOOPBACK6,
  METADATA6,
  parseIp,
  parseIpv6,
  parseIpv6Cidr,
  specialRangeOfIpv6,
  type Ipv6Network,
} from './ranges6.js';

/** What the policy needs from the pin table (see sni/pins.ts PinTable). */
export interface PinView {
  namesFor(address: string): readonly string[];
}

export interface PolicyOptions {
  /** From dns/rules.ts parseRules. */
  rules: readonly Rule[];
  /** CIDR texts (--admit-resolved); a bare address means /32. Invalid -> compile() throws an Error naming it. */
  admitResolved?: readonly string[];
  guestSubnet: { network: string; prefix: number };
  /** The host alias address, e.g. '192.168.127.254', or null for none. */
  hostAlias: string | null;
  /** The guest's IPv6 prefix (its own ULA), or absent/null for an IPv4-only guest. */
  guestPrefix6?: { network: string; prefix: number } | null;
  /** The IPv6 host alias (the host's ::1 seen from the guest), or absent/null. Same rules as hostAlias. */
  hostAlias6?: string | null;
  /** Default false: the host alias needs an IP rule like any address. */
  hostAliasExempt?: boolean;
  /** Default false. Only matters with an empty allowlist. */
  allowLinkLocal?: boolean;
}

export interface FlowInput {
  /** 'icmp': an echo request; `port` is ignored (see the choices above). */
  proto: 'tcp' | 'udp' | 'icmp';
  /** The address the guest addressed: IPv4 dotted quad or IPv6 text (any RFC 4291 spelling, no zone id). */
  dst: string;
  port: number;
  /** undefined = not peeked yet. 'quic': the SNI of a QUIC Initial (UDP). */
  peeked?: { via: 'sni' | 'host' | 'quic'; name: string | null };
}

/** 'asked-once': not the policy's; ask mode's allow-once verdict (src/egress/ask-gate.ts) let this one request through. */
export type AllowReason = 'no-allowlist' | 'ip-rule' | 'host-alias-exempt' | 'name-sni' | 'name-host' | 'name-quic' | 'pinned' | 'name-target' | 'asked-once';

/**
 * How a name given to decideName() was learnt: peeked from the bytes (SNI,
 * Host), or named as the target by a proxy client (HTTP CONNECT authority,
 * absolute-form URI, SOCKS5 domain address).
 */
export type NameVia = 'sni' | 'host' | 'target';
export type BlockReason =
  | 'link-local'
  | 'host-alias'
  | 'no-rule'
  | 'udp-needs-ip-rule'
  | 'icmp-needs-ip-rule'
  | 'name-not-allowed'
  | 'no-name'
  | 'ip-literal-name'
  | 'bad-name'
  | 'rebinding'
  | 'special-range'
  // Never decided here: the service turns an allow into this when the rule's byte budget is spent (src/traffic/byte-budgets.ts).
  | 'budget';

export type Decision =
  | {
      verdict: 'allow';
      reason: AllowReason;
      rule: string | null;
      name: string | null;
      dial: { kind: 'address'; address: string } | { kind: 'name'; name: string };
    }
  | { verdict: 'peek'; rules: readonly string[] }
  | { verdict: 'block'; reason: BlockReason; rule: string | null; name: string | null; detail?: string };

/** An IPv4 address/CIDR rule as numbers. */
interface IpEntry {
  readonly network: number;
  readonly mask: number;
  readonly prefix: number;
  readonly port: number | null;
  readonly text: string;
}

/** An IPv6 address/CIDR rule. */
interface Ip6Entry extends Ipv6Network {
  readonly port: number | null;
  readonly text: string;
}

/** Everything IPv6 about a policy (compiled once). */
interface V6Config {
  readonly guest: Ipv6Network | null;
  readonly hostAlias: bigint | null;
  readonly admitNets: readonly Ipv6Network[];
  /** Longest prefix first (/128 rules first), then rule order. */
  readonly rules: readonly Ip6Entry[];
}

/** A host or wildcard rule, filed under its name/domain. */
interface NameEntry {
  readonly port: number | null;
  readonly text: string;
}

const LINK_LOCAL: Ipv4Network = { network: 0xa9fe0000, mask: prefixMask(16), prefix: 16 };
const LOOPBACK: Ipv4Network = { network: 0x7f000000, mask: prefixMask(8), prefix: 8 };

/** Does network `n` lie wholly inside `outer`? */
function netInside(n: Ipv4Network, outer: Ipv4Network): boolean {
  return n.prefix >= outer.prefix && ((n.network & outer.mask) >>> 0) === outer.network;
}

/** The range only a rule inside it may open (see the header, step 1 and admitResolved), or null. */
function guardedRange(address: number): Ipv4Network | null {
  if (inIpv4Network(address, LINK_LOCAL)) return LINK_LOCAL;
  if (inIpv4Network(address, LOOPBACK)) return LOOPBACK;
  return null;
}

/** IPv6's step-1 ranges (see the header), or null. */
function guardedRange6(address: bigint): Ipv6Network | null {
  if (inIpv6Network(address, METADATA6)) return METADATA6;
  if (inIpv6Network(address, LINK_LOCAL6)) return LINK_LOCAL6;
  return null;
}

/** admitResolved's guarded ranges for IPv6: step 1's and ::1. */
function admitGuard6(address: bigint): Ipv6Network | null {
  return address === 1n ? LOOPBACK6 : guardedRange6(address);
}

/** A rule that contains the host alias or link-local space without opening it (see warnings()). */
export interface BroadRuleWarning {
  rule: string;
  contains: 'host-alias' | 'link-local';
  /** One sentence for the log. */
  message: string;
}
const NO_RULES: readonly string[] = Object.freeze([]);
const MAX_REPORTED_NAME = 256;

function isDefaultPort(port: number): boolean {
  return port === 80 || port === 443;
}

/** Does a hostname rule with this port apply to a connection to `port`? */
function nameRuleCovers(rulePort: number | null, port: number): boolean {
  return rulePort === port || (rulePort === null && isDefaultPort(port));
}

/** UDP (QUIC): a hostname rule's own port, or 443 for a rule without one (HTTP/3 is never on 80). */
function nameRuleCoversUdp(rulePort: number | null, port: number): boolean {
  return rulePort === port || (rulePort === null && port === 443);
}

function ipRuleCovers(rulePort: number | null, port: number): boolean {
  return rulePort === null || rulePort === port;
}

export class EgressPolicy {
  /** No rules: everything allowed (but 169.254/16, see allowLinkLocal). */
  readonly empty: boolean;
  /** Rules as written, for 403 bodies and logs. */
  readonly ruleTexts: readonly string[];

  private constructor(
    rules: readonly Rule[],
    private readonly guest: Ipv4Network,
    private readonly hostAlias: number | null,
    private readonly hostAliasExempt: boolean,
    private readonly allowLinkLocal: boolean,
    private readonly admitNets: readonly Ipv4Network[],
    /** /32 rules by address, each list in rule order. */
    private readonly exactAddresses: ReadonlyMap<number, readonly IpEntry[]>,
    /** Shorter-than-/32 rules, longest prefix first, then rule order. */
    private readonly cidrs: readonly IpEntry[],
    private readonly hosts: ReadonlyMap<string, readonly NameEntry[]>,
    private readonly wildcards: ReadonlyMap<string, readonly NameEntry[]>,
    /** Texts of the hostname rules covering each port (80/443 include the portless rules). */
    private readonly coveringByPort: ReadonlyMap<number, readonly string[]>,
    /** The same for UDP (QUIC): portless rules cover 443 only. */
    private readonly udpCoveringByPort: ReadonlyMap<number, readonly string[]>,
    private readonly v6: V6Config,
  ) {
    this.empty = rules.length === 0;
    this.ruleTexts = Object.freeze(rules.map((r) => r.text));
  }

  /** Build a policy. Throws an Error naming any invalid configuration value. */
  static compile(opts: PolicyOptions): EgressPolicy {
    const guest = ipv4Network(opts.guestSubnet.network, opts.guestSubnet.prefix);
    if (guest === null) {
      throw new Error(`invalid guest subnet ${JSON.stringify(opts.guestSubnet.network)}/${String(opts.guestSubnet.prefix)}`);
    }
    let hostAlias: number | null = null;
    if (opts.hostAlias !== null) {
      hostAlias = parseIpv4(opts.hostAlias);
      if (hostAlias === null) throw new Error(`invalid host alias ${JSON.stringify(opts.hostAlias)}: expected an IPv4 address`);
    }
    let guest6: Ipv6Network | null = null;
    if (opts.guestPrefix6 != null) {
      guest6 = ipv6Network(opts.guestPrefix6.network, opts.guestPrefix6.prefix);
      if (guest6 === null) throw new Error(`invalid guest IPv6 prefix ${JSON.stringify(opts.guestPrefix6.network)}/${String(opts.guestPrefix6.prefix)}`);
    }
    let hostAlias6: bigint | null = null;
    if (opts.hostAlias6 != null) {
      hostAlias6 = parseIpv6(opts.hostAlias6);
      if (hostAlias6 === null) throw new Error(`invalid IPv6 host alias ${JSON.stringify(opts.hostAlias6)}: expected an IPv6 address`);
    }
    const admitNets: Ipv4Network[] = [];
    const admitNets6: Ipv6Network[] = [];
    for (const text of opts.admitResolved ?? []) {
      const t = text.trim();
      const n = parseIpv4Cidr(t);
      const n6 = n === null ? parseIpv6Cidr(t) : null;
      if (n === null && n6 === null) {
        throw new Error(
          `invalid --admit-resolved ${JSON.stringify(text)}: expected a CIDR like 10.0.0.0/8 or fd00:1234::/48 (host bits zero) or an IPv4 or IPv6 address (no zone id)`,
        );
      }
      if (n !== null) admitNets.push(n);
      else admitNets6.push(n6!);
    }
    const rules6: Ip6Entry[] = [];

    const exact = new Map<number, IpEntry[]>();
    const cidrs: IpEntry[] = [];
    const hosts = new Map<string, NameEntry[]>();
    const wildcards = new Map<string, NameEntry[]>();
    const covering = new Map<number, string[]>();
    const udpCovering = new Map<number, string[]>();
    const addTo = (m: Map<number, string[]>, port: number, text: string): void => {
      let list = m.get(port);
      if (list === undefined) m.set(port, (list = []));
      list.push(text);
    };
    const addCovering = (port: number, text: string): void => addTo(covering, port, text);
    const file = (m: Map<string, NameEntry[]>, key: string, e: NameEntry): void => {
      let list = m.get(key);
      if (list === undefined) m.set(key, (list = []));
      list.push(e);
    };

    for (const r of opts.rules) {
      switch (r.kind) {
        case 'address':
        case 'cidr': {
          const text = r.kind === 'address' ? r.address : `${r.network}/${r.prefixLength}`;
          let n: Ipv4Network | null;
          if (r.family === 6) {
            const n6 = parseIpv6Cidr(text);
            if (n6 === null) throw new Error(`rule ${JSON.stringify(r.text)}: not an IPv6 address or network`);
            // A rule inside one /96 that IS IPv4 (`::ffff:1.2.3.4`, `64:ff9b::10.0.0.0/104`) is that IPv4
            // rule: such destinations are decided as IPv4 (see the header), so as an IPv6 rule it would match nothing.
            const same = n6.prefix >= 96 ? embeddedIpv4(n6.network) : null;
            if (same === null || !same.same) {
              rules6.push({ ...n6, port: r.port, text: r.text });
              break;
            }
            n = { network: same.ipv4[0]!, mask: prefixMask(n6.prefix - 96), prefix: n6.prefix - 96 };
          } else n = parseIpv4Cidr(text);
          if (n === null) throw new Error(`rule ${JSON.stringify(r.text)}: not an IPv4 address or network`);
          const e: IpEntry = { ...n, port: r.port, text: r.text };
          if (n.prefix === 32) {
            let list = exact.get(n.network);
            if (list === undefined) exact.set(n.network, (list = []));
            list.push(e);
          } else cidrs.push(e);
          break;
        }
        case 'host':
        case 'wildcard': {
          file(r.kind === 'host' ? hosts : wildcards, r.kind === 'host' ? r.host : r.domain, { port: r.port, text: r.text });
          if (r.port === null) {
            addCovering(80, r.text);
            addCovering(443, r.text);
          } else addCovering(r.port, r.text);
          addTo(udpCovering, r.port ?? 443, r.text);
          break;
        }
      }
    }
    // Array.prototype.sort is stable: equal prefixes stay in rule order.
    cidrs.sort((a, b) => b.prefix - a.prefix);
    rules6.sort((a, b) => b.prefix - a.prefix);
    const frozenCovering = new Map<number, readonly string[]>();
    for (const [port, texts] of covering) frozenCovering.set(port, Object.freeze(texts));
    const frozenUdp = new Map<number, readonly string[]>();
    for (const [port, texts] of udpCovering) frozenUdp.set(port, Object.freeze(texts));

    return new EgressPolicy(
      opts.rules,
      guest,
      hostAlias,
      opts.hostAliasExempt ?? false,
      opts.allowLinkLocal ?? false,
      admitNets,
      exact,
      cidrs,
      hosts,
      wildcards,
      frozenCovering,
      frozenUdp,
      { guest: guest6, hostAlias: hostAlias6, admitNets: admitNets6, rules: rules6 },
    );
  }

  decide(flow: FlowInput, pins: PinView): Decision {
    const dst = typeof flow.dst === 'string' ? parseIpv4(flow.dst) : null;
    if (dst === null) {
      const dst6 = typeof flow.dst === 'string' ? parseIpv6(flow.dst) : null;
      if (dst6 === null) return block('no-rule', null, null, 'invalid destination address');
      return this.decide6(flow, dst6, pins);
    }
    // Echo has no port; 0 is covered only by IP rules without one (ipRuleCovers).
    const port = flow.proto === 'icmp' ? 0 : flow.port;
    if (flow.proto !== 'icmp' && (!Number.isInteger(port) || port < 1 || port > 65535)) {
      return block('no-rule', null, null, 'invalid destination port');
    }
    const byAddress = { kind: 'address', address: flow.dst } as const;
    const linkLocal = inIpv4Network(dst, LINK_LOCAL);

    if (this.empty) {
      if (linkLocal && !this.allowLinkLocal) return block('link-local', null, null);
      return { verdict: 'allow', reason: 'no-allowlist', rule: null, name: null, dial: byAddress };
    }

    // 1. Metadata and other link-local services: only a rule inside 169.254/16.
    if (linkLocal) {
      const ip = this.ipRuleFor(dst, port, LINK_LOCAL);
      if (ip === null) return block('link-local', null, null);
      return { verdict: 'allow', reason: 'ip-rule', rule: ip.text, name: null, dial: byAddress };
    }

    // 2. The host alias reaches the host's loopback: policy applies unless exempted.
    if (dst === this.hostAlias) {
      if (this.hostAliasExempt) return { verdict: 'allow', reason: 'host-alias-exempt', rule: null, name: null, dial: byAddress };
      const ip = this.exactRuleFor(dst, port);
      if (ip === null) return block('host-alias', null, null);
      return { verdict: 'allow', reason: 'ip-rule', rule: ip.text, name: null, dial: byAddress };
    }

    // 3. IP/CIDR rules decide by address alone.
    const ip = this.ipRuleFor(dst, port);
    if (ip !== null) return { verdict: 'allow', reason: 'ip-rule', rule: ip.text, name: null, dial: byAddress };

    if (flow.proto === 'icmp') return block('icmp-needs-ip-rule', null, null);
    return this.nameSteps(flow, port, byAddress, pins, dst);
  }

  /**
   * decide() for an IPv6 destination (see the header's IPv6 paragraph): the
   * embedded-IPv4 forms first, then steps 1-3 with IPv6's ranges, alias and
   * rules, then the same name steps as IPv4.
   */
  private decide6(flow: FlowInput, dst: bigint, pins: PinView): Decision {
    const port = flow.proto === 'icmp' ? 0 : flow.port;
    if (flow.proto !== 'icmp' && (!Number.isInteger(port) || port < 1 || port > 65535)) return block('no-rule', null, null, 'invalid destination port');
    const embedded = embeddedIpv4(dst);
    if (embedded !== null && embedded.same) return this.decide({ ...flow, dst: formatIpv4(embedded.ipv4[0]!) }, pins);
    if (embedded !== null) {
      for (const relay of embedded.ipv4) {
        const range = specialRangeOfIpv4(relay, this.guest);
        if (range === null) continue;
        const detail = `${embedded.form} through ${formatIpv4(relay)} (${range})`;
        return block(range === 'link-local' ? 'link-local' : 'special-range', null, null, detail);
      }
    }
    const text = formatIpv6(dst);
    const byAddress = { kind: 'address', address: text } as const;
    const guarded = guardedRange6(dst);

    if (this.empty) {
      if (guarded !== null && !this.allowLinkLocal) return block('link-local', null, null);
      return { verdict: 'allow', reason: 'no-allowlist', rule: null, name: null, dial: byAddress };
    }
    // 1. fe80::/10 and the metadata fd00:ec2::/32: only a rule inside them.
    if (guarded !== null) {
      const ip = this.ip6RuleFor(dst, port, guarded);
      if (ip === null) return block('link-local', null, null);
      return { verdict: 'allow', reason: 'ip-rule', rule: ip.text, name: null, dial: byAddress };
    }
    // 2. The IPv6 host alias, as the IPv4 one.
    if (dst === this.v6.hostAlias) {
      if (this.hostAliasExempt) return { verdict: 'allow', reason: 'host-alias-exempt', rule: null, name: null, dial: byAddress };
      const ip = this.ip6RuleFor(dst, port, { network: dst, mask: (1n << 128n) - 1n, prefix: 128 });
      if (ip === null) return block('host-alias', null, null);
      return { verdict: 'allow', reason: 'ip-rule', rule: ip.text, name: null, dial: byAddress };
    }
    // 3. IPv6 rules.
    const ip = this.ip6RuleFor(dst, port);
    if (ip !== null) return { verdict: 'allow', reason: 'ip-rule', rule: ip.text, name: null, dial: byAddress };
    if (flow.proto === 'icmp') return block('icmp-needs-ip-rule', null, null);
    return this.nameSteps({ ...flow, dst: text }, port, byAddress, pins, dst);
  }

  /**
   * Steps 4-7, the same for both families: `flow.dst` is the address's one
   * text form (the pin table's key), `dst` the address as a number (a
   * bigint for IPv6), for step 6's rebinding guard.
   */
  private nameSteps(
    flow: FlowInput,
    port: number,
    byAddress: { readonly kind: 'address'; readonly address: string },
    pins: PinView,
    dst: number | bigint,
  ): Decision {
    // 4. A datagram flow has a name only in a QUIC Initial, on a port a hostname rule covers for UDP.
    const udp = flow.proto !== 'tcp';
    const covering = udp ? this.udpCovering(port) : (this.coveringByPort.get(port) ?? NO_RULES);
    if (udp && covering.length === 0) return block('udp-needs-ip-rule', null, null);

    // 5. Some hostname rule must apply to this port at all.
    if (covering.length === 0) return block('no-rule', null, null);

    const peeked = flow.peeked;
    if (udp && (peeked === undefined || peeked === null)) return { verdict: 'peek', rules: covering };
    if (peeked === undefined || peeked === null) {
      // 6. Ports we cannot expect to peek (ssh, ...) go only to addresses
      //    Moat resolved for an allowed name. 80/443 always peek: the name on
      //    the wire decides there, and the dial goes by name anyway.
      if (!isDefaultPort(port)) {
        for (const name of pins.namesFor(flow.dst)) {
          const rule = this.nameRuleFor(name, port);
          if (rule === null) continue;
          const range = this.unadmittedRange(dst, port);
          if (range !== null) return block('rebinding', rule.text, name, range);
          return { verdict: 'allow', reason: 'pinned', rule: rule.text, name, dial: byAddress };
        }
      }
      return { verdict: 'peek', rules: covering };
    }

    // 7. The peeked name decides; the connection is dialed by that name.
    const raw = peeked.name;
    if (raw === null || raw === undefined) return block('no-name', null, null);
    if (typeof raw !== 'string') return block('bad-name', null, null, 'name is not a string');
    const canonical = canonicalHostname(raw);
    if (canonical instanceof RuleError) {
      const reported = raw.length > MAX_REPORTED_NAME ? raw.slice(0, MAX_REPORTED_NAME) : raw;
      return block(isIpLiteral(raw, canonical) ? 'ip-literal-name' : 'bad-name', null, reported, canonical.reason);
    }
    // A QUIC name on a TCP flow (or a TLS name on a UDP one) is a caller's bug: refused.
    if ((peeked.via === 'quic') !== udp) return block('no-name', null, null, `a ${peeked.via} name on a ${flow.proto} flow`);
    const rule = this.nameRuleFor(canonical, port, udp);
    if (rule === null) return block('name-not-allowed', null, canonical);
    return {
      verdict: 'allow',
      reason: peeked.via === 'host' ? 'name-host' : peeked.via === 'quic' ? 'name-quic' : 'name-sni',
      rule: rule.text,
      name: canonical,
      dial: { kind: 'name', name: canonical },
    };
  }

  /**
   * The decision for a connection that names its destination and has no
   * address of its own (a proxy request: `CONNECT name:port`, `GET
   * http://name/`, SOCKS5 with a domain address). Only hostname rules can
   * allow it, by the same coverage as step 7 of decide(): the rule's own
   * port, or 80/443 for a rule without one. The connection is dialed BY
   * NAME, to addresses Moat resolves (filter them with admitResolved).
   *
   *  - An IP literal is refused 'ip-literal-name': a caller with an address
   *    target must ask decide() with it as dst, where IP rules and the
   *    link-local refusal apply.
   *  - UDP is refused 'udp-needs-ip-rule', as in decide().
   *  - An empty rule set allows every name ('no-allowlist').
   */
  decideName(proto: 'tcp' | 'udp', name: string, port: number, via: NameVia = 'target'): Decision {
    if (!Number.isInteger(port) || port < 1 || port > 65535) return block('no-rule', null, null, 'invalid destination port');
    if (typeof name !== 'string') return block('bad-name', null, null, 'name is not a string');
    const canonical = canonicalHostname(name);
    if (canonical instanceof RuleError) {
      const reported = name.length > MAX_REPORTED_NAME ? name.slice(0, MAX_REPORTED_NAME) : name;
      return block(isIpLiteral(name, canonical) ? 'ip-literal-name' : 'bad-name', null, reported, canonical.reason);
    }
    const byName = { kind: 'name', name: canonical } as const;
    if (this.empty) return { verdict: 'allow', reason: 'no-allowlist', rule: null, name: canonical, dial: byName };
    if (proto !== 'tcp') return block('udp-needs-ip-rule', null, canonical);
    const rule = this.nameRuleFor(canonical, port);
    if (rule === null) return block('name-not-allowed', null, canonical);
    const reason: AllowReason = via === 'sni' ? 'name-sni' : via === 'host' ? 'name-host' : 'name-target';
    return { verdict: 'allow', reason, rule: rule.text, name: canonical, dial: byName };
  }

  /**
   * DNS-rebinding filter for a hostname-authorised dial: which of the
   * addresses Moat resolved may be dialed, in input order. An address in a
   * special range is refused unless a port-compatible IP/CIDR rule or an
   * --admit-resolved network contains it; non-IPv4 text is refused as
   * 'reserved'.
   */
  admitResolved(
    addresses: readonly string[],
    port: number,
  ): { admitted: string[]; refused: { address: string; range: SpecialRange }[] } {
    const admitted: string[] = [];
    const refused: { address: string; range: SpecialRange }[] = [];
    for (const address of addresses) {
      const range = this.unadmitted(address, port);
      if (range === null) admitted.push(address);
      else refused.push({ address, range });
    }
    return { admitted, refused };
  }

  /** Step 6's guard: the special range of `dst` (either family) that nothing admits on `port`, or null. */
  private unadmittedRange(dst: number | bigint, port: number): SpecialRange | null {
    if (typeof dst === 'number') {
      const range = specialRangeOfIpv4(dst, this.guest);
      return range !== null && !this.admitsResolved(dst, port) ? range : null;
    }
    const range = specialRangeOfIpv6(dst, this.v6.guest, this.guest);
    return range !== null && !this.admitsResolved6(dst, port) ? range : null;
  }

  /** admitResolved for one address: null (admitted) or the special range nothing admits. */
  private unadmitted(address: string, port: number): SpecialRange | null {
    const ip = parseIp(address);
    if (ip === null) return 'reserved';
    let v4 = ip.family === 4 ? ip.address : null;
    if (ip.family === 6) {
      const embedded = embeddedIpv4(ip.address);
      if (embedded !== null && embedded.same) v4 = embedded.ipv4[0]!;
      else {
        // A 6to4/Teredo relay in a special range is never admitted (decide6).
        if (embedded !== null) for (const relay of embedded.ipv4) {
          const r = specialRangeOfIpv4(relay, this.guest);
          if (r !== null) return r;
        }
        const range = specialRangeOfIpv6(ip.address, this.v6.guest, this.guest);
        return range === null || this.admitsResolved6(ip.address, port) ? null : range;
      }
    }
    const range = specialRangeOfIpv4(v4!, this.guest);
    return range === null || this.admitsResolved(v4!, port) ? null : range;
  }

  private admitsResolved6(address: bigint, port: number): boolean {
    const guarded = admitGuard6(address);
    if (this.ip6RuleFor(address, port, guarded ?? undefined) !== null) return true;
    for (const n of this.v6.admitNets) if (inIpv6Network(address, n) && (guarded === null || ipv6NetInside(n, guarded))) return true;
    return false;
  }

  /** The most specific IPv6 rule containing `address` whose port allows `port` (with `within`: lying inside it). */
  private ip6RuleFor(address: bigint, port: number, within?: Ipv6Network): Ip6Entry | null {
    for (const e of this.v6.rules) {
      if ((address & e.mask) === e.network && ipRuleCovers(e.port, port) && (within === undefined || ipv6NetInside(e, within))) return e;
    }
    return null;
  }

  private admitsResolved(address: number, port: number): boolean {
    const guarded = guardedRange(address);
    if (this.ipRuleFor(address, port, guarded ?? undefined) !== null) return true;
    for (const n of this.admitNets) if (inIpv4Network(address, n) && (guarded === null || netInside(n, guarded))) return true;
    return false;
  }

  /**
   * The rules that contain the host alias or link-local space but, by the
   * decision order above, do not open them: the operator may think they do.
   * One entry per (rule, range), in rule order; start-up and reload log them.
   */
  warnings(): BroadRuleWarning[] {
    const out: BroadRuleWarning[] = [];
    const entries = [...[...this.exactAddresses.values()].flat(), ...this.cidrs].sort((a, b) => this.ruleTexts.indexOf(a.text) - this.ruleTexts.indexOf(b.text));
    for (const e of entries) {
      if (this.hostAlias !== null && !this.hostAliasExempt && e.prefix < 32 && inIpv4Network(this.hostAlias, e)) {
        const alias = formatIpv4(this.hostAlias);
        out.push({ rule: e.text, contains: 'host-alias', message: `rule ${e.text} contains the host alias ${alias} but does not open it (the host's loopback): add --allow ${alias}[:port] to allow it` });
      }
      // Overlaps 169.254/16 without lying inside it: it contains all of it.
      if (e.prefix < LINK_LOCAL.prefix && inIpv4Network(LINK_LOCAL.network, e)) {
        out.push({ rule: e.text, contains: 'link-local', message: `rule ${e.text} contains 169.254.0.0/16 (cloud metadata) but does not open it: only a rule inside 169.254.0.0/16 does` });
      }
    }
    const rules6 = [...this.v6.rules].sort((a, b) => this.ruleTexts.indexOf(a.text) - this.ruleTexts.indexOf(b.text));
    for (const e of rules6) {
      const alias = this.v6.hostAlias;
      if (alias !== null && !this.hostAliasExempt && e.prefix < 128 && inIpv6Network(alias, e)) {
        const a = formatIpv6(alias);
        out.push({ rule: e.text, contains: 'host-alias', message: `rule ${e.text} contains the IPv6 host alias ${a} but does not open it (the host's loopback): add --allow ${a} to allow it` });
      }
      for (const g of [METADATA6, LINK_LOCAL6]) {
        if (e.prefix < g.prefix && inIpv6Network(g.network, e)) {
          const what = g === METADATA6 ? 'fd00:ec2::/32 (cloud metadata)' : 'fe80::/10 (link-local)';
          out.push({ rule: e.text, contains: 'link-local', message: `rule ${e.text} contains ${what} but does not open it: only a rule inside it does` });
        }
      }
    }
    return out;
  }

  /**
   * The most specific IP rule containing `address` whose port allows `port`;
   * with `within`, only rules lying inside that network count.
   */
  private ipRuleFor(address: number, port: number, within?: Ipv4Network): IpEntry | null {
    const exact = this.exactRuleFor(address, port);
    if (exact !== null) return exact;
    for (const e of this.cidrs) {
      if (((address & e.mask) >>> 0) === e.network && ipRuleCovers(e.port, port) && (within === undefined || netInside(e, within))) return e;
    }
    return null;
  }

  /** A rule naming exactly `address` (a /32) whose port allows `port`. */
  private exactRuleFor(address: number, port: number): IpEntry | null {
    const exact = this.exactAddresses.get(address);
    if (exact !== undefined) for (const e of exact) if (ipRuleCovers(e.port, port)) return e;
    return null;
  }

  /**
   * The rule allowing canonical `name` on `port`: an exact host rule, else
   * the wildcard of the longest domain strictly above the name (a wildcard
   * never matches its own apex, RFC 4592 semantics as dns/rules.ts defines).
   */
  private nameRuleFor(name: string, port: number, udp = false): NameEntry | null {
    const covers = udp ? nameRuleCoversUdp : nameRuleCovers;
    const exact = this.hosts.get(name);
    if (exact !== undefined) for (const e of exact) if (covers(e.port, port)) return e;
    if (this.wildcards.size === 0) return null;
    for (let dot = name.indexOf('.'); dot >= 0; dot = name.indexOf('.', dot + 1)) {
      const list = this.wildcards.get(name.slice(dot + 1));
      if (list !== undefined) for (const e of list) if (covers(e.port, port)) return e;
    }
    return null;
  }

  /** Texts of the hostname rules covering UDP `port` (see step 4). */
  private udpCovering(port: number): readonly string[] {
    return this.udpCoveringByPort.get(port) ?? NO_RULES;
  }
}

function block(reason: BlockReason, rule: string | null, name: string | null, detail?: string): Decision {
  return detail === undefined
    ? { verdict: 'block', reason, rule, name }
    : { verdict: 'block', reason, rule, name, detail };
}

/**
 * Is a name that canonicalHostname refused an IP literal? A numeric last
 * label (`1.2.3.4`, `1.2.3.4.`, `0x7f`) or an IPv6 address, bare or in
 * brackets (`::1`, `[::1]`). RFC 6066 3 forbids literal addresses in SNI, and
 * a Host naming an address asks us to dial the guest's chosen address.
 */
function isIpLiteral(raw: string, err: RuleError): boolean {
  if (err.reason === 'rule:numeric-name') return true;
  if (!raw.includes(':') || raw.length > 64) return false;
  const inner = raw.startsWith('[') && raw.endsWith(']') ? raw.slice(1, -1) : raw;
  try {
    return Address6.isValid(inner);
  } catch {
    return false;
  }
}
