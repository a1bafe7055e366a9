/**
 * Admission of a proxy target (`CONNECT host:port`, `GET http://host/`, a
 * SOCKS5 address): the proxy's equivalent of the NAT's SYN decision, made by
 * the same Egress (sni/policy.ts via src/egress/) that `moat serve` uses.
 *
 *  - A NAME is decided by name (EgressPolicy.decideName: a hostname rule
 *    covering the port), then resolved by Moat (DialTargets: pins first,
 *    else a live lookup) and filtered by the rebinding guard
 *    (policy.admitResolved). The client never chooses the address.
 *  - An IP literal, IPv4 or IPv6 (`[2001:db8::1]:443`, SOCKS5 ATYP 4), is
 *    decided by address (EgressPolicy.decide without a peek): IP/CIDR
 *    rules, the link-local refusal (169.254/16, fe80::/10, fd00:ec2::/32),
 *    IPv4-in-IPv6 forms as their IPv4 address, pins on non-web ports;
 *    then the same rebinding filter as a resolved name; a port only
 *    hostname rules cover is refused (Egress.decideAddress, which a
 *    re-decision after a reload uses too).
 *
 * Every outcome is one decision record whose id the refusal carries.
 *
 * Audit mode: a refused target is recorded as would-block and admitted
 * anyway (to the name's own addresses, unfiltered, or to the address given),
 * except cloud metadata (169.254.0.0/16, fd00:ec2::/32, and their IPv6
 * forms), which stays refused.
 */
import { canonicalHostname } from '../../dns/rules.js';
import { parseIpv4 } from '../../sni/ranges.js';
import { formatIpv6, parseIpv6 } from '../../sni/ranges6.js';
import type { Decision } from '../../sni/policy.js';
import { LiveLookupRefusedError } from '../egress/dial-targets.js';
import { askMark, type AskMark, type Egress, type InFlight } from '../egress/egress.js';
import type { Logger } from '../log.js';

export type TargetHost = { kind: 'name'; name: string } | { kind: 'ipv4'; address: string } | { kind: 'ipv6'; address: string };

/**
 * Classifies a host as the client wrote it ("example.com", "1.2.3.4",
 * "[::1]"). IPv6 comes back in its one RFC 5952 form, whatever the
 * spelling. The policy's own strict parsers decide what is an address: a
 * zone id (`[fe80::1%eth0]`, which node:net would dial on that host
 * interface) or an octal-looking quad is not one, so it is taken as a name
 * and refused as an IP literal (decideName).
 */
export function classifyHost(host: string): TargetHost {
  const inner = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (parseIpv4(inner) !== null) return { kind: 'ipv4', address: inner };
  const v6 = parseIpv6(inner);
  if (v6 !== null) return { kind: 'ipv6', address: formatIpv6(v6) };
  return { kind: 'name', name: host };
}

/**
 * What happens inside the tunnel before the dial:
 *  required - 80/443 by name: the SNI/Host must be read and equal the target.
 *  optional - a port a hostname rule names (api.x:8443, git.x:22): a TLS
 *             or HTTP opening is checked the same way; other protocols (and
 *             a client that waits for the server to speak) are let through,
 *             since the rule named the port and the address is Moat's.
 *  none     - allowed by address (IP rule): nothing to compare.
 */
export type PeekMode = 'required' | 'optional' | 'none';

export type Admission =
  | {
      ok: true;
      id: string;
      /** Canonical name the tunnel must carry (null for address targets). */
      name: string | null;
      addresses: readonly string[];
      port: number;
      peek: PeekMode;
      /** For logs and decision records: "name:port" or "ip:port". */
      dst: string;
      /** Egress.version it was decided under: the tunnel re-decides it if the rules change before its dial completes. */
      version?: number;
      /** The rule that allowed it (its bytes are charged to that rule's budget); absent for audit pass-through. */
      rule?: string | null;
      /** Ask mode answered it (not admitted again if the rules changed meanwhile: that would ask twice). */
      asked?: boolean;
    }
  | {
      ok: false;
      id: string;
      /** 'blocked': policy (403 / SOCKS 0x02); 'unresolved': the name has no usable address (502 / SOCKS 0x04). */
      kind: 'blocked' | 'unresolved' | 'unsupported';
      reason: string;
      name: string | null;
      detail?: string;
      asked?: boolean;
    };

/**
 * What an admitted target was decided as, for Egress.recheck when the rules
 * change before (or after) its upstream connects: by name or by address, as
 * admit() decided it. undefined: decided under no version (never rechecked).
 */
export function admittedInFlight(a: { name: string | null; addresses: readonly string[]; port: number; version?: number | undefined }): InFlight | undefined {
  const first = a.addresses[0];
  if (a.version === undefined || first === undefined) return undefined;
  return a.name !== null
    ? { version: a.version, target: { kind: 'name', name: a.name, port: a.port }, dial: { kind: 'name', name: a.name }, via: 'target' }
    : { version: a.version, target: { kind: 'address', proto: 'tcp', address: first, port: a.port }, dial: { kind: 'address', address: first }, via: 'target' };
}

/** Admissions re-made because the allowlist changed while one was resolving, before giving up and letting the tunnel's own re-check decide. */
const MAX_READMISSIONS = 2;

/**
 * Admits a target under the current rules. A name's admission awaits a
 * lookup: if the allowlist is reloaded meanwhile, it is decided again under
 * the new rules (issue 14 finding 4). The result carries the policy version
 * it was decided under, for the re-check when the dial completes (tunnel.ts).
 */
export async function admit(egress: Egress, host: string, port: number, log: Logger, signal?: AbortSignal): Promise<Admission> {
  for (let i = 0; ; i++) {
    const version = egress.version;
    const a = await admitTarget(egress, host, port, log, signal);
    // An asked target was answered for this request: its own re-check at dial time covers a reload since.
    if (a.asked === true) return a.ok ? { ...a, version: egress.version } : a;
    if (egress.version === version || i >= MAX_READMISSIONS) return a.ok ? { ...a, version } : a;
  }
}

async function admitTarget(egress: Egress, host: string, port: number, log: Logger, signal?: AbortSignal): Promise<Admission> {
  const t = classifyHost(host);
  if (t.kind !== 'name') return admitAddress(egress, t.address, port);
  return admitName(egress, t.name, port, log, signal);
}

function admitAddress(egress: Egress, address: string, port: number): Admission {
  const d = egress.decideAddress('tcp', address, port);
  const shown = address.includes(':') ? `[${address}]` : address;
  const id = egress.record(d, 'tcp', shown, port, 'target');
  if (d.verdict === 'block' && egress.audit && d.reason !== 'link-local') {
    return { ok: true, id, name: null, addresses: [address], port, peek: 'none', dst: `${shown}:${port}` };
  }
  if (d.verdict === 'block') return { ok: false, id, kind: 'blocked', reason: d.reason, name: null, ...(d.detail !== undefined ? { detail: d.detail } : {}) };
  // An IPv4-mapped or NAT64 target is dialed at the IPv4 address it was decided as.
  const dial = d.verdict === 'allow' && d.dial.kind === 'address' ? d.dial.address : address;
  return { ok: true, id, name: null, addresses: [dial], port, peek: 'none', dst: `${shown}:${port}`, rule: d.verdict === 'allow' ? d.rule : null };
}

async function admitName(egress: Egress, host: string, port: number, log: Logger, signal?: AbortSignal): Promise<Admission> {
  let d = egress.decideName('tcp', host, port, 'target');
  let mark: AskMark | undefined;
  if (egress.askable(d)) {
    // Ask mode: the target waits for a verdict (its client connection stays open, nothing is dialed).
    const o = await egress.ask!.ask({ name: d.name, proto: 'proxy', port, dst: `${d.name}:${port}`, via: 'target' }, signal);
    mark = askMark(o);
    if (!o.allow) {
      const id = egress.recordBlock(o.reason, 'tcp', d.name, port, d.name, 'target', o.detail, undefined, mark);
      return { ok: false, id, kind: 'blocked', reason: o.reason, name: d.name, asked: true, ...(o.detail !== undefined ? { detail: o.detail } : {}) };
    }
    // allow-name: decided again under the rules that now name it; allow-once: this target only.
    d = o.verdict === 'allow-once' ? egress.askedOnce(d.name) : egress.decideName('tcp', host, port, 'target');
    const a = await admitDecided(egress, d, host, port, log, mark);
    return { ...a, asked: true };
  }
  return admitDecided(egress, d, host, port, log, undefined);
}

async function admitDecided(egress: Egress, d: Decision, host: string, port: number, log: Logger, mark: AskMark | undefined): Promise<Admission> {
  const shown = d.verdict !== 'peek' && d.name !== null ? d.name : host.slice(0, 256);
  if (d.verdict !== 'allow') {
    // decideName never answers 'peek'; were it to, refuse rather than hang.
    const block: Extract<Decision, { verdict: 'block' }> = d.verdict === 'block' ? d : { verdict: 'block', reason: 'no-name', rule: null, name: null };
    const id = egress.record(block, 'tcp', shown, port, 'target', undefined, undefined, mark);
    if (egress.audit) return auditName(egress, id, host, port, log);
    return { ok: false, id, kind: 'blocked', reason: block.reason, name: block.name, ...(block.detail !== undefined ? { detail: block.detail } : {}) };
  }
  const name = d.dial.kind === 'name' ? d.dial.name : shown;
  let resolved: readonly string[];
  try {
    resolved = await egress.targets.addressesFor(name);
  } catch (err) {
    if (err instanceof LiveLookupRefusedError) {
      // A new name the live-lookup budget cannot pay for (or live lookups off): refused by policy, not unresolved.
      const id = egress.recordBlock(err.reason, 'tcp', name, port, name, 'target', err.message);
      return { ok: false, id, kind: 'blocked', reason: err.reason, name, detail: err.message };
    }
    log.info('proxy target did not resolve', { name, port, error: (err as Error).message });
    const id = egress.recordBlock('unresolved', 'tcp', name, port, name, 'target', (err as Error).message);
    return { ok: false, id, kind: 'unresolved', reason: 'unresolved', name, detail: (err as Error).message };
  }
  const { admitted, refused } = egress.policy.admitResolved(resolved, port);
  if (admitted.length === 0) {
    const detail = refused.map((x) => `${x.address} (${x.range})`).join(', ') || 'no usable address';
    const id = egress.recordBlock('rebinding', 'tcp', name, port, name, 'target', detail);
    // Audit lets rebinding through, but never to metadata.
    const audited = egress.audit ? egress.auditAddresses(resolved, port) : [];
    if (audited.length > 0) return { ok: true, id, name, addresses: audited, port, peek: 'none', dst: `${name}:${port}` };
    return { ok: false, id, kind: 'blocked', reason: 'rebinding', name, detail };
  }
  const id = egress.record(d, 'tcp', name, port, 'target', `dial ${admitted.join(',')}`, undefined, mark);
  const peek: PeekMode = port === 80 || port === 443 ? 'required' : 'optional';
  return { ok: true, id, name, addresses: admitted, port, peek, dst: `${name}:${port}`, rule: d.rule };
}

/** Audit mode: a name the rules refuse still goes to its own addresses (no peek: nothing would be refused). */
async function auditName(egress: Egress, id: string, host: string, port: number, log: Logger): Promise<Admission> {
  const name = canonicalHostname(host);
  if (typeof name !== 'string') return { ok: false, id, kind: 'blocked', reason: 'bad-name', name: null, detail: name.reason };
  try {
    const addresses = egress.auditAddresses(await egress.targets.addressesFor(name), port);
    if (addresses.length === 0) return { ok: false, id, kind: 'blocked', reason: 'link-local', name, detail: 'audit mode never dials 169.254.0.0/16' };
    return { ok: true, id, name, addresses, port, peek: 'none', dst: `${name}:${port}` };
  } catch (err) {
    log.info('proxy target did not resolve', { name, port, error: (err as Error).message });
    return { ok: false, id, kind: 'unresolved', reason: 'unresolved', name, detail: (err as Error).message };
  }
}
