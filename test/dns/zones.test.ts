import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { parseRules, type Rule } from '../../dns/rules.js';
import {
  builtinHosts,
  formatZoneTable,
  hostsToResolve,
  ZoneTable,
  type HostRecords,
  type Zone,
} from '../../dns/zones.js';

const builtins = builtinHosts({ gatewayIpv4: '192.168.127.1', hostAliasIpv4: '192.168.127.254' });

function recordsFor(hosts: readonly string[]): Map<string, HostRecords> {
  // Distinct, recognisable addresses per host so a wrong zone shows.
  return new Map(hosts.map((h, i) => [h, { a: [`10.0.${i >> 8}.${i & 255}`], aaaa: [], ttl: 300 }]));
}

function tableFor(ruleTexts: string[]): ZoneTable {
  const rules = parseRules(ruleTexts);
  return ZoneTable.build(rules, recordsFor(hostsToResolve(rules, builtins)), builtins);
}

/** Brute force over label arrays: a different formulation from the table's suffix walk. */
function oracle(zones: readonly Zone[], name: string): string {
  const exactBuiltin = zones.find((z) => z.kind === 'builtin' && z.name === name);
  if (exactBuiltin) return exactBuiltin.name;
  return apexAbove(zones, name, longestSuffixZone(zones, name), (n) => longestSuffixZone(zones, n));
}

/** The allowed zone whose name is the longest label-suffix of `name` ('' for none: the root). */
function longestSuffixZone(zones: readonly Zone[], name: string): string {
  const q = name.split('.');
  let best: string[] | null = null;
  for (const z of zones) {
    if (z.kind !== 'allowed') continue;
    const zl = z.name.split('.');
    if (zl.length > q.length) continue;
    const tail = q.slice(q.length - zl.length);
    if (tail.every((l, i) => l === zl[i]) && (best === null || zl.length > best.length)) best = zl;
  }
  return best === null ? '' : best.join('.');
}

/**
 * The apex of a wildcard-only zone goes to the zone above it when that one resolves its subdomains live
 * (dns/zones.ts match). "Above" is the plain longest suffix of the parent name: the parent's own apex rule
 * does not apply, since `name` is a subdomain of that zone, not its apex (a.containers.merck under
 * *.containers.merck is live there even though containers.merck itself goes further up).
 */
function apexAbove(zones: readonly Zone[], name: string, picked: string, zoneAbove: (parent: string) => string): string {
  const z = zones.find((x) => x.kind === 'allowed' && x.name === picked);
  if (z === undefined || z.name !== name || z.apex !== null || !name.includes('.')) return picked;
  const above = zoneAbove(name.slice(name.indexOf('.') + 1));
  return zones.find((x) => x.name === above)?.liveSubdomains === true ? above : picked;
}

/**
 * Names one edit away from `n`: itself, one label more or less at either
 * end, a character before or after without a dot, the first two labels
 * glued. The random queries below rarely land exactly one label off a zone.
 */
function nearMisses(n: string): string[] {
  const labels = n.split('.');
  const out = [n, `x.${n}`, `a.b.${n}`, `${n}.com`, `x${n}`, `${n}x`];
  if (labels.length > 1) out.push(labels.slice(1).join('.'), labels.slice(0, -1).join('.'), [labels[0]! + labels[1]!, ...labels.slice(2)].join('.'));
  return out;
}

/** What the zone contract (dns/zones.ts Zone) says is answered: a built-in, an apex with records, or a name strictly below a live zone. */
function served(t: ZoneTable, q: string): boolean {
  const z = t.match(q);
  if (z.kind === 'builtin') return true;
  if (z.kind === 'root') return false;
  return q === z.name ? z.apex !== null : z.liveSubdomains;
}

/** Independent: a built-in's exact name, a host rule's exact name, or a name whose labels end with a wildcard's domain labels and have more. */
function allowedByRules(texts: readonly string[], q: string): boolean {
  if (builtins.some((b) => b.name === q)) return true;
  const ql = q.split('.');
  return texts.some((text) => {
    const wild = text.startsWith('*.');
    const d = (wild ? text.slice(2) : text).split('.');
    if (!wild) return d.length === ql.length && d.every((l, i) => l === ql[i]);
    return ql.length > d.length && d.every((l, i) => l === ql[ql.length - d.length + i]);
  });
}

/** What the issue describes: the first zone in table order that matches. */
function firstMatchInOrder(zones: readonly Zone[], name: string): string {
  const first = firstSuffixInOrder(zones, name, true);
  // A built-in host answers its exact name itself, even where a wildcard-only zone has that name too.
  if (zones.some((z) => z.kind === 'builtin' && z.name === first)) return first;
  return apexAbove(zones, name, first, (n) => firstSuffixInOrder(zones, n, false));
}

/** The first zone in table order whose name is `name` or a label-suffix of it (built-ins only by exact name, and only if asked). */
function firstSuffixInOrder(zones: readonly Zone[], name: string, builtins: boolean): string {
  for (const z of zones) {
    if (z.kind === 'builtin' ? builtins && z.name === name : z.name === '' || name === z.name || name.endsWith(`.${z.name}`)) return z.name;
  }
  throw new Error('no zone matched, not even root');
}

describe('ZoneTable', () => {
  it('orders built-ins first, then longest suffix first (labels, length, lexical), root last', () => {
    const t = tableFor(['com.example', 'b.com', 'aa.com', 'iapi.merck.com', '*.merck.com', 'a.com', 'x.y.z.w']);
    expect(t.zones.map((z) => z.name)).toEqual([
      'gateway.containers.internal',
      'host.containers.internal',
      'x.y.z.w',
      'iapi.merck.com',
      'com.example',
      'merck.com',
      'aa.com',
      'a.com',
      'b.com',
      '',
    ]);
  });

  it('matches on label boundaries and picks the most specific zone', () => {
    const t = tableFor(['example.com', '*.merck.com', 'iapi.merck.com']);
    expect(t.match('notexample.com').kind).toBe('root');
    expect(t.match('example.com').name).toBe('example.com');
    expect(t.match('www.example.com').name).toBe('example.com');
    expect(t.match('iapi.merck.com').name).toBe('iapi.merck.com');
    expect(t.match('x.iapi.merck.com').name).toBe('iapi.merck.com');
    expect(t.match('www.merck.com').name).toBe('merck.com');
    expect(t.match('com').kind).toBe('root');
    expect(t.match('').kind).toBe('root');
  });

  it('merges host and wildcard rules for one domain into one zone', () => {
    const t = tableFor(['*.github.com', 'github.com', 'github.com:443']);
    const z = t.match('github.com');
    expect(z).toMatchObject({ name: 'github.com', kind: 'allowed', liveSubdomains: true });
    expect(z.apex?.a.length).toBe(1);
    expect(t.zones.filter((x) => x.name === 'github.com')).toHaveLength(1);
  });

  it('a wildcard alone never allows the apex', () => {
    const z = tableFor(['*.github.com']).match('github.com');
    expect(z.apex).toBeNull();
    expect(z.liveSubdomains).toBe(true);
  });

  it('a nested wildcard\'s apex goes to the nearest live zone above it, not the top one (property counterexample, seed 554682196)', () => {
    const t = tableFor(['*.a.containers.merck', '*.merck', '*.containers.merck']);
    expect(t.match('a.containers.merck').name).toBe('containers.merck');
    expect(t.match('containers.merck').name).toBe('merck');
  });

  it('a zone below a wildcard does not hide the wildcard: names below a host, and a nested wildcard\'s apex, are resolved live', () => {
    // As the flow policy decides (sni/policy.ts: any wildcard strictly above the name).
    const t = tableFor(['*.example.com', 'api.example.com']);
    expect(t.match('api.example.com')).toMatchObject({ name: 'api.example.com', liveSubdomains: true });
    expect(t.match('api.example.com').apex).not.toBeNull();
    expect(t.match('x.api.example.com')).toMatchObject({ name: 'api.example.com', liveSubdomains: true });
    // A host rule alone still allows its own name only.
    expect(tableFor(['api.example.com']).match('x.api.example.com').liveSubdomains).toBe(false);
    // The apex of a wildcard below another wildcard is the upper wildcard's to allow.
    const nested = tableFor(['*.example.com', '*.cdn.example.com']);
    expect(nested.match('cdn.example.com')).toMatchObject({ name: 'example.com', liveSubdomains: true });
    expect(nested.match('a.cdn.example.com')).toMatchObject({ name: 'cdn.example.com', liveSubdomains: true });
    expect(tableFor(['*.cdn.example.com']).match('cdn.example.com')).toMatchObject({ name: 'cdn.example.com', apex: null });
  });

  it('serves built-ins always, exactly, and never pre-resolves them', () => {
    const rules = parseRules(['host.containers.internal', '*.containers.internal']);
    expect(hostsToResolve(rules, builtins)).toEqual([]);
    const t = ZoneTable.build(rules, new Map(), builtins);
    expect(t.match('host.containers.internal')).toMatchObject({ kind: 'builtin', apex: { a: ['192.168.127.254'] } });
    expect(t.match('gateway.containers.internal').apex?.a).toEqual(['192.168.127.1']);
    expect(t.match('x.gateway.containers.internal').name).toBe('containers.internal');
  });

  it('honours configured built-in names', () => {
    const b = builtinHosts({ gatewayIpv4: '10.0.2.2', hostAliasIpv4: '10.0.2.3', hostAliasNames: ['Host.Lima.Internal.'] });
    const t = ZoneTable.build([], new Map(), b);
    expect(t.match('host.lima.internal').apex?.a).toEqual(['10.0.2.3']);
    expect(t.match('host.containers.internal').kind).toBe('root');
  });

  it('refuses to build a half table when an exact host has no records', () => {
    const rules = parseRules(['a.com', 'b.com', 'c.com']);
    const partial = new Map<string, HostRecords>([['a.com', { a: ['1.1.1.1'], aaaa: [], ttl: 5 }], ['c.com', { a: [], aaaa: [], ttl: 5 }]]);
    expect(() => ZoneTable.build(rules, partial)).toThrow('no records for b.com, c.com');
  });

  it('formats the table in match order with records', () => {
    const text = formatZoneTable(tableFor(['github.com', '*.merck.com']));
    const lines = text.split('\n');
    expect(lines[0]).toContain('gateway.containers.internal.');
    expect(lines[2]).toMatch(/^github\.com\.\s+allowed\s+ttl 300\s+A 10\.0\.0\.0$/);
    expect(lines[3]).toContain('merck.com.  allowed  apex sinkholed  subdomains resolved live');
    expect(lines[4]).toMatch(/^\.\s+root\s+sinkhole A 0\.0\.0\.0/);
  });

  describe('property: picks the longest matching zone, root last, order-independent', () => {
    // A small alphabet so rule names and queries share suffixes often.
    const label = fc.constantFrom('a', 'b', 'ab', 'com', 'merck', 'x-y', 'containers', 'internal', 'gateway');
    const name = fc.array(label, { minLength: 1, maxLength: 5 }).map((l) => l.join('.'));
    const ruleText = fc.tuple(fc.boolean(), name).map(([wild, n]) => (wild ? `*.${n}` : n));
    const ruleSet = fc.array(ruleText, { minLength: 0, maxLength: 40 });

    it('a built-in name that is also a wildcard-only zone answers as the built-in (property counterexample, seed 427421705)', () => {
      const texts = ['*.internal', '*.gateway.containers.internal'];
      const t = tableFor(texts);
      for (const q of ['gateway.containers.internal', 'a.gateway.containers.internal', 'containers.internal']) {
        expect(t.match(q).name, q).toBe(oracle(t.zones, q));
        expect(t.match(q).name, q).toBe(firstMatchInOrder(t.zones, q));
      }
      expect(t.match('gateway.containers.internal').kind).toBe('builtin');
    });

    it('agrees with the brute-force oracle and with first-match-in-order', () => {
      fc.assert(
        fc.property(ruleSet, fc.array(name, { minLength: 1, maxLength: 30 }), (texts, queries) => {
          const t = tableFor(texts);
          expect(t.zones[t.zones.length - 1]!.kind).toBe('root');
          expect(t.zones.filter((z) => z.kind === 'root')).toHaveLength(1);
          // Query every zone's name (rules and built-ins) and its near misses too: exact hits and off-by-one labels are the edge.
          for (const q of [...queries, ...t.zones.flatMap((z) => (z.name === '' ? [] : nearMisses(z.name)))]) {
            const picked = t.match(q).name;
            expect(picked, q).toBe(oracle(t.zones, q));
            expect(picked, q).toBe(firstMatchInOrder(t.zones, q));
            expect(served(t, q), `${q} under ${JSON.stringify(texts)}`).toBe(allowedByRules(texts, q));
          }
        }),
        { numRuns: 300 },
      );
    });

    it('the table does not depend on rule order', () => {
      fc.assert(
        fc.property(ruleSet.chain((texts) => fc.tuple(fc.constant(texts), fc.shuffledSubarray(texts, { minLength: texts.length }))), ([texts, shuffled]) => {
          expect(tableFor(shuffled).zones).toEqual(tableFor(texts).zones.map((z) => expect.objectContaining({ name: z.name, liveSubdomains: z.liveSubdomains })));
        }),
        { numRuns: 200 },
      );
    });
  });
});
