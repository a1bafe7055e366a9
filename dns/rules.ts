/**
 * Allowlist rules: the one parser shared by the DNS zones (dns/) and the
 * egress policy (sni/), so both walls read a rule the same way.
 *
 * Accepted forms, each with an optional `:port` (1-65535):
 *   host          github.com            github.com:443
 *   *.domain      *.github.com          *.github.com:443   (any depth below, never the apex)
 *   IPv4          192.0.2.1             192.0.2.1:443
 *   IPv4 CIDR     10.0.0.0/8            10.0.0.0/8:443
 *   IPv6          2001:db8::1           [2001:db8::1]:443  (a port needs brackets)
 *   IPv6 CIDR     2001:db8::/32         [2001:db8::/32]:443
 *
 * Names are case-insensitive, a trailing dot is ignored, and IDNs are
 * compared in punycode (see canonicalHostname). Anything that looks like an
 * IP literal is parsed as one or rejected; it is never taken as a name
 * (`010.1.1.1` or `1.2.3` are errors, not hosts).
 *
 * Parsing never throws: parseRule returns `Rule | RuleError`. parseRules is
 * the start-up entry point and throws ONE RuleSetError naming every invalid
 * rule, because an ignored rule is a silently wrong allowlist.
 */
import { Address4, Address6 } from 'ip-address';

export type RuleReason = `rule:${string}`;

/** Why a rule (or a hostname) was rejected; `text` is the input as given. */
export class RuleError {
  constructor(
    readonly text: string,
    readonly reason: RuleReason,
  ) {}

  toString(): string {
    return `${JSON.stringify(this.text)} (${this.reason.slice('rule:'.length)})`;
  }
}

export function isRuleError(x: unknown): x is RuleError {
  return x instanceof RuleError;
}

interface RuleBase {
  /** The rule as written, for logs and error messages. */
  readonly text: string;
  /** Destination port the rule is limited to, or null for any port. */
  readonly port: number | null;
}

/** Exactly one name (canonical form, see canonicalHostname). */
export interface HostRule extends RuleBase {
  readonly kind: 'host';
  readonly host: string;
}

/** Every name strictly below `domain` (canonical form); never `domain` itself. */
export interface WildcardRule extends RuleBase {
  readonly kind: 'wildcard';
  readonly domain: string;
}

/** One IP address; `address` is the canonical text form (RFC 5952 for IPv6). */
export interface AddressRule extends RuleBase {
  readonly kind: 'address';
  readonly family: 4 | 6;
  readonly address: string;
}

/** An IP network; `network` is the canonical network address (host bits zero). */
export interface CidrRule extends RuleBase {
  readonly kind: 'cidr';
  readonly family: 4 | 6;
  readonly network: string;
  readonly prefixLength: number;
}

export type Rule = HostRule | WildcardRule | AddressRule | CidrRule;

/** Thrown by parseRules: every invalid rule of the set, in input order. */
export class RuleSetError extends Error {
  constructor(readonly errors: readonly RuleError[]) {
    super(
      `invalid allow rule${errors.length === 1 ? '' : 's'}: ${errors.map((e) => e.toString()).join(', ')}`,
    );
    this.name = 'RuleSetError';
  }
}

// RFC 1035 2.3.4: 63 octets per label, 255 octets on the wire = 253 characters
// in dotted text without the trailing dot.
const MAX_LABEL = 63;
const MAX_NAME = 253;
// LDH labels (RFC 952/1123) plus '_', which appears in real service names.
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$/;
// The WHATWG URL parser would read these as other URL parts (userinfo, port,
// path, query, fragment) or percent-decode them: never part of a hostname.
const URL_SYNTAX = /[\s/\\?#@:%[\]<>^|"'`{}]/;
const ASCII_FAST = /^[a-z0-9._-]+$/;
const ALL_DIGITS = /^[0-9]+$/;
const LOOKS_LIKE_IPV4 = /^[0-9.]+$/;
// WHATWG URL (and inet_aton) read a last label like `0x7f` as a number.
const HEX_NUMBER = /^0x[0-9a-f]*$/;

/**
 * The canonical form of a hostname, shared by rules, DNS queries and SNI/Host
 * checks: lower case, no trailing dot, IDN labels in punycode (A-labels).
 *
 * IDN conversion uses the WHATWG URL parser (`new URL('http://' + name)`), a
 * global in Node and browsers, so this module stays free of `node:` imports;
 * it applies UTS #46 mapping (full-width forms, case folding) and punycode.
 * Pure ASCII names skip it: they only need lower-casing, and they are what
 * the hot path (DNS queries, SNI) sees almost always.
 *
 * Returns a RuleError for names that are not hostnames, including anything
 * that is or looks like an IP literal (a numeric last label: RFC 3696 2,
 * and the URL parser would silently turn `1.2.3` into `1.2.0.3`).
 */
export function canonicalHostname(input: string): string | RuleError {
  let name = input.endsWith('.') ? input.slice(0, -1) : input;
  if (name.length === 0) return new RuleError(input, 'rule:empty-name');
  if (!ASCII_FAST.test(name)) {
    const lower = name.toLowerCase();
    if (ASCII_FAST.test(lower)) {
      name = lower;
    } else {
      if (URL_SYNTAX.test(name)) return new RuleError(input, 'rule:bad-character');
      let converted: string;
      try {
        converted = new URL(`http://${name}`).hostname;
      } catch {
        return new RuleError(input, 'rule:bad-idn');
      }
      // The URL parser turns numeric-looking names into IPv4 addresses and may
      // map a trailing full-width dot to '.'; neither is a hostname rule.
      // One trailing dot is the root; if one was already dropped above, this
      // second one is an empty label, as 'github.com..' is in ASCII.
      if (converted.endsWith('.')) {
        if (input.endsWith('.')) return new RuleError(input, 'rule:empty-label');
        converted = converted.slice(0, -1);
      }
      if (!ASCII_FAST.test(converted)) return new RuleError(input, 'rule:bad-idn');
      name = converted;
    }
  }
  if (name.length > MAX_NAME) return new RuleError(input, 'rule:name-too-long');
  const labels = name.split('.');
  for (const label of labels) {
    if (label.length === 0) return new RuleError(input, 'rule:empty-label');
    if (label.length > MAX_LABEL) return new RuleError(input, 'rule:label-too-long');
    if (!LABEL.test(label)) return new RuleError(input, 'rule:bad-label');
  }
  const last = labels[labels.length - 1]!;
  if (ALL_DIGITS.test(last) || HEX_NUMBER.test(last)) {
    return new RuleError(input, 'rule:numeric-name');
  }
  return name;
}

/** Parse one rule. Never throws. */
export function parseRule(text: string): Rule | RuleError {
  const trimmed = text.trim();
  if (trimmed.length === 0) return new RuleError(text, 'rule:empty');

  // [IPv6] or [IPv6/len], optionally followed by :port.
  if (trimmed.startsWith('[')) {
    const m = /^\[([^\]]*)\](?::(.*))?$/.exec(trimmed);
    if (m === null) return new RuleError(text, 'rule:bad-brackets');
    const port = m[2] === undefined ? null : parsePort(m[2]);
    if (port instanceof RuleError) return new RuleError(text, port.reason);
    const ip = parseIp(m[1]!, text, port);
    if (ip instanceof RuleError) return ip;
    if (ip.family !== 6) return new RuleError(text, 'rule:brackets-need-ipv6');
    return ip;
  }

  // Two or more colons without brackets: a bare IPv6 address or network, no
  // port (`::1:443` is itself a valid address, so a port would be ambiguous).
  const colons = trimmed.split(':').length - 1;
  if (colons >= 2) {
    const ip = parseIp(trimmed, text, null);
    if (ip instanceof RuleError) return ip;
    if (ip.family !== 6) return new RuleError(text, 'rule:bad-address');
    return ip;
  }

  let body = trimmed;
  let port: number | null = null;
  if (colons === 1) {
    const at = trimmed.lastIndexOf(':');
    const p = parsePort(trimmed.slice(at + 1));
    if (p instanceof RuleError) return new RuleError(text, p.reason);
    port = p;
    body = trimmed.slice(0, at);
  }

  if (body.includes('/') || LOOKS_LIKE_IPV4.test(body)) return parseIp(body, text, port);

  if (body.startsWith('*.')) {
    const domain = canonicalHostname(body.slice(2));
    if (domain instanceof RuleError) return new RuleError(text, domain.reason);
    return { kind: 'wildcard', text, port, domain };
  }
  if (body.includes('*')) return new RuleError(text, 'rule:bad-wildcard');

  const host = canonicalHostname(body);
  if (host instanceof RuleError) return new RuleError(text, host.reason);
  return { kind: 'host', text, port, host };
}

/**
 * Parse a rule set for start-up or reload. Throws one RuleSetError naming
 * every invalid rule; never returns a partial set.
 */
export function parseRules(texts: readonly string[]): Rule[] {
  const rules: Rule[] = [];
  const errors: RuleError[] = [];
  for (const text of texts) {
    const r = parseRule(text);
    if (r instanceof RuleError) errors.push(r);
    else rules.push(r);
  }
  if (errors.length > 0) throw new RuleSetError(errors);
  return rules;
}

function parsePort(text: string): number | RuleError {
  // Decimal, no sign, no leading zeros: one spelling per port.
  if (!/^[1-9][0-9]{0,4}$/.test(text)) return new RuleError(text, 'rule:bad-port');
  const port = Number(text);
  if (port > 65535) return new RuleError(text, 'rule:bad-port');
  return port;
}

/** An address or CIDR in either family. `text` is the whole rule, for errors. */
function parseIp(body: string, text: string, port: number | null): AddressRule | CidrRule | RuleError {
  // Zone ids (fe80::1%eth0) name a host interface; they mean nothing to a guest.
  if (body.includes('%')) return new RuleError(text, 'rule:zone-id');
  const slash = body.indexOf('/');
  const addr = slash < 0 ? body : body.slice(0, slash);
  let prefixLength: number | null = null;
  if (slash >= 0) {
    const len = body.slice(slash + 1);
    if (!/^(?:0|[1-9][0-9]{0,2})$/.test(len)) return new RuleError(text, 'rule:bad-prefix-length');
    prefixLength = Number(len);
  }
  const family: 4 | 6 | 0 = Address4.isValid(addr) ? 4 : Address6.isValid(addr) ? 6 : 0;
  if (family === 0) return new RuleError(text, 'rule:bad-address');
  const canonical = family === 4 ? new Address4(addr).correctForm() : new Address6(addr).correctForm();
  if (prefixLength === null) return { kind: 'address', text, port, family, address: canonical };

  if (prefixLength > (family === 4 ? 32 : 128)) return new RuleError(text, 'rule:bad-prefix-length');
  const net = family === 4 ? new Address4(`${canonical}/${prefixLength}`) : new Address6(`${canonical}/${prefixLength}`);
  const network = net.startAddress().correctForm();
  // `10.0.0.1/8` is almost always a typo for an address or a different
  // network; refuse it instead of guessing which.
  if (network !== canonical) return new RuleError(text, 'rule:host-bits-set');
  return { kind: 'cidr', text, port, family, network, prefixLength };
}
