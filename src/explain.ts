/**
 * `moat explain`: what `moat serve` with an allowlist would do for one
 * destination, told by the same code that would do it — the zone table and
 * responder for DNS, the egress policy (with the pins start-up would make)
 * for the connection. Nothing is connected to.
 */
import dnsPacket from 'dns-packet';
import { canonicalHostname, RuleError } from '../dns/rules.js';
import type { Resolver } from '../dns/preresolve.js';
import type { Decision } from '../sni/policy.js';
import { formatIPv4, formatIPv6, parseIPv4, parseIPv6 } from '../netstack/addr.js';
import { parseIpv6 } from '../sni/ranges6.js';
import type { ExplainConfig } from './config.js';
import { AllowlistRuntime } from './egress/allowlist-runtime.js';
import { DEFAULT_EGRESS_OPTIONS } from './egress/egress.js';
import { NULL_LOGGER } from './log.js';
import { ipv6HostLoopback } from './host-loopback.js';
import { classifyDestination, type Destination } from './nat/destination.js';

export interface Explanation {
  lines: string[];
  allowed: boolean;
}

/** An address target (IPv4 as netstack reads it, or IPv6) is explained by address; anything else as a name. */
function isAddress(target: string): boolean {
  return IPV4.test(target) || parseIpv6(target) !== null;
}
const IPV4 = /^\d{1,3}(?:\.\d{1,3}){3}$/;

export async function explain(c: ExplainConfig, resolver: Resolver, signal?: AbortSignal): Promise<Explanation> {
  const runtime = await AllowlistRuntime.start(
    {
      rules: c.allow,
      resolver,
      gatewayIpv4: formatIPv4(c.gatewayIp),
      hostAliasIpv4: formatIPv4(c.hostIp),
      sinkhole: c.sinkhole,
      guestSubnet: { network: formatIPv4(c.network), prefix: c.prefix },
      // The IPv6 host alias and guest prefix, as serve passes them (src/network.ts): without them an IPv6 target would be decided as no guest sees it.
      ...(c.ipv6 === undefined ? {} : {
        ipv6: { guestPrefix: { network: formatIPv6(c.ipv6.prefix), prefix: 64 }, gatewayIpv6: formatIPv6(c.ipv6.gatewayIp), hostAliasIpv6: formatIPv6(c.ipv6.hostIp) },
      }),
      admitResolved: c.admitResolved,
      hostAliasExempt: c.allowHostAlias,
      allowLinkLocal: c.allowLinkLocal,
      egress: DEFAULT_EGRESS_OPTIONS,
      now: () => performance.now(),
      ...(signal ? { signal } : {}),
    },
    NULL_LOGGER,
  );
  try {
    const e = isAddress(c.target) ? explainAddress(c, runtime) : await explainName(c, runtime);
    // The rules serve would warn about at start-up (a CIDR containing the host alias or 169.254/16 does not open them).
    for (const w of runtime.egress.policy.warnings()) e.lines.push(`warning      ${w.message}`);
    return e;
  } finally {
    await runtime.close();
  }
}

function explainAddress(c: ExplainConfig, runtime: AllowlistRuntime): Explanation {
  const shown = c.target.includes(':') ? `[${c.target}]` : c.target;
  const lines = [`destination  ${shown}:${c.port} (an address: no DNS involved)`];
  const d = runtime.egress.decide({ proto: 'tcp', dst: c.target, port: c.port });
  lines.push(...describeDecision(d, 'tcp', c));
  if (d.verdict === 'peek') {
    lines.push('             the connection is dialed only if its SNI/Host names an allowed host, and then to that');
    lines.push('             host\'s own addresses, not to this one');
  }
  const u = runtime.egress.decide({ proto: 'udp', dst: c.target, port: c.port });
  const udp =
    u.verdict === 'allow'
      ? `allowed (${u.reason}${u.rule ? `, rule ${u.rule}` : ''})`
      : u.verdict === 'peek'
        ? `QUIC only: held for the SNI in its Initial (${u.rules.join(', ')}); an allowed name is sent to that name's addresses`
        : `blocked (${u.reason})`;
  lines.push(`udp          ${udp}`);
  return { lines, allowed: d.verdict === 'allow' && !(d.dial.kind === 'address' && natRefuses(d.dial.address, c)) };
}

async function explainName(c: ExplainConfig, runtime: AllowlistRuntime): Promise<Explanation> {
  const canonical = canonicalHostname(c.target);
  if (canonical instanceof RuleError) return { lines: [`destination  "${c.target}" is not a hostname or IP address (${canonical.reason})`], allowed: false };
  const lines = [`destination  ${canonical}:${c.port}`];

  // DNS: ask the very responder the gateway would use (AAAA too when serve's guest has IPv6: it answers both).
  const dns = await askDns(runtime, canonical, 'A', lines);
  if (c.ipv6 !== undefined) await askDns(runtime, canonical, 'AAAA', lines);

  // The connection: the guest dials what DNS gave it (or anything at all), sending this name.
  const dst = dns?.addresses[0] ?? '0.0.0.0';
  let d = runtime.egress.decide({ proto: 'tcp', dst, port: c.port });
  if (d.verdict === 'peek') {
    const via = c.port === 80 ? 'host' : 'sni';
    lines.push(`connect      held: Moat reads the ${via === 'sni' ? 'TLS SNI' : 'HTTP Host'} before dialing anything`);
    d = runtime.egress.decide({ proto: 'tcp', dst, port: c.port, peeked: { via, name: canonical } });
  }
  lines.push(...describeDecision(d, 'tcp', c));
  if (d.verdict === 'allow' && d.dial.kind === 'name') {
    try {
      const addresses = await runtime.egress.targets.addressesFor(d.dial.name);
      const { admitted, refused } = runtime.egress.policy.admitResolved(addresses, c.port);
      if (admitted.length > 0) lines.push(`dial         ${admitted.join(', ')} (resolved by Moat)`);
      if (refused.length > 0) lines.push(`refused      ${refused.map((r) => `${r.address} (${r.range}; --admit-resolved to allow)`).join(', ')}`);
      if (admitted.length === 0) return { lines: [...lines, 'rebinding    every address the name resolves to is in a refused range'], allowed: false };
    } catch (e) {
      return { lines: [...lines, `dial         the name does not resolve now: ${(e as Error).message}`], allowed: false };
    }
  }
  return { lines, allowed: d.verdict === 'allow' };
}

/** One question to the gateway's responder, its answer as a `dns` line; the decision, for the connection that follows. */
async function askDns(runtime: AllowlistRuntime, name: string, type: 'A' | 'AAAA', lines: string[]) {
  const query = dnsPacket.encode({ type: 'query', id: 1, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });
  const dns = (await runtime.dns.responder.respond(query, 'udp'))?.decision;
  if (dns === undefined) lines.push(`dns          ${type}: (no answer)`);
  else {
    const sinkhole = type === 'A' ? '0.0.0.0' : '::';
    const answer = dns.addresses.length > 0 ? `${type} ${dns.addresses.join(', ')}` : dns.outcome === 'sinkholed' ? `${type} ${sinkhole} (sinkholed)` : `${type} none (${dns.rcode})`;
    lines.push(`dns          ${answer}  [zone ${dns.zone ?? '?'}, ${dns.outcome}]`);
  }
  return dns;
}

function describeDecision(d: Decision, proto: 'tcp' | 'udp', c: ExplainConfig): string[] {
  switch (d.verdict) {
    case 'allow':
      return [
        `${proto}          allowed: ${d.reason}${d.rule ? ` (rule ${d.rule})` : ''}` +
          (d.dial.kind === 'address' ? `, ${dialedAddress(d.dial.address, c)}` : `, dialed by name ${d.dial.name}`),
      ];
    case 'peek':
      return [`${proto}          needs a name: hostname rules for this port: ${d.rules.join(', ')}`];
    case 'block':
      return [`${proto}          blocked: ${d.reason}${d.detail ? ` (${d.detail})` : ''}${d.rule ? ` (rule ${d.rule})` : ''}`];
  }
}

/**
 * Where the NAT really connects for an address the policy allowed: the same
 * classifyDestination serve uses, so the host alias shows as the host's
 * loopback (what Moat dials) and the NAT's own refusals show as refusals.
 */
function dialedAddress(address: string, c: ExplainConfig): string {
  const where = natDestination(address, c);
  if (where === undefined) return `dialed to ${address}`;
  switch (where.kind) {
    case 'host':
      return where.address === address ? `dialed to ${address}` : `dialed to ${where.address} (the host's loopback: ${address} is the host alias)`;
    case 'gateway':
      return 'answered by the gateway itself (only DNS on port 53)';
    case 'refused':
      return `but the NAT refuses it (${where.reason}): nothing is dialed`;
  }
}

function natDestination(address: string, c: ExplainConfig): Destination | undefined {
  const dst = parseIPv4(address) ?? parseIPv6(address);
  // Link-local is the policy's call once an allowlist runs (as in the NAT).
  return dst === undefined ? undefined : classifyDestination(dst, {
    gatewayIp: c.gatewayIp, hostIp: c.hostIp, network: c.network, prefix: c.prefix, allowLinkLocal: true,
    ipv6: c.ipv6 === undefined ? undefined : { gatewayIp: c.ipv6.gatewayIp, hostIp: c.ipv6.hostIp, prefix: c.ipv6.prefix, hostLoopback: ipv6HostLoopback() },
  });
}

function natRefuses(address: string, c: ExplainConfig): boolean {
  return natDestination(address, c)?.kind === 'refused';
}
