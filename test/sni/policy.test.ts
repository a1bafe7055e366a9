import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { parseRules, canonicalHostname, RuleError, type Rule } from '../../dns/rules.js';
import { isInZone } from '../../dns/zones.js';
import { EgressPolicy, type Decision, type FlowInput, type PinView, type PolicyOptions } from '../../sni/policy.js';
import { PinTable } from '../../sni/pins.js';
import { specialRangeOf } from '../../sni/ranges.js';

const GUEST = { network: '192.168.127.0', prefix: 24 };
const HOST_ALIAS = '192.168.127.254';

function policy(rules: readonly string[], extra: Partial<PolicyOptions> = {}): EgressPolicy {
  return EgressPolicy.compile({ rules: parseRules(rules), guestSubnet: GUEST, hostAlias: HOST_ALIAS, ...extra });
}

/** A PinView from address -> names. */
function pinsOf(byAddress: Record<string, string[]> = {}): PinView {
  return { namesFor: (a) => byAddress[a] ?? [] };
}

const allowAddress = (reason: string, rule: string | null, address: string, name: string | null = null): Decision =>
  ({ verdict: 'allow', reason, rule, name, dial: { kind: 'address', address } }) as Decision;
const allowName = (reason: string, rule: string, name: string): Decision =>
  ({ verdict: 'allow', reason, rule, name, dial: { kind: 'name', name } }) as Decision;
const blocked = (reason: string, rule: string | null = null, name: string | null = null, detail?: string): Decision =>
  (detail === undefined ? { verdict: 'block', reason, rule, name } : { verdict: 'block', reason, rule, name, detail }) as Decision;
const peek = (...rules: string[]): Decision => ({ verdict: 'peek', rules });

const tcp = (dst: string, port: number, peeked?: FlowInput['peeked']): FlowInput =>
  peeked === undefined ? { proto: 'tcp', dst, port } : { proto: 'tcp', dst, port, peeked };
const udp = (dst: string, port: number, peeked?: FlowInput['peeked']): FlowInput => (peeked === undefined ? { proto: 'udp', dst, port } : { proto: 'udp', dst, port, peeked });
const quic = (name: string | null): FlowInput['peeked'] => ({ via: 'quic', name });
const sni = (name: string | null): FlowInput['peeked'] => ({ via: 'sni', name });
const host = (name: string | null): FlowInput['peeked'] => ({ via: 'host', name });

const RULES = [
  'github.com',
  '*.example.org',
  'api.example.net:8443',
  'git.example.com:22',
  '*.corp.example:5432',
  '203.0.113.0/24',
  '198.51.100.7:443',
  '192.0.2.1',
];
const PUBLIC = '140.82.112.3';

interface Row {
  title: string;
  flow: FlowInput;
  want: Decision;
  rules?: readonly string[];
  opts?: Partial<PolicyOptions>;
  pins?: Record<string, string[]>;
}

const matrix: Row[] = [
  // Exact host rules: SNI on 443, Host on 80, case and trailing dot do not matter.
  { title: 'exact: unpeeked 443 asks for a peek with the rules covering 443', flow: tcp(PUBLIC, 443), want: peek('github.com', '*.example.org') },
  { title: 'exact: SNI match', flow: tcp(PUBLIC, 443, sni('github.com')), want: allowName('name-sni', 'github.com', 'github.com') },
  { title: 'exact: Host match on 80', flow: tcp(PUBLIC, 80, host('github.com')), want: allowName('name-host', 'github.com', 'github.com') },
  { title: 'exact: case-insensitive', flow: tcp(PUBLIC, 443, sni('GitHub.COM')), want: allowName('name-sni', 'github.com', 'github.com') },
  { title: 'exact: trailing dot', flow: tcp(PUBLIC, 443, sni('github.com.')), want: allowName('name-sni', 'github.com', 'github.com') },
  { title: 'exact: a subdomain is not the host', flow: tcp(PUBLIC, 443, sni('www.github.com')), want: blocked('name-not-allowed', null, 'www.github.com') },
  { title: 'exact: no label-boundary confusion', flow: tcp(PUBLIC, 443, sni('notgithub.com')), want: blocked('name-not-allowed', null, 'notgithub.com') },
  { title: 'exact: an unlisted name', flow: tcp(PUBLIC, 443, sni('evil.example')), want: blocked('name-not-allowed', null, 'evil.example') },
  // Domain fronting by address: an allowed SNI sent to any IP is dialed BY NAME.
  { title: 'fronting: allowed SNI to another IP dials the name, not the IP', flow: tcp('8.8.8.8', 443, sni('github.com')), want: allowName('name-sni', 'github.com', 'github.com') },

  // Wildcards: any depth below, never the apex.
  { title: 'wildcard: one label below', flow: tcp(PUBLIC, 443, sni('a.example.org')), want: allowName('name-sni', '*.example.org', 'a.example.org') },
  { title: 'wildcard: several labels below', flow: tcp(PUBLIC, 443, sni('a.b.c.example.org')), want: allowName('name-sni', '*.example.org', 'a.b.c.example.org') },
  { title: 'wildcard: never the apex', flow: tcp(PUBLIC, 443, sni('example.org')), want: blocked('name-not-allowed', null, 'example.org') },
  { title: 'wildcard: label boundary', flow: tcp(PUBLIC, 443, sni('badexample.org')), want: blocked('name-not-allowed', null, 'badexample.org') },
  { title: 'wildcard: case and trailing dot', flow: tcp(PUBLIC, 80, host('A.Example.ORG.')), want: allowName('name-host', '*.example.org', 'a.example.org') },

  // Ports: portless hostname rules mean 80 and 443 only; an explicit port means only that port.
  { title: 'ports: 8443 peeks for the rule naming 8443', flow: tcp(PUBLIC, 8443), want: peek('api.example.net:8443') },
  { title: 'ports: the explicit-port name on its port', flow: tcp(PUBLIC, 8443, sni('api.example.net')), want: allowName('name-sni', 'api.example.net:8443', 'api.example.net') },
  { title: 'ports: a portless rule does not cover 8443', flow: tcp(PUBLIC, 8443, sni('github.com')), want: blocked('name-not-allowed', null, 'github.com') },
  { title: 'ports: an explicit-port rule does not cover 443', flow: tcp(PUBLIC, 443, sni('api.example.net')), want: blocked('name-not-allowed', null, 'api.example.net') },
  { title: 'ports: no hostname rule covers 8080', flow: tcp(PUBLIC, 8080), want: blocked('no-rule') },
  { title: 'ports: no rule covers 8080 even with a peeked allowed name', flow: tcp(PUBLIC, 8080, sni('github.com')), want: blocked('no-rule') },

  // IP and CIDR rules, with and without a port.
  { title: 'ip: CIDR, any port', flow: tcp('203.0.113.9', 22), want: allowAddress('ip-rule', '203.0.113.0/24', '203.0.113.9') },
  { title: 'ip: CIDR wins before any peek', flow: tcp('203.0.113.9', 443), want: allowAddress('ip-rule', '203.0.113.0/24', '203.0.113.9') },
  { title: 'ip: address with port, that port', flow: tcp('198.51.100.7', 443), want: allowAddress('ip-rule', '198.51.100.7:443', '198.51.100.7') },
  { title: 'ip: address with port, 80 falls through to the name rules', flow: tcp('198.51.100.7', 80), want: peek('github.com', '*.example.org') },
  { title: 'ip: address with port, other port', flow: tcp('198.51.100.7', 8080), want: blocked('no-rule') },
  { title: 'ip: bare address, any port', flow: tcp('192.0.2.1', 65535), want: allowAddress('ip-rule', '192.0.2.1', '192.0.2.1') },
  { title: 'ip: next to the CIDR is not in it', flow: tcp('203.0.114.1', 22), want: peek('git.example.com:22') },

  // UDP: IP rules, or a QUIC Initial's name on a port a hostname rule covers for UDP (its own, or 443 for a portless rule).
  { title: 'udp: CIDR rule', flow: udp('203.0.113.9', 53), want: allowAddress('ip-rule', '203.0.113.0/24', '203.0.113.9') },
  { title: 'udp: address rule with its port', flow: udp('198.51.100.7', 443), want: allowAddress('ip-rule', '198.51.100.7:443', '198.51.100.7') },
  { title: 'udp: address rule, other port', flow: udp('198.51.100.7', 444), want: blocked('udp-needs-ip-rule') },
  { title: 'udp: QUIC to a hostname-only destination is peeked', flow: udp(PUBLIC, 443), want: peek('github.com', '*.example.org') },
  { title: 'udp: QUIC name allowed, dialed by name', flow: udp(PUBLIC, 443, quic('GitHub.com.')), want: allowName('name-quic', 'github.com', 'github.com') },
  { title: 'udp: QUIC wildcard name allowed', flow: udp(PUBLIC, 443, quic('a.example.org')), want: allowName('name-quic', '*.example.org', 'a.example.org') },
  { title: 'udp: QUIC name not allowed', flow: udp(PUBLIC, 443, quic('evil.test')), want: blocked('name-not-allowed', null, 'evil.test') },
  { title: 'udp: QUIC without SNI', flow: udp(PUBLIC, 443, quic(null)), want: blocked('no-name') },
  { title: 'udp: QUIC IP-literal SNI', flow: udp(PUBLIC, 443, quic('1.2.3.4')), want: blocked('ip-literal-name', null, '1.2.3.4', 'rule:numeric-name') },
  { title: 'udp: portless rules do not cover UDP 80', flow: udp(PUBLIC, 80), want: blocked('udp-needs-ip-rule') },
  { title: 'udp: a rule with its port covers UDP there', flow: udp(PUBLIC, 8443), want: peek('api.example.net:8443') },
  { title: 'udp: ... and allows its QUIC name', flow: udp(PUBLIC, 8443, quic('api.example.net')), want: allowName('name-quic', 'api.example.net:8443', 'api.example.net') },
  { title: 'udp: a pin never lets UDP out by address', flow: udp(PUBLIC, 22), pins: { [PUBLIC]: ['git.example.com'] }, want: peek('git.example.com:22') },
  { title: 'udp: a TLS name on a UDP flow is a caller bug, refused', flow: udp(PUBLIC, 443, sni('github.com')), want: blocked('no-name', null, null, 'a sni name on a udp flow') },
  { title: 'tcp: a QUIC name on a TCP flow is refused', flow: tcp(PUBLIC, 443, quic('github.com')), want: blocked('no-name', null, null, 'a quic name on a tcp flow') },
  { title: 'udp: metadata stays shut to a QUIC name', flow: udp('169.254.169.254', 443, quic('github.com')), want: blocked('link-local') },

  // The host alias follows the rules unless exempted.
  { title: 'host alias: blocked by default, even on a port name rules cover', flow: tcp(HOST_ALIAS, 443, sni('github.com')), want: blocked('host-alias') },
  { title: 'host alias: exempt', opts: { hostAliasExempt: true }, flow: tcp(HOST_ALIAS, 8080), want: allowAddress('host-alias-exempt', null, HOST_ALIAS) },
  { title: 'host alias: an IP rule with its port', rules: ['192.168.127.254:8080'], flow: tcp(HOST_ALIAS, 8080), want: allowAddress('ip-rule', '192.168.127.254:8080', HOST_ALIAS) },
  { title: 'host alias: an IP rule with another port', rules: ['192.168.127.254:8080'], flow: tcp(HOST_ALIAS, 8081), want: blocked('host-alias') },
  // A CIDR that merely contains the alias does not open the host's loopback (issue 14 finding 5).
  { title: 'host alias: a CIDR containing it does not open it', rules: ['192.168.127.0/24'], flow: udp(HOST_ALIAS, 5353), want: blocked('host-alias') },
  { title: 'host alias: a /16 with the port does not open it', rules: ['192.168.0.0/16:18080'], flow: tcp(HOST_ALIAS, 18080), want: blocked('host-alias') },
  { title: 'host alias: 0.0.0.0/0 does not open it', rules: ['0.0.0.0/0'], flow: tcp(HOST_ALIAS, 18080), want: blocked('host-alias') },
  { title: 'host alias: a /31 holding it does not open it', rules: ['192.168.127.254/31'], flow: tcp(HOST_ALIAS, 18080), want: blocked('host-alias') },
  { title: 'host alias: an exact rule without port', rules: ['192.168.127.254'], flow: tcp(HOST_ALIAS, 18080), want: allowAddress('ip-rule', '192.168.127.254', HOST_ALIAS) },
  { title: 'host alias: /32 notation names it', rules: ['192.168.127.254/32:18080'], flow: tcp(HOST_ALIAS, 18080), want: allowAddress('ip-rule', '192.168.127.254/32:18080', HOST_ALIAS) },
  { title: 'host alias: null alias is an ordinary address', opts: { hostAlias: null }, flow: tcp(HOST_ALIAS, 443), want: peek('github.com', '*.example.org') },
  { title: 'host alias: allowed with an empty allowlist', rules: [], flow: tcp(HOST_ALIAS, 8080), want: allowAddress('no-allowlist', null, HOST_ALIAS) },

  // Metadata (169.254/16): only a rule naming it.
  { title: 'metadata: blocked, even with an allowed SNI', flow: tcp('169.254.169.254', 443, sni('github.com')), want: blocked('link-local') },
  { title: 'metadata: blocked over UDP', flow: udp('169.254.169.254', 53), want: blocked('link-local') },
  { title: 'metadata: a rule naming it', rules: ['169.254.169.254'], flow: tcp('169.254.169.254', 80), want: allowAddress('ip-rule', '169.254.169.254', '169.254.169.254') },
  { title: 'metadata: a rule naming it on another port', rules: ['169.254.169.254:80'], flow: tcp('169.254.169.254', 443), want: blocked('link-local') },
  // A CIDR that merely contains link-local space does not open it (issue 14 finding 5): the rule must lie inside 169.254/16.
  { title: 'metadata: 0.0.0.0/0:80 does not open it', rules: ['0.0.0.0/0:80'], flow: tcp('169.254.169.254', 80), want: blocked('link-local') },
  { title: 'metadata: 0.0.0.0/0 does not open it', rules: ['0.0.0.0/0'], flow: tcp('169.254.169.254', 80), want: blocked('link-local') },
  { title: 'metadata: 128.0.0.0/1 does not open it', rules: ['128.0.0.0/1'], flow: udp('169.254.1.1', 53), want: blocked('link-local') },
  { title: 'metadata: 169.0.0.0/8 does not open it', rules: ['169.0.0.0/8'], flow: tcp('169.254.169.254', 80), want: blocked('link-local') },
  { title: 'metadata: 169.254.0.0/15 does not open it', rules: ['169.254.0.0/15'], flow: tcp('169.254.169.254', 80), want: blocked('link-local') },
  { title: 'metadata: 169.254.0.0/16 opens it', rules: ['169.254.0.0/16'], flow: tcp('169.254.169.254', 80), want: allowAddress('ip-rule', '169.254.0.0/16', '169.254.169.254') },
  { title: 'metadata: a /24 inside opens it on its port', rules: ['169.254.169.0/24:80'], flow: tcp('169.254.169.254', 80), want: allowAddress('ip-rule', '169.254.169.0/24:80', '169.254.169.254') },
  { title: 'metadata: the most specific inside rule is reported, not the containing one', rules: ['0.0.0.0/0', '169.254.169.0/24'], flow: tcp('169.254.169.254', 80), want: allowAddress('ip-rule', '169.254.169.0/24', '169.254.169.254') },
  { title: 'metadata: 0.0.0.0/0 still opens ordinary addresses', rules: ['0.0.0.0/0:80'], flow: tcp('203.0.113.9', 80), want: allowAddress('ip-rule', '0.0.0.0/0:80', '203.0.113.9') },
  { title: 'metadata: empty allowlist still blocks it', rules: [], flow: tcp('169.254.169.254', 80), want: blocked('link-local') },
  { title: 'metadata: empty allowlist with allowLinkLocal', rules: [], opts: { allowLinkLocal: true }, flow: tcp('169.254.169.254', 80), want: allowAddress('no-allowlist', null, '169.254.169.254') },
  { title: 'metadata: allowLinkLocal does not override a rule set', opts: { allowLinkLocal: true }, flow: tcp('169.254.169.254', 80), want: blocked('link-local') },

  // Pins: unpeekable ports go only to addresses Moat resolved for an allowed name.
  { title: 'pins: port 22 to a pinned address', pins: { '140.82.112.9': ['git.example.com'] }, flow: tcp('140.82.112.9', 22), want: allowAddress('pinned', 'git.example.com:22', '140.82.112.9', 'git.example.com') },
  { title: 'pins: port 22 to an unpinned address must peek', pins: { '140.82.112.9': ['git.example.com'] }, flow: tcp('140.82.112.10', 22), want: peek('git.example.com:22') },
  { title: 'pins: ... and ssh sends no name', pins: { '140.82.112.9': ['git.example.com'] }, flow: tcp('140.82.112.10', 22, sni(null)), want: blocked('no-name') },
  { title: 'pins: an address pinned for another name', pins: { '140.82.112.9': ['github.com'] }, flow: tcp('140.82.112.9', 22), want: peek('git.example.com:22') },
  { title: 'pins: the first pinned name a covering rule matches', pins: { '140.82.112.9': ['github.com', 'git.example.com'] }, flow: tcp('140.82.112.9', 22), want: allowAddress('pinned', 'git.example.com:22', '140.82.112.9', 'git.example.com') },
  { title: 'pins: wildcard rule with a port', pins: { '140.82.112.9': ['db.corp.example'] }, flow: tcp('140.82.112.9', 5432), want: allowAddress('pinned', '*.corp.example:5432', '140.82.112.9', 'db.corp.example') },
  { title: 'pins: not consulted on 443 (the name on the wire decides)', pins: { [PUBLIC]: ['github.com'] }, flow: tcp(PUBLIC, 443), want: peek('github.com', '*.example.org') },
  { title: 'pins: the rule port must match', rules: ['git.example.com:22', 'github.com:2222'], pins: { '140.82.112.9': ['git.example.com'] }, flow: tcp('140.82.112.9', 2222), want: peek('github.com:2222') },
  { title: 'pins: a pinned private address is rebinding', pins: { '10.1.2.3': ['git.example.com'] }, flow: tcp('10.1.2.3', 22), want: blocked('rebinding', 'git.example.com:22', 'git.example.com', 'private') },
  { title: 'pins: a pinned loopback address is rebinding', pins: { '127.0.0.1': ['git.example.com'] }, flow: tcp('127.0.0.1', 22), want: blocked('rebinding', 'git.example.com:22', 'git.example.com', 'loopback') },
  { title: 'pins: a pinned guest-subnet address is rebinding', pins: { '192.168.127.9': ['git.example.com'] }, flow: tcp('192.168.127.9', 22), want: blocked('rebinding', 'git.example.com:22', 'git.example.com', 'guest-subnet') },
  { title: 'pins: a pinned private address inside --admit-resolved', opts: { admitResolved: ['10.0.0.0/8'] }, pins: { '10.1.2.3': ['git.example.com'] }, flow: tcp('10.1.2.3', 22), want: allowAddress('pinned', 'git.example.com:22', '10.1.2.3', 'git.example.com') },
  { title: 'pins: --admit-resolved admits only its range', opts: { admitResolved: ['10.0.0.0/8'] }, pins: { '100.64.0.1': ['git.example.com'] }, flow: tcp('100.64.0.1', 22), want: blocked('rebinding', 'git.example.com:22', 'git.example.com', 'cgnat') },

  // Peeked names that are not hostnames.
  { title: 'no SNI', flow: tcp(PUBLIC, 443, sni(null)), want: blocked('no-name') },
  { title: 'HTTP/1.0 without Host', flow: tcp(PUBLIC, 80, host(null)), want: blocked('no-name') },
  { title: 'IPv4-literal SNI', flow: tcp(PUBLIC, 443, sni('1.2.3.4')), want: blocked('ip-literal-name', null, '1.2.3.4', 'rule:numeric-name') },
  { title: 'IPv4-literal Host with trailing dot', flow: tcp(PUBLIC, 80, host('140.82.112.3.')), want: blocked('ip-literal-name', null, '140.82.112.3.', 'rule:numeric-name') },
  { title: 'hex-number Host', flow: tcp(PUBLIC, 80, host('0x7f000001')), want: blocked('ip-literal-name', null, '0x7f000001', 'rule:numeric-name') },
  { title: 'bracketed IPv6 Host', flow: tcp(PUBLIC, 80, host('[::1]')), want: blocked('ip-literal-name', null, '[::1]', 'rule:bad-character') },
  { title: 'bare IPv6 SNI', flow: tcp(PUBLIC, 443, sni('::1')), want: blocked('ip-literal-name', null, '::1', 'rule:bad-character') },
  { title: 'bracketed global IPv6', flow: tcp(PUBLIC, 80, host('[2001:db8::1]')), want: blocked('ip-literal-name', null, '[2001:db8::1]', 'rule:bad-character') },
  { title: 'brackets around a non-address', flow: tcp(PUBLIC, 80, host('[github.com]')), want: blocked('bad-name', null, '[github.com]', 'rule:bad-character') },
  { title: 'a name with a port is not a name', flow: tcp(PUBLIC, 443, sni('github.com:443')), want: blocked('bad-name', null, 'github.com:443', 'rule:bad-character') },
  { title: 'empty name', flow: tcp(PUBLIC, 443, sni('')), want: blocked('bad-name', null, '', 'rule:empty-name') },
  { title: 'empty label', flow: tcp(PUBLIC, 443, sni('github..com')), want: blocked('bad-name', null, 'github..com', 'rule:empty-label') },

  // Empty allowlist: everything but link-local.
  { title: 'empty: TCP anywhere', rules: [], flow: tcp(PUBLIC, 443), want: allowAddress('no-allowlist', null, PUBLIC) },
  { title: 'empty: private address', rules: [], flow: tcp('10.0.0.1', 22), want: allowAddress('no-allowlist', null, '10.0.0.1') },
  { title: 'empty: UDP', rules: [], flow: udp(PUBLIC, 443), want: allowAddress('no-allowlist', null, PUBLIC) },
  { title: 'empty: a peeked IP literal is irrelevant', rules: [], flow: tcp(PUBLIC, 443, sni('1.2.3.4')), want: allowAddress('no-allowlist', null, PUBLIC) },

  // IPv6 rules never match IPv4 destinations, but they make the allowlist non-empty.
  { title: 'ipv6 rules: not empty, no IPv4 match', rules: ['2001:db8::/32', '::ffff:140.82.112.4'], flow: tcp(PUBLIC, 443), want: blocked('no-rule') },
  // ... except a rule spelling an IPv4 address in IPv6 (issue 19): it is that IPv4 rule.
  { title: 'ipv6 rules: an IPv4-mapped rule is its IPv4 rule', rules: ['::ffff:140.82.112.3'], flow: tcp(PUBLIC, 443), want: allowAddress('ip-rule', '::ffff:140.82.112.3', PUBLIC) },

  // Most specific IP rule is reported.
  { title: 'ip: exact address beats CIDRs', rules: ['10.0.0.0/8', '10.1.0.0/16', '10.1.2.3'], flow: tcp('10.1.2.3', 1), want: allowAddress('ip-rule', '10.1.2.3', '10.1.2.3') },
  { title: 'ip: longest prefix', rules: ['10.0.0.0/8', '10.1.0.0/16', '10.1.2.3'], flow: tcp('10.1.9.9', 1), want: allowAddress('ip-rule', '10.1.0.0/16', '10.1.9.9') },
  { title: 'ip: a specific rule with the wrong port falls back to the wider one', rules: ['10.1.2.3:22', '10.0.0.0/8'], flow: tcp('10.1.2.3', 443), want: allowAddress('ip-rule', '10.0.0.0/8', '10.1.2.3') },
  // Most specific name rule is reported.
  { title: 'names: exact host beats a wildcard', rules: ['*.example.com', 'a.example.com'], flow: tcp(PUBLIC, 443, sni('a.example.com')), want: allowName('name-sni', 'a.example.com', 'a.example.com') },
  { title: 'names: the deepest wildcard', rules: ['*.example.com', '*.b.example.com'], flow: tcp(PUBLIC, 443, sni('x.b.example.com')), want: allowName('name-sni', '*.b.example.com', 'x.b.example.com') },
  { title: 'names: an IDN rule matches its punycode SNI', rules: ['bücher.example'], flow: tcp(PUBLIC, 443, sni('xn--bcher-kva.example')), want: allowName('name-sni', 'bücher.example', 'xn--bcher-kva.example') },

  // Input the caller should never send: blocked, never thrown.
  { title: 'invalid dst', flow: tcp('999.1.1.1', 443), want: blocked('no-rule', null, null, 'invalid destination address') },
  { title: 'invalid dst with an empty allowlist', rules: [], flow: tcp('010.0.0.1', 443), want: blocked('no-rule', null, null, 'invalid destination address') },
  { title: 'port 0', rules: [], flow: tcp(PUBLIC, 0), want: blocked('no-rule', null, null, 'invalid destination port') },
  { title: 'port 65536', flow: udp('203.0.113.9', 65536), want: blocked('no-rule', null, null, 'invalid destination port') },
  { title: 'fractional port', flow: tcp('203.0.113.9', 1.5), want: blocked('no-rule', null, null, 'invalid destination port') },
];

describe('EgressPolicy.decide: the policy matrix', () => {
  it.each(matrix)('$title', ({ flow, want, rules, opts, pins }) => {
    const p = policy(rules ?? RULES, opts);
    expect(p.decide(flow, pinsOf(pins))).toEqual(want);
  });

  it('works with the real PinTable and its expiry', () => {
    let t = 0;
    const pins = new PinTable(() => t);
    pins.pin('git.example.com', ['140.82.112.9'], 30_000);
    const p = policy(RULES);
    expect(p.decide(tcp('140.82.112.9', 22), pins)).toEqual(
      allowAddress('pinned', 'git.example.com:22', '140.82.112.9', 'git.example.com'),
    );
    t = 30_000;
    expect(p.decide(tcp('140.82.112.9', 22), pins)).toEqual(peek('git.example.com:22'));
  });
});

describe('EgressPolicy.compile', () => {
  it('exposes the rules as written and whether the set is empty', () => {
    const p = policy(['GitHub.com', '*.Example.org:8443', '10.0.0.0/8']);
    expect(p.ruleTexts).toEqual(['GitHub.com', '*.Example.org:8443', '10.0.0.0/8']);
    expect(p.empty).toBe(false);
    expect(policy([]).empty).toBe(true);
    expect(policy([]).ruleTexts).toEqual([]);
  });

  it('reports the rule text as written in decisions', () => {
    const p = policy(['GitHub.COM.']);
    expect(p.decide(tcp(PUBLIC, 443, sni('github.com')), pinsOf())).toEqual(allowName('name-sni', 'GitHub.COM.', 'github.com'));
  });

  it.each(['10.0.0.1/8', 'nope', '10.0.0.0/33', '2001:db8::1/32', 'fe80::1%eth0', '[2001:db8::]', ''])('throws for --admit-resolved %j, naming it', (bad) => {
    expect(() => policy(['github.com'], { admitResolved: [bad] })).toThrow(new RegExp(`admit-resolved "${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}"`));
  });

  it('accepts a bare address as --admit-resolved /32', () => {
    const p = policy(['github.com'], { admitResolved: ['10.1.2.3'] });
    expect(p.admitResolved(['10.1.2.3', '10.1.2.4'], 443).admitted).toEqual(['10.1.2.3']);
  });

  it('throws for an invalid host alias or guest subnet', () => {
    expect(() => policy([], { hostAlias: 'host.containers.internal' })).toThrow(/host alias/);
    expect(() => policy([], { guestSubnet: { network: '192.168.127.0', prefix: 33 } })).toThrow(/guest subnet/);
  });
});

describe('EgressPolicy.admitResolved: the DNS-rebinding filter', () => {
  const answers = [
    '140.82.112.3',
    '10.0.0.5',
    '172.16.0.1',
    '192.168.1.1',
    '127.0.0.1',
    '169.254.169.254',
    '100.64.1.1',
    '224.0.0.1',
    '192.168.127.9',
    '0.0.0.0',
    '255.255.255.255',
    '240.0.0.1',
    '2001:db8::1',
  ];

  it('refuses every special range by default, with its name', () => {
    const r = policy(['github.com']).admitResolved(answers, 443);
    expect(r.admitted).toEqual(['140.82.112.3']);
    expect(r.refused).toEqual([
      { address: '10.0.0.5', range: 'private' },
      { address: '172.16.0.1', range: 'private' },
      { address: '192.168.1.1', range: 'private' },
      { address: '127.0.0.1', range: 'loopback' },
      { address: '169.254.169.254', range: 'link-local' },
      { address: '100.64.1.1', range: 'cgnat' },
      { address: '224.0.0.1', range: 'multicast' },
      { address: '192.168.127.9', range: 'guest-subnet' },
      { address: '0.0.0.0', range: 'unspecified' },
      { address: '255.255.255.255', range: 'broadcast' },
      { address: '240.0.0.1', range: 'reserved' },
      { address: '2001:db8::1', range: 'documentation' },
    ]);
  });

  it('--admit-resolved admits its ranges only', () => {
    const r = policy(['github.com'], { admitResolved: ['10.0.0.0/8', '192.168.0.0/16'] }).admitResolved(answers, 443);
    expect(r.admitted).toEqual(['140.82.112.3', '10.0.0.5', '192.168.1.1', '192.168.127.9']);
    expect(r.refused.map((x) => x.address)).not.toContain('10.0.0.5');
    expect(r.refused.map((x) => x.address)).toContain('172.16.0.1');
  });

  it('a port-compatible IP rule admits, another port does not', () => {
    const p = policy(['github.com', '10.9.0.0/16:443', '127.0.0.1']);
    expect(p.admitResolved(['10.9.1.1', '127.0.0.1'], 443).admitted).toEqual(['10.9.1.1', '127.0.0.1']);
    const at80 = p.admitResolved(['10.9.1.1', '127.0.0.1'], 80);
    expect(at80.admitted).toEqual(['127.0.0.1']);
    expect(at80.refused).toEqual([{ address: '10.9.1.1', range: 'private' }]);
  });

  it('a containing CIDR does not admit link-local or loopback answers; a rule or --admit-resolved inside the range does', () => {
    const broad = policy(['github.com', '0.0.0.0/0'], { admitResolved: ['0.0.0.0/0'] }).admitResolved(['169.254.169.254', '127.0.0.1', '10.0.0.5'], 443);
    expect(broad.admitted).toEqual(['10.0.0.5']);
    expect(broad.refused).toEqual([
      { address: '169.254.169.254', range: 'link-local' },
      { address: '127.0.0.1', range: 'loopback' },
    ]);
    expect(policy(['github.com', '169.254.169.254']).admitResolved(['169.254.169.254'], 443).admitted).toEqual(['169.254.169.254']);
    expect(policy(['github.com'], { admitResolved: ['169.254.0.0/16', '127.0.0.0/8'] }).admitResolved(['169.254.1.1', '127.0.0.1'], 443).admitted).toEqual(['169.254.1.1', '127.0.0.1']);
  });

  it('public and documentation addresses are admitted', () => {
    const r = policy(['github.com']).admitResolved(['8.8.8.8', '192.0.2.1', '203.0.113.9'], 443);
    expect(r).toEqual({ admitted: ['8.8.8.8', '192.0.2.1', '203.0.113.9'], refused: [] });
  });

  it('an admitted address is always in the input and never in a special range unless admitted (property)', () => {
    const p = policy(['github.com', '10.9.0.0/16'], { admitResolved: ['172.16.0.0/12'] });
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.ipV4(), fc.ipV6(), fc.string())), fc.integer({ min: 1, max: 65535 }), (addrs, port) => {
        const r = p.admitResolved(addrs, port);
        expect(r.admitted.length + r.refused.length).toBe(addrs.length);
        for (const a of r.admitted) expect(addrs).toContain(a);
        for (const { address } of r.refused) expect(addrs).toContain(address);
      }),
    );
  });
});

// ---- Properties -------------------------------------------------------------

const LABELS = ['a', 'b', 'example', 'com', 'org', 'x-y', 'git'];
const labelArb = fc.constantFrom(...LABELS);
const domainArb = fc.array(labelArb, { minLength: 1, maxLength: 4 }).map((ls) => ls.join('.'));
const portArb = fc.oneof(fc.constantFrom(22, 80, 443, 8443), fc.integer({ min: 1, max: 65535 }));
const ruleTextArb = fc.oneof(
  fc.tuple(domainArb, fc.option(portArb, { nil: undefined })).map(([d, p]) => (p === undefined ? d : `${d}:${p}`)),
  fc.tuple(domainArb, fc.option(portArb, { nil: undefined })).map(([d, p]) => (p === undefined ? `*.${d}` : `*.${d}:${p}`)),
  fc.tuple(fc.ipV4(), fc.option(portArb, { nil: undefined })).map(([a, p]) => (p === undefined ? a : `${a}:${p}`)),
  fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 32 })).map(([a, len]) => {
    const n = a.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
    const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
    const net = (n & mask) >>> 0;
    return `${net >>> 24}.${(net >>> 16) & 255}.${(net >>> 8) & 255}.${net & 255}/${len}`;
  }),
);
/** Always valid: labels come from a fixed pool of words, IP rules are built valid. */
const rulesArb = fc.array(ruleTextArb, { maxLength: 8 }).map((texts) => parseRules(texts));
/** Names near the rules (same label pool), with random case and trailing dots, plus arbitrary junk. */
const nameArb = fc.oneof(
  fc.tuple(domainArb, fc.boolean(), fc.boolean()).map(([d, upper, dot]) => `${upper ? d.toUpperCase() : d}${dot ? '.' : ''}`),
  fc.domain(),
  fc.string(),
  fc.constantFrom('1.2.3.4', '[::1]', '::1', ''),
);
const peekedArb = fc.option(
  fc.record({ via: fc.constantFrom('sni' as const, 'host' as const), name: fc.option(nameArb, { nil: null }) }),
  { nil: undefined },
);
const dstArb = fc.oneof(fc.ipV4(), fc.constantFrom('169.254.169.254', HOST_ALIAS, '10.0.0.1', '127.0.0.1'));
const anyPeekFlowArb = fc
  .tuple(fc.constantFrom('tcp' as const, 'udp' as const), dstArb, portArb, peekedArb)
  .map(([proto, dst, port, peeked]): FlowInput => (peeked === undefined ? { proto, dst, port } : { proto, dst, port, peeked }));
/** TCP on the ports rules name, with a name from the rules' label pool: where name decisions happen. */
const nameFlowArb = fc
  .tuple(dstArb, fc.constantFrom(22, 80, 443, 8443), fc.constantFrom('sni' as const, 'host' as const), domainArb, fc.boolean())
  .map(([dst, port, via, name, upper]): FlowInput => ({ proto: 'tcp', dst, port, peeked: { via, name: upper ? name.toUpperCase() : name } }));
/** Flows aimed at a given rule set: names equal to a host, below or at a wildcard's apex, on the rule's port or 80/443. */
function flowsNear(rules: readonly Rule[]): fc.Arbitrary<FlowInput> {
  const named = rules.filter((r) => r.kind === 'host' || r.kind === 'wildcard');
  if (named.length === 0) return fc.oneof(anyPeekFlowArb, nameFlowArb);
  const near = fc
    .tuple(fc.constantFrom(...named), fc.constantFrom('', 'x.', 'a.b.'), dstArb, fc.constantFrom(80, 443, 22), fc.constantFrom('sni' as const, 'host' as const), fc.boolean())
    .map(([r, prefix, dst, otherPort, via, usePort]): FlowInput => {
      const base = r.kind === 'host' ? r.host : r.kind === 'wildcard' ? r.domain : '';
      const port = usePort && r.port !== null ? r.port : otherPort;
      return { proto: 'tcp', dst, port, peeked: { via, name: prefix + base } };
    });
  return fc.oneof(anyPeekFlowArb, nameFlowArb, near);
}
const flowArb = fc.oneof(anyPeekFlowArb, nameFlowArb);
/** A rule set and a flow, half the time aimed at the rules. */
const scenarioArb = rulesArb.chain((rules) => fc.tuple(fc.constant(rules), flowsNear(rules)));
const pinsArb = fc.dictionary(dstArb, fc.array(nameArb.map((n) => { const c = canonicalHostname(n); return c instanceof RuleError ? n : c; }), { maxLength: 3 }));
const optsArb = fc.record({
  hostAliasExempt: fc.boolean(),
  allowLinkLocal: fc.boolean(),
  admitResolved: fc.constantFrom([], ['10.0.0.0/8'], ['0.0.0.0/0']),
});

/** An independent model of "some hostname rule allows this canonical name on this port". */
function modelAllowsName(rules: readonly Rule[], name: string, port: number): boolean {
  return rules.some((r) => {
    const portOk = r.port === port || (r.port === null && (port === 80 || port === 443));
    if (!portOk) return false;
    if (r.kind === 'host') return r.host === name;
    if (r.kind === 'wildcard') return name !== r.domain && isInZone(name, r.domain);
    return false;
  });
}

describe('EgressPolicy properties', () => {
  it('decide() never throws, whatever the input', () => {
    const anyFlow = fc.record({
      proto: fc.oneof(fc.constantFrom('tcp', 'udp'), fc.string()),
      dst: fc.oneof(fc.ipV4(), fc.string(), fc.ipV6()),
      port: fc.oneof(fc.integer(), fc.double(), fc.integer({ min: 1, max: 65535 })),
      peeked: fc.option(fc.record({ via: fc.oneof(fc.constantFrom('sni', 'host'), fc.string()), name: fc.option(fc.oneof(nameArb, fc.string({ unit: 'grapheme', maxLength: 300 })), { nil: null }) }), { nil: undefined }),
    });
    fc.assert(
      fc.property(rulesArb, optsArb, anyFlow, pinsArb, (rules, opts, flow, pins) => {
        const p = EgressPolicy.compile({ rules, guestSubnet: GUEST, hostAlias: HOST_ALIAS, ...opts });
        const d = p.decide(flow as FlowInput, pinsOf(pins));
        expect(['allow', 'peek', 'block']).toContain(d.verdict);
      }),
      { numRuns: 500 },
    );
  });

  it('with an empty allowlist everything is allowed except link-local', () => {
    fc.assert(
      fc.property(flowArb, fc.boolean(), pinsArb, (flow, allowLinkLocal, pins) => {
        const p = policy([], { allowLinkLocal });
        const d = p.decide(flow, pinsOf(pins));
        if (flow.dst.startsWith('169.254.') && !allowLinkLocal) expect(d).toEqual(blocked('link-local'));
        else expect(d).toEqual(allowAddress('no-allowlist', null, flow.dst));
      }),
    );
  });

  it('a name no rule allows is never allowed, by peek or by pin', () => {
    fc.assert(
      fc.property(scenarioArb, optsArb, pinsArb, ([rules, flow], opts, pins) => {
        fc.pre(rules.length > 0);
        const p = EgressPolicy.compile({ rules, guestSubnet: GUEST, hostAlias: HOST_ALIAS, ...opts });
        const d = p.decide(flow, pinsOf(pins));
        if (d.verdict !== 'allow') return;
        // Allowed without an IP rule => by a name that some rule allows on this port.
        if (d.reason === 'name-sni' || d.reason === 'name-host' || d.reason === 'pinned') {
          expect(d.name).not.toBeNull();
          expect(modelAllowsName(rules, d.name!, flow.port)).toBe(true);
          expect(d.rule).not.toBeNull();
        } else {
          expect(['ip-rule', 'host-alias-exempt']).toContain(d.reason);
        }
        // And conversely: a peeked name the model refuses is never dialed by name.
        if (flow.peeked?.name != null) {
          const c = canonicalHostname(flow.peeked.name);
          if (c instanceof RuleError || !modelAllowsName(rules, c, flow.port)) expect(d.dial.kind).toBe('address');
        }
      }),
      { numRuns: 1000 },
    );
  });

  it("a 'name' dial always names the canonical peeked name, which a rule matches, and only for TCP", () => {
    let named = 0;
    fc.assert(
      fc.property(scenarioArb, optsArb, pinsArb, ([rules, flow], opts, pins) => {
        const p = EgressPolicy.compile({ rules, guestSubnet: GUEST, hostAlias: HOST_ALIAS, ...opts });
        const d = p.decide(flow, pinsOf(pins));
        if (d.verdict !== 'allow' || d.dial.kind !== 'name') return;
        named++;
        expect(flow.proto).toBe('tcp');
        expect(flow.peeked?.name).toBeTruthy();
        expect(d.dial.name).toBe(canonicalHostname(flow.peeked!.name!));
        expect(d.name).toBe(d.dial.name);
        expect(modelAllowsName(rules, d.dial.name, flow.port)).toBe(true);
        expect(p.ruleTexts).toContain(d.rule);
      }),
      { numRuns: 1000 },
    );
    // The generators must actually reach the interesting case.
    expect(named).toBeGreaterThan(20);
  });

  it('an unpeeked flow is allowed by pin exactly when a pinned name is allowed on that non-web port', () => {
    let pinned = 0;
    const pinnedScenario = rulesArb.chain((rules) => {
      const names = rules.flatMap((r) => (r.kind === 'host' ? [r.host] : r.kind === 'wildcard' ? [`x.${r.domain}`, r.domain] : []));
      const ports = [22, 80, 443, 8443, ...rules.flatMap((r) => (r.port === null ? [] : [r.port]))];
      return fc.tuple(
        fc.constant(rules),
        fc.oneof(fc.ipV4(), fc.constantFrom('10.1.2.3', '127.0.0.1', '192.168.127.9')),
        fc.constantFrom(...ports),
        fc.subarray(names.length > 0 ? names : ['none.example']),
      );
    });
    fc.assert(
      fc.property(pinnedScenario, ([rules, dst, port, names]) => {
        fc.pre(rules.length > 0);
        const p = EgressPolicy.compile({ rules, guestSubnet: GUEST, hostAlias: null, admitResolved: ['10.0.0.0/8'] });
        const d = p.decide(tcp(dst, port), pinsOf({ [dst]: names }));
        const byIp = p.decide(tcp(dst, port), pinsOf()); // the same flow with no pins
        if (byIp.verdict === 'allow' || (byIp.verdict === 'block' && byIp.reason !== 'no-rule' && byIp.reason !== 'udp-needs-ip-rule')) {
          expect(d).toEqual(byIp); // pins never change an IP-rule or link-local decision
          return;
        }
        const allowedName = names.find((n) => modelAllowsName(rules, n, port));
        const web = port === 80 || port === 443;
        if (byIp.verdict === 'block' || web || allowedName === undefined) {
          expect(d).toEqual(byIp);
          return;
        }
        // No IP rule contains dst on this port (byIp did not allow), so only --admit-resolved 10/8 can admit it.
        const special = specialRangeOf(dst, GUEST) !== null && !dst.startsWith('10.');
        expect(d.verdict).toBe(special ? 'block' : 'allow');
        if (d.verdict === 'allow') {
          pinned++;
          expect(d.reason).toBe('pinned');
          expect(d.dial).toEqual({ kind: 'address', address: dst });
          expect(modelAllowsName(rules, d.name!, port)).toBe(true);
        } else if (d.verdict === 'block') {
          expect(d.reason).toBe('rebinding');
        }
      }),
      { numRuns: 1000 },
    );
    expect(pinned).toBeGreaterThan(20);
  });

  it('a CIDR containing 169.254/16 or the host alias never opens them (random containing rules)', () => {
    const LINK_LOCAL_NET = 0xa9fe0000;
    const ALIAS = 0xc0a87ffe;
    // A network of length 0..len containing `inside`, as rule text with an optional port.
    const containing = (inside: number, maxPrefix: number) =>
      fc.tuple(fc.integer({ min: 0, max: maxPrefix }), fc.option(portArb, { nil: undefined })).map(([prefix, port]) => {
        const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
        const net = (inside & mask) >>> 0;
        const text = `${net >>> 24}.${(net >>> 16) & 255}.${(net >>> 8) & 255}.${net & 255}/${prefix}`;
        return port === undefined ? text : `${text}:${port}`;
      });
    const broadArb = fc.array(fc.oneof(containing(LINK_LOCAL_NET, 15), containing(ALIAS, 31), ruleTextArb), { minLength: 1, maxLength: 6 });
    fc.assert(
      fc.property(broadArb, optsArb, fc.integer({ min: 0, max: 0xffff }), portArb, fc.constantFrom('tcp' as const, 'udp' as const), peekedArb, (texts, opts, low, port, proto, peeked) => {
        // Only rules generated to lie inside 169.254/16 or name the alias exactly may open them; drop those the generic generator made.
        const rules = parseRules(texts).filter((r) => !(r.kind === 'address' && (r.address === HOST_ALIAS || r.address.startsWith('169.254.'))) && !(r.kind === 'cidr' && r.network.startsWith('169.254.') && r.prefixLength >= 16));
        fc.pre(rules.length > 0);
        const p = EgressPolicy.compile({ rules, guestSubnet: GUEST, hostAlias: HOST_ALIAS, ...opts, hostAliasExempt: false });
        const meta = `169.254.${low >> 8}.${low & 255}`;
        const flow = (dst: string): FlowInput => (peeked === undefined ? { proto, dst, port } : { proto, dst, port, peeked });
        expect(p.decide(flow(meta), pinsOf({ [meta]: ['git.example.com'] }))).toEqual(blocked('link-local'));
        expect(p.decide(flow(HOST_ALIAS), pinsOf({ [HOST_ALIAS]: ['git.example.com'] }))).toEqual(blocked('host-alias'));
        expect(p.admitResolved([meta], port).admitted).toEqual([]);
      }),
      { numRuns: 1000 },
    );
  });

  it('a rule inside 169.254/16 opens the addresses it contains on its port, and only those', () => {
    fc.assert(
      fc.property(fc.integer({ min: 16, max: 32 }), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), fc.option(portArb, { nil: undefined }), portArb, (prefix, ruleLow, dstLow, rulePort, port) => {
        const mask = (0xffffffff << (32 - prefix)) >>> 0;
        const net = ((0xa9fe0000 | ruleLow) & mask) >>> 0;
        const text = `169.254.${(net >>> 8) & 255}.${net & 255}/${prefix}${rulePort === undefined ? '' : `:${rulePort}`}`;
        const p = policy([text]);
        const dst = `169.254.${dstLow >> 8}.${dstLow & 255}`;
        const inside = (((0xa9fe0000 | dstLow) & mask) >>> 0) === net;
        const opens = inside && (rulePort === undefined || rulePort === port);
        expect(p.decide(tcp(dst, port), pinsOf())).toEqual(opens ? allowAddress('ip-rule', text, dst) : blocked('link-local'));
        expect(p.admitResolved([dst], port).admitted).toEqual(opens ? [dst] : []);
      }),
      { numRuns: 1000 },
    );
  });

  it('169.254/16 is never allowed unless an IP rule contains it', () => {
    fc.assert(
      fc.property(rulesArb, optsArb, flowArb, pinsArb, fc.integer({ min: 0, max: 0xffff }), (rules, opts, flow, pins, low) => {
        fc.pre(rules.length > 0);
        const dst = `169.254.${low >> 8}.${low & 255}`;
        const p = EgressPolicy.compile({ rules, guestSubnet: GUEST, hostAlias: HOST_ALIAS, ...opts });
        const d = p.decide({ ...flow, dst }, pinsOf({ ...pins, [dst]: ['git.example.com'] }));
        if (d.verdict === 'allow') expect(d.reason).toBe('ip-rule');
        else expect(d).toEqual(blocked('link-local'));
      }),
    );
  });
});
