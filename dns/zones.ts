/**
 * The zone table: which part of the DNS tree the guest may see, and how.
 *
 *  - Built-in hosts (the gateway and the host alias) come first and are
 *    always served, whatever the rules say. They match their exact name only,
 *    so listing them first never hides a more specific user zone.
 *  - One zone per allowed name. An exact host rule `github.com` gives zone
 *    `github.com.` with its pre-resolved records at the apex; `*.github.com`
 *    gives the same zone with its subdomains resolved live. Both rules for
 *    one domain merge into one zone. Names below a zone that the rules do not
 *    allow (a subdomain of an exact-host-only zone, the apex of a
 *    wildcard-only zone) are sinkholed like any other name, unless a
 *    wildcard further up allows them (`*.d` covers any depth below d).
 *  - The root zone, last, sinkholes everything else.
 *
 * User zones are sorted longest suffix first (more labels, then longer, then
 * lexical), so the printed order is deterministic and first-match-in-order
 * equals longest-match. Matching is on label boundaries: `notexample.com` is
 * not under `example.com`. The lookup itself walks the query's suffixes
 * through a Map, O(labels), and never depends on the order rules were given.
 */
import { canonicalHostname, RuleError, type Rule } from './rules.js';

/** Addresses served at a zone apex. TTL in seconds. */
export interface HostRecords {
  readonly a: readonly string[];
  readonly aaaa: readonly string[];
  readonly ttl: number;
}

/** What a sinkholed name gets: A → 0.0.0.0 (and AAAA → :: on a guest network with IPv6) and NODATA for other types, or NXDOMAIN for all. */
export type SinkholeMode = 'zero' | 'nxdomain';

export type ZoneKind = 'builtin' | 'allowed' | 'root';

export interface Zone {
  /** Canonical name without trailing dot; '' for the root zone. */
  readonly name: string;
  readonly kind: ZoneKind;
  /** Records for the zone name itself, or null when the apex is not allowed. */
  readonly apex: HostRecords | null;
  /** Names strictly below the zone are allowed and resolved live (a `*.domain` rule). */
  readonly liveSubdomains: boolean;
}

/** A name the gateway answers itself, never from upstream. */
export interface BuiltinHost {
  readonly name: string;
  readonly ipv4?: string;
  readonly ipv6?: string;
}

export const DEFAULT_GATEWAY_NAMES: readonly string[] = Object.freeze(['gateway.containers.internal']);
export const DEFAULT_HOST_ALIAS_NAMES: readonly string[] = Object.freeze(['host.containers.internal']);
/** TTL of built-in answers, seconds: short, the gateway may be reconfigured. */
export const BUILTIN_TTL = 60;

export interface BuiltinOptions {
  gatewayIpv4: string;
  hostAliasIpv4: string;
  gatewayIpv6?: string;
  hostAliasIpv6?: string;
  gatewayNames?: readonly string[];
  hostAliasNames?: readonly string[];
}

/** The built-in hosts for a gateway and host alias, default names unless given. */
export function builtinHosts(o: BuiltinOptions): BuiltinHost[] {
  const out: BuiltinHost[] = [];
  for (const name of o.gatewayNames ?? DEFAULT_GATEWAY_NAMES) {
    out.push({ name: canonicalOrThrow(name), ipv4: o.gatewayIpv4, ...(o.gatewayIpv6 ? { ipv6: o.gatewayIpv6 } : {}) });
  }
  for (const name of o.hostAliasNames ?? DEFAULT_HOST_ALIAS_NAMES) {
    out.push({ name: canonicalOrThrow(name), ipv4: o.hostAliasIpv4, ...(o.hostAliasIpv6 ? { ipv6: o.hostAliasIpv6 } : {}) });
  }
  return out;
}

function canonicalOrThrow(name: string): string {
  // Built-in names come from configuration, checked once at start-up, in the
  // same canonical form as rules and queries.
  const n = canonicalHostname(name);
  if (n instanceof RuleError) throw new Error(`invalid built-in host name ${n.toString()}`);
  return n;
}

/**
 * The exact hosts that need pre-resolution: every host rule's name, once,
 * sorted, minus built-in names (the gateway answers those itself).
 */
export function hostsToResolve(rules: readonly Rule[], builtins: readonly BuiltinHost[] = []): string[] {
  const builtin = new Set(builtins.map((b) => b.name));
  const hosts = new Set<string>();
  for (const r of rules) if (r.kind === 'host' && !builtin.has(r.host)) hosts.add(r.host);
  return [...hosts].sort();
}

export function labelCount(name: string): number {
  if (name === '') return 0;
  let n = 1;
  for (let i = 0; i < name.length; i++) if (name.charCodeAt(i) === 0x2e) n++;
  return n;
}

/** Longest suffix first: more labels, then longer, then lexical. */
export function compareZoneNames(a: string, b: string): number {
  const byLabels = labelCount(b) - labelCount(a);
  if (byLabels !== 0) return byLabels;
  const byLength = b.length - a.length;
  if (byLength !== 0) return byLength;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Is `name` equal to `zone` or below it, on a label boundary? */
export function isInZone(name: string, zone: string): boolean {
  if (zone === '') return true;
  if (name.length === zone.length) return name === zone;
  return name.length > zone.length && name.endsWith(zone) && name.charCodeAt(name.length - zone.length - 1) === 0x2e;
}

export const ROOT_ZONE: Zone = Object.freeze({ name: '', kind: 'root', apex: null, liveSubdomains: false });

export class ZoneTable {
  /** Match order: built-ins, then user zones longest suffix first, then root. */
  readonly zones: readonly Zone[];
  private readonly builtinByName: ReadonlyMap<string, Zone>;
  private readonly allowedByName: ReadonlyMap<string, Zone>;

  private constructor(
    builtins: Zone[],
    allowed: Zone[],
    readonly sinkhole: SinkholeMode,
  ) {
    allowed.sort((x, y) => compareZoneNames(x.name, y.name));
    this.zones = Object.freeze([...builtins, ...allowed, ROOT_ZONE]);
    this.builtinByName = new Map(builtins.map((z) => [z.name, z]));
    this.allowedByName = new Map(allowed.map((z) => [z.name, z]));
  }

  /**
   * Build the table from parsed rules and the records pre-resolution found.
   * Throws if an exact host has no records: a table is complete or not built.
   */
  static build(
    rules: readonly Rule[],
    resolved: ReadonlyMap<string, HostRecords>,
    builtins: readonly BuiltinHost[] = [],
    sinkhole: SinkholeMode = 'zero',
  ): ZoneTable {
    const builtinZones: Zone[] = [];
    const builtinNames = new Set<string>();
    for (const b of builtins) {
      if (builtinNames.has(b.name)) continue;
      builtinNames.add(b.name);
      builtinZones.push(
        Object.freeze({
          name: b.name,
          kind: 'builtin',
          apex: Object.freeze({ a: b.ipv4 ? [b.ipv4] : [], aaaa: b.ipv6 ? [b.ipv6] : [], ttl: BUILTIN_TTL }),
          liveSubdomains: false,
        }),
      );
    }

    const apexByName = new Map<string, HostRecords | null>();
    const liveByName = new Map<string, boolean>();
    const missing: string[] = [];
    for (const r of rules) {
      if (r.kind === 'host') {
        if (builtinNames.has(r.host)) continue;
        const records = resolved.get(r.host);
        if (records === undefined || (records.a.length === 0 && records.aaaa.length === 0)) {
          missing.push(r.host);
          continue;
        }
        apexByName.set(r.host, records);
        if (!liveByName.has(r.host)) liveByName.set(r.host, false);
      } else if (r.kind === 'wildcard') {
        if (!apexByName.has(r.domain)) apexByName.set(r.domain, null);
        liveByName.set(r.domain, true);
      }
    }
    if (missing.length > 0) {
      throw new Error(`zone table incomplete: no records for ${[...new Set(missing)].join(', ')}`);
    }
    // A host zone strictly below a wildcard's domain (api.example.com under
    // *.example.com) is the longest match for the names below it, so it must
    // resolve them live too, as the flow policy allows them.
    for (const [name, live] of liveByName) if (!live && underLiveZone(name, liveByName)) liveByName.set(name, true);
    const allowed: Zone[] = [];
    for (const [name, apex] of apexByName) {
      allowed.push(Object.freeze({ name, kind: 'allowed', apex, liveSubdomains: liveByName.get(name) ?? false }));
    }
    return new ZoneTable(builtinZones, allowed, sinkhole);
  }

  /**
   * The zone for a canonical name (see canonicalHostname): the built-in host
   * of that exact name, else the longest allowed zone containing it on a
   * label boundary, else the root zone. One exception: the apex of a
   * wildcard-only zone (cdn.example.com for *.cdn.example.com) is not that
   * zone's to allow, but a wildcard above it (*.example.com) allows it, as
   * the flow policy does; then the live zone above answers it.
   */
  match(name: string): Zone {
    const builtin = this.builtinByName.get(name);
    if (builtin !== undefined) return builtin;
    const z = this.longestAllowed(name);
    if (z.name === name && z.kind === 'allowed' && z.apex === null) {
      const dot = name.indexOf('.');
      const above = dot < 0 ? ROOT_ZONE : this.longestAllowed(name.slice(dot + 1));
      if (above.liveSubdomains) return above;
    }
    return z;
  }

  private longestAllowed(name: string): Zone {
    let suffix = name;
    for (;;) {
      const z = this.allowedByName.get(suffix);
      if (z !== undefined) return z;
      const dot = suffix.indexOf('.');
      if (dot < 0) return ROOT_ZONE;
      suffix = suffix.slice(dot + 1);
    }
  }
}

/** Is some proper suffix of `name`, on a label boundary, a live (wildcard) zone? */
function underLiveZone(name: string, liveByName: ReadonlyMap<string, boolean>): boolean {
  for (let dot = name.indexOf('.'); dot >= 0; dot = name.indexOf('.', dot + 1)) {
    if (liveByName.get(name.slice(dot + 1)) === true) return true;
  }
  return false;
}

/** One line per zone in match order, for `moat zones` and logs. */
export function formatZoneTable(table: ZoneTable): string {
  const lines: string[] = [];
  for (const z of table.zones) {
    const fqdn = z.name === '' ? '.' : `${z.name}.`;
    if (z.kind === 'root') {
      lines.push(`${fqdn}  root  sinkhole ${table.sinkhole === 'zero' ? 'A 0.0.0.0, other types NODATA' : 'NXDOMAIN'}`);
      continue;
    }
    const parts: string[] = [fqdn, z.kind];
    if (z.apex === null) parts.push('apex sinkholed');
    else {
      const rr = [...z.apex.a.map((a) => `A ${a}`), ...z.apex.aaaa.map((a) => `AAAA ${a}`)];
      parts.push(`ttl ${z.apex.ttl}`, rr.join(', '));
    }
    if (z.liveSubdomains) parts.push('subdomains resolved live');
    lines.push(parts.join('  '));
  }
  return lines.join('\n');
}
