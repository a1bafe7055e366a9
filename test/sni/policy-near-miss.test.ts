/**
 * The name half of EgressPolicy against an independent oracle, on names that
 * are almost an allowed one: the near misses a hostile guest would try.
 *
 * policy.test.ts's properties draw names from the rules' own label pool, so
 * every name they try is the rule's name, or it with whole labels in front:
 * `xgithub.com` for `github.com`, or `evilexample.org` for `*.example.org`,
 * never happens there, and a policy that matched suffixes without a label
 * boundary passed every property (only an example row caught it). Here every
 * name is made from one rule's name by near-miss edits: a character before
 * or after without a dot, a label added or removed at either end, two labels
 * glued, the wildcard's apex itself, case, trailing dots, and IDN (a Unicode
 * rule sent as punycode or upper case; an ASCII rule with one letter swapped
 * for a look-alike).
 *
 * The oracle compares label arrays and canonicalises with node:url's
 * domainToASCII, sharing nothing with dns/rules.ts or sni/policy.ts but the
 * rule parser that builds the rule set.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { domainToASCII } from 'node:url';
import { parseRules, type Rule } from '../../dns/rules.js';
import { EgressPolicy, type PinView } from '../../sni/policy.js';

const GUEST = { network: '192.168.127.0', prefix: 24 };
const NO_PINS: PinView = { namesFor: () => [] };
/** A public address no rule here names: only the peeked name can decide. */
const DST = '203.0.113.5';

// Labels that are suffixes, prefixes or glued forms of each other, so near misses collide with other rules too.
const LABELS = ['github', 'xgithub', 'hub', 'git', 'com', 'co', 'uk', 'io', 'example', 'api', 'a', 'b', 'x-y', 'm', 'om', 'bücher', 'xn--bcher-kva'];
/** Single letters swapped for a Unicode look-alike (Cyrillic a, e, o; dotless i). */
const LOOKALIKE: Record<string, string> = { a: '\u0430', e: '\u0435', o: '\u043e', i: '\u0131' };

const domainArb = fc.array(fc.constantFrom(...LABELS), { minLength: 1, maxLength: 4 }).map((ls) => ls.join('.'));
const rulePortArb = fc.constantFrom<number | null>(null, null, 443, 8443);
const ruleTextArb = fc
  .tuple(fc.boolean(), domainArb, rulePortArb)
  .map(([wild, d, port]) => `${wild ? '*.' : ''}${d}${port === null ? '' : `:${port}`}`);
/** Rule sets that parse; the pool's IDN labels are valid. */
const rulesArb = fc.array(ruleTextArb, { minLength: 1, maxLength: 6 }).map((texts) => parseRules(texts));

type Edit = (name: string, r: { char: string; label: string; pos: number }) => string;
/** Each edit turns a name into a near miss (or, for some, into the same name in another spelling). */
const EDITS: Record<string, Edit> = {
  same: (n) => n,
  'char-before': (n, r) => r.char + n, // xgithub.com
  'char-after': (n, r) => n + r.char, // github.comx
  'label-before': (n, r) => `${r.label}.${n}`, // x.github.com
  'label-after': (n, r) => `${n}.${r.label}`, // github.com.evil
  'drop-first-label': (n) => (n.includes('.') ? n.slice(n.indexOf('.') + 1) : n), // the parent, or a wildcard's apex's parent
  'drop-last-label': (n) => (n.includes('.') ? n.slice(0, n.lastIndexOf('.')) : n),
  'glue-labels': (n, r) => {
    const ls = n.split('.');
    if (ls.length < 2) return n;
    const i = r.pos % (ls.length - 1);
    return [...ls.slice(0, i), ls[i]! + ls[i + 1]!, ...ls.slice(i + 2)].join('.'); // api.github.com -> apigithub.com
  },
  'char-in-label': (n, r) => {
    const i = r.pos % (n.length + 1);
    return n.slice(0, i) + r.char + n.slice(i); // may land next to a dot: gith.ub.com, github.x.com
  },
  lookalike: (n, r) => {
    const at = [...n].map((c, i) => (LOOKALIKE[c] === undefined ? -1 : i)).filter((i) => i >= 0);
    if (at.length === 0) return n;
    const i = at[r.pos % at.length]!;
    const chars = [...n];
    chars[i] = LOOKALIKE[chars[i]!]!;
    return chars.join('');
  },
  punycode: (n) => domainToASCII(n) || n, // bücher.example -> xn--bcher-kva.example (the same name)
  unicode: (n) => n.replace(/xn--bcher-kva/g, 'bücher'),
};
const EDIT_NAMES = Object.keys(EDITS);

interface Near {
  /** The rule's name (host or wildcard domain) the name was made from. */
  base: string;
  edits: string[];
  name: string;
}

function nearArb(rules: readonly Rule[]): fc.Arbitrary<Near> {
  const bases = rules.flatMap((r) => (r.kind === 'host' ? [r.host] : r.kind === 'wildcard' ? [r.domain, `x.${r.domain}`] : []));
  const params = fc.record({ char: fc.constantFrom('x', '0', '_', 'a', '-'), label: fc.constantFrom(...LABELS, 'evil'), pos: fc.nat(64) });
  return fc
    .tuple(
      fc.constantFrom(...bases),
      fc.array(fc.tuple(fc.constantFrom(...EDIT_NAMES), params), { minLength: 1, maxLength: 2 }),
      fc.array(fc.boolean(), { minLength: 64, maxLength: 64 }),
      fc.constantFrom('', '', '.', '..'),
    )
    .map(([base, edits, upper, dots]) => {
      let name = base;
      for (const [e, p] of edits) name = EDITS[e]!(name, p);
      name = [...name].map((c, i) => (upper[i % 64] ? c.toUpperCase() : c)).join('') + dots;
      return { base, edits: edits.map(([e]) => e), name };
    });
}

/** The oracle's canonical form: one trailing dot dropped, IDNA (node:url), LDH-or-underscore labels; null = not a hostname. */
function oracleCanonical(raw: string): string | null {
  const stripped = raw.endsWith('.') ? raw.slice(0, -1) : raw;
  // eslint-disable-next-line no-control-regex
  const ascii = /^[\x00-\x7f]*$/.test(stripped) ? stripped.toLowerCase() : domainToASCII(stripped);
  if (ascii === '' || ascii.length > 253) return null;
  const labels = ascii.split('.');
  for (const l of labels) if (l.length > 63 || !/^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$/.test(l)) return null;
  if (/^([0-9]+|0x[0-9a-f]*)$/.test(labels[labels.length - 1]!)) return null;
  return ascii;
}

const sameLabels = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && a.every((l, i) => l === b[i]);

/** Does some rule allow canonical `name` on `port`? Label arrays: a host equals, a wildcard's domain is a proper label suffix. */
function oracleAllows(rules: readonly Rule[], name: string, port: number): boolean {
  const q = name.split('.');
  return rules.some((r) => {
    if (r.kind !== 'host' && r.kind !== 'wildcard') return false;
    if (!(r.port === port || (r.port === null && (port === 80 || port === 443)))) return false;
    if (r.kind === 'host') return sameLabels(q, r.host.split('.'));
    const d = r.domain.split('.');
    return q.length > d.length && sameLabels(q.slice(q.length - d.length), d);
  });
}

describe('EgressPolicy on near misses of allowed names (independent oracle)', () => {
  it('a near miss of an allowed name is allowed exactly when the label-array oracle allows it, and dialed by its canonical name', () => {
    const seen = { allowed: 0, refused: 0, refusedByEdit: new Map<string, number>() };
    fc.assert(
      fc.property(
        rulesArb.chain((rules) => fc.tuple(fc.constant(rules), nearArb(rules))),
        fc.constantFrom(80, 443, 8443),
        fc.constantFrom('sni' as const, 'host' as const),
        ([rules, near], port, via) => {
          const policy = EgressPolicy.compile({ rules, guestSubnet: GUEST, hostAlias: null });
          const d = policy.decide({ proto: 'tcp', dst: DST, port, peeked: { via, name: near.name } }, NO_PINS);
          const canonical = oracleCanonical(near.name);
          const expected = canonical !== null && oracleAllows(rules, canonical, port);
          const why = JSON.stringify({ rules: rules.map((r) => r.text), ...near, port, canonical, decision: d });
          expect(d.verdict === 'allow', why).toBe(expected);
          if (d.verdict === 'allow') {
            seen.allowed++;
            expect(d.dial, why).toEqual({ kind: 'name', name: canonical });
            expect(d.reason).toBe(via === 'sni' ? 'name-sni' : 'name-host');
          } else {
            seen.refused++;
            for (const e of near.edits) seen.refusedByEdit.set(e, (seen.refusedByEdit.get(e) ?? 0) + 1);
          }
        },
      ),
      { numRuns: 3000 },
    );
    // The generator must reach both outcomes, and refusals through every kind of edit.
    expect(seen.allowed).toBeGreaterThan(150);
    expect(seen.refused).toBeGreaterThan(300);
    for (const e of EDIT_NAMES) if (e !== 'same' && e !== 'punycode' && e !== 'unicode') expect(seen.refusedByEdit.get(e) ?? 0, e).toBeGreaterThan(10);
  });

  it('examples the generator must be able to make: prefix without a dot, suffix, apex, glued labels, look-alikes, punycode', () => {
    const rules = parseRules(['github.com', '*.example.org', 'bücher.example']);
    const policy = EgressPolicy.compile({ rules, guestSubnet: GUEST, hostAlias: null });
    const verdict = (name: string): string => policy.decide({ proto: 'tcp', dst: DST, port: 443, peeked: { via: 'sni', name } }, NO_PINS).verdict;
    const cases: [string, boolean][] = [
      ['github.com', true],
      ['GitHub.COM.', true],
      ['xgithub.com', false],
      ['github.comx', false],
      ['github.com.evil', false],
      ['x.github.com', false],
      ['com', false],
      ['example.org', false], // a wildcard's apex
      ['a.example.org', true],
      ['aexample.org', false],
      ['a.b.example.org', true],
      ['exampleorg', false],
      ['g\u0131thub.com', false], // dotless i
      ['xn--bcher-kva.example', true],
      ['BÜCHER.example', true],
      ['bucher.example', false],
      ['github.com..', false],
    ];
    for (const [name, allowed] of cases) {
      expect(verdict(name), name).toBe(allowed ? 'allow' : 'block');
      const c = oracleCanonical(name);
      expect(c !== null && oracleAllows(rules, c, 443), `oracle: ${name}`).toBe(allowed);
    }
  });
});
