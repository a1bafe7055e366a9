/**
 * `moat learn`'s core: from the decisions a job produced to the smallest
 * allowlist under which the same job passes in enforce mode. Pure (no I/O);
 * src/learn.ts reads the logs and prints.
 *
 * What a flow needs, read from sni/policy.ts's decision order:
 *  - A TCP flow that named a host (SNI, Host, or a pinned name) is allowed by
 *    a hostname rule covering its port: a bare rule covers 80 and 443 only
 *    (policy step 5), so a host seen on 80/443 gets `host`, one seen on any
 *    other port gets `host:port`.
 *  - A flow without a usable name (UDP, a direct-IP TCP connection, a
 *    ClientHello without SNI) can only be allowed by an IP rule: `ip:port`.
 *    So can any flow to the host alias or 169.254/16 (policy steps 1-2).
 *    A port is always kept: the job used that one.
 *  - Names under one registrable domain (Public Suffix List, private section
 *    included, via tldts) collapse into `*.parent` when at least
 *    `wildcardMin` distinct names below it appear for the same port class.
 *    `parent` is the deepest domain that is a parent of all of them, so three
 *    names under cdn.example.com give `*.cdn.example.com`, not
 *    `*.example.com`. A wildcard is never the public suffix itself (no
 *    `*.co.uk`, `*.github.io`), because its parent is at or below the
 *    registrable domain. The apex is never covered by a wildcard (rules.ts:
 *    `*.d` is strictly below d), so it stays an exact rule.
 *
 * Choices (documented in `moat learn --help` and the README):
 *  - Every decision counts, allowed ones too (unless refusedOnly): the output
 *    is meant to replace the rules the log was recorded under, so what those
 *    rules allowed is needed as much as what they refused.
 *  - 'peek' records are skipped: they say a connection was held for its name,
 *    and the decision that follows carries the name.
 *  - DNS-only records (a name resolved or sinkholed, never seen on a flow by
 *    name) are left out unless includeDns: a job that needed the name would
 *    have connected, and that connection names it (SNI/Host, or the pin).
 *    They are reported in the notes so nothing is dropped silently.
 *  - A refused flow to 169.254.0.0/16 (cloud metadata) is left out with a
 *    note: audit mode never lets it through either, so the job ran without
 *    it; only an allowed one (the user's own rule) is kept.
 */
import { getDomain } from 'tldts';
import { canonicalHostname, RuleError } from '../../dns/rules.js';
import { formatIpv4, parseIpv4 } from '../../sni/ranges.js';

/** The fields of a decision record (src/egress/decision-log.ts DecisionRecord) that learning reads. */
export interface LearnRecord {
  decision: 'allowed' | 'blocked' | 'would-block';
  reason: string;
  proto: 'tcp' | 'udp' | 'quic' | 'dns';
  /** "ip:port" for flows, the queried name for DNS. */
  dst: string;
  name: string | null;
}

export interface LearnOptions {
  /** Distinct names below one registrable domain (per port class) before they become `*.parent`. Default 3. */
  wildcardMin?: number;
  /** Only blocked and would-block decisions (to add to rules kept as they are). Default false. */
  refusedOnly?: boolean;
  /** Also allow names that were only resolved, never connected to by name. Default false. */
  includeDns?: boolean;
  /**
   * The host alias (moat serve --host-ip), default 192.168.127.254. The policy
   * reaches it (and 169.254/16) only by IP rule, whatever name a flow carried.
   */
  hostAlias?: string;
}

export const DEFAULT_HOST_ALIAS = '192.168.127.254';

export const DEFAULT_WILDCARD_MIN = 3;

export interface LearnResult {
  /** The rules, in a deterministic order (names by reversed labels, then IP rules by address and port). */
  rules: string[];
  /** What the reader should know: flows left out and why, rules that reach sensitive places. */
  notes: string[];
  /** How many records were used (after skipping). */
  used: number;
}

/** Port class of a name flow: 'web' (80/443, a bare rule covers both) or the port itself. */
type PortClass = 'web' | number;

const LINK_LOCAL_PREFIX = 0xa9fe0000; // 169.254.0.0/16
/** Names listed in one note at most; the rest are counted. */
const MAX_LISTED = 10;

export function learnAllowlist(records: Iterable<LearnRecord>, options: LearnOptions = {}): LearnResult {
  const wildcardMin = options.wildcardMin ?? DEFAULT_WILDCARD_MIN;
  if (!Number.isInteger(wildcardMin) || wildcardMin < 2) throw new RangeError(`wildcardMin must be an integer >= 2, got ${String(wildcardMin)}`);
  const hostAlias = parseIpv4(options.hostAlias ?? DEFAULT_HOST_ALIAS);
  if (hostAlias === null) throw new RangeError(`hostAlias must be an IPv4 address, got ${JSON.stringify(options.hostAlias)}`);
  const namesByClass = new Map<PortClass, Set<string>>();
  const ipFlows = new Map<string, { ip: number; port: number }>();
  const dnsOnly = new Set<string>();
  const badDst = new Set<string>();
  const linkLocalLeftOut = new Set<string>();
  const rebinding = new Set<string>();
  let used = 0;

  // Names whose only portless ("web") use was TCP to port 80: if QUIC to
  // port 80 also gave them a NAME:80 rule, that rule carries TCP 80 too and
  // the portless one would be redundant (dropped after the loop).
  const webOnly80 = new Set<string>();
  const webElsewhere = new Set<string>();
  const addName = (cls: PortClass, name: string, tcpPort80 = false): void => {
    let set = namesByClass.get(cls);
    if (set === undefined) namesByClass.set(cls, (set = new Set()));
    set.add(name);
    if (cls === 'web') (tcpPort80 ? webOnly80 : webElsewhere).add(name);
  };

  for (const r of records) {
    if (r.reason === 'peek') continue;
    if (options.refusedOnly === true && r.decision === 'allowed') continue;
    if (r.proto === 'dns') {
      const name = canonicalHostname(r.name ?? r.dst);
      if (name instanceof RuleError) continue;
      used++;
      if (options.includeDns === true) addName('web', name);
      else dnsOnly.add(name);
      continue;
    }
    const flow = parseFlowDst(r.dst);
    if (flow === null) {
      // moat proxy names its targets: dst is "name:port" when the client asked for a name.
      const named = r.proto === 'tcp' ? parseNamedDst(r.name, r.dst) : null;
      if (named === null) {
        badDst.add(r.dst);
        continue;
      }
      used++;
      addName(named.port === 80 || named.port === 443 ? 'web' : named.port, named.name);
      if (r.reason === 'rebinding') rebinding.add(named.name);
      continue;
    }
    used++;
    const linkLocal = (flow.ip & 0xffff0000) >>> 0 === LINK_LOCAL_PREFIX;
    const byAddressOnly = linkLocal || flow.ip === hostAlias;
    // A QUIC record's name is an SNI like TCP's: a hostname rule (portless on 443) covers UDP there too.
    const name = (r.proto === 'tcp' || r.proto === 'quic') && r.name !== null && !byAddressOnly ? canonicalHostname(r.name) : null;
    if (typeof name === 'string') {
      // A portless rule covers TCP 80/443 but UDP only on 443 (sni/policy.ts step 4): QUIC elsewhere needs the port.
      const web = flow.port === 443 || (flow.port === 80 && r.proto !== 'quic');
      addName(web ? 'web' : flow.port, name, flow.port === 80);
      if (r.reason === 'rebinding') rebinding.add(name);
      continue;
    }
    if (linkLocal && r.decision !== 'allowed') {
      linkLocalLeftOut.add(r.dst);
      continue;
    }
    ipFlows.set(`${flow.ip}:${flow.port}`, flow);
  }

  const web = namesByClass.get('web');
  const port80 = namesByClass.get(80);
  if (web !== undefined && port80 !== undefined) {
    for (const n of webOnly80) if (!webElsewhere.has(n) && port80.has(n)) web.delete(n);
    if (web.size === 0) namesByClass.delete('web');
  }

  const nameRules: { key: string; port: number; text: string }[] = [];
  const wildcards: { domain: string; cls: PortClass }[] = [];
  for (const [cls, names] of namesByClass) {
    const { exact, wildcardDomains } = collapse(names, wildcardMin);
    for (const d of wildcardDomains) wildcards.push({ domain: d, cls });
    const suffix = cls === 'web' ? '' : `:${cls}`;
    for (const d of wildcardDomains) nameRules.push({ key: sortKey(d) + '.*', port: cls === 'web' ? 0 : cls, text: `*.${d}${suffix}` });
    for (const n of exact) nameRules.push({ key: sortKey(n), port: cls === 'web' ? 0 : cls, text: `${n}${suffix}` });
  }
  nameRules.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.port - b.port));
  const ipRules = [...ipFlows.values()].sort((a, b) => a.ip - b.ip || a.port - b.port).map((f) => `${formatIpv4(f.ip)}:${f.port}`);

  const notes: string[] = [];
  const allNames = new Set<string>();
  for (const set of namesByClass.values()) for (const n of set) allNames.add(n);
  const uncoveredDns = [...dnsOnly].filter((n) => !allNames.has(n) && !wildcards.some((w) => isBelow(n, w.domain))).sort();
  if (uncoveredDns.length > 0) {
    notes.push(`left out ${uncoveredDns.length} name(s) only looked up in DNS, never connected to by name (--include-dns adds them): ${listSome(uncoveredDns)}`);
  }
  if (linkLocalLeftOut.size > 0) {
    notes.push(`left out refused flow(s) to 169.254.0.0/16 (cloud metadata; the job ran without them): ${listSome([...linkLocalLeftOut].sort())}`);
  }
  if (rebinding.size > 0) {
    notes.push(`name(s) resolved to private or special addresses and were refused as DNS rebinding; their rules alone will not let them through (see moat serve --admit-resolved): ${listSome([...rebinding].sort())}`);
  }
  if (badDst.size > 0) notes.push(`skipped record(s) whose dst is not IPv4 "address:port": ${listSome([...badDst].sort())}`);
  return { rules: [...nameRules.map((r) => r.text), ...ipRules], notes, used };
}

/** A proxy target "name:port" (the record's name, else dst's host part), canonical, or null. */
function parseNamedDst(name: string | null, dst: string): { name: string; port: number } | null {
  const colon = dst.lastIndexOf(':');
  if (colon < 0) return null;
  const portText = dst.slice(colon + 1);
  if (!/^[1-9][0-9]{0,4}$/.test(portText) || Number(portText) > 65535) return null;
  const canonical = canonicalHostname(name ?? dst.slice(0, colon));
  return typeof canonical === 'string' ? { name: canonical, port: Number(portText) } : null;
}

/** "a.b.c.d:port" → numbers, or null. */
function parseFlowDst(dst: string): { ip: number; port: number } | null {
  const colon = dst.lastIndexOf(':');
  if (colon < 0) return null;
  const ip = parseIpv4(dst.slice(0, colon));
  const portText = dst.slice(colon + 1);
  if (ip === null || !/^[1-9][0-9]{0,4}$/.test(portText)) return null;
  const port = Number(portText);
  return port <= 65535 ? { ip, port } : null;
}

/**
 * Splits canonical names into exact names and wildcard domains: names below
 * one registrable domain become `*.parent` once `min` of them appear
 * (see the module comment). Exact names a wildcard covers are dropped.
 */
export function collapse(names: Iterable<string>, min: number): { exact: string[]; wildcardDomains: string[] } {
  const groups = new Map<string, string[]>();
  const exact = new Set<string>();
  for (const n of names) {
    const reg = registrableDomain(n);
    if (reg === null || reg === n) {
      exact.add(n);
      continue;
    }
    let g = groups.get(reg);
    if (g === undefined) groups.set(reg, (g = []));
    g.push(n);
  }
  const wildcardDomains: string[] = [];
  for (const [, below] of groups) {
    if (below.length >= min) wildcardDomains.push(commonParent(below));
    else for (const n of below) exact.add(n);
  }
  // A registrable domain can lie below another's wildcard (bucket.s3.amazonaws.com under *.amazonaws.com): drop what is covered.
  const kept = [...exact].filter((n) => !wildcardDomains.some((d) => isBelow(n, d)));
  const keptWildcards = wildcardDomains.filter((d) => !wildcardDomains.some((o) => o !== d && isBelow(d, o)));
  return { exact: kept, wildcardDomains: keptWildcards };
}

/** The registrable domain of a canonical name (private PSL suffixes count as public), or null for a suffix or single label. */
export function registrableDomain(name: string): string | null {
  // validateHostname off: rules.ts already accepted the name (it allows '_' in labels, which tldts would refuse).
  return getDomain(name, { allowPrivateDomains: true, validateHostname: false, extractHostname: false });
}

/** The deepest domain that is a parent of every name (names all lie strictly below one registrable domain). */
function commonParent(names: readonly string[]): string {
  let common: string[] | null = null;
  for (const n of names) {
    const parent = n.split('.').slice(1).reverse();
    if (common === null) common = parent;
    else {
      let i = 0;
      while (i < common.length && i < parent.length && common[i] === parent[i]) i++;
      common = common.slice(0, i);
    }
  }
  return (common ?? []).reverse().join('.');
}

/** Is `name` strictly below `domain`? */
export function isBelow(name: string, domain: string): boolean {
  return name.length > domain.length + 1 && name.endsWith(domain) && name[name.length - domain.length - 1] === '.';
}

/** Labels reversed, so related names sort together (com.example, com.example.api, ...). */
function sortKey(name: string): string {
  return name.split('.').reverse().join('.');
}

function listSome(items: readonly string[]): string {
  const shown = items.slice(0, MAX_LISTED).join(', ');
  return items.length > MAX_LISTED ? `${shown} and ${items.length - MAX_LISTED} more` : shown;
}
