/**
 * The egress policy for IPv6 destinations (issue 19: no family may become
 * the bypass). The IPv4 matrix is policy.test.ts; here: IPv6 rules, the
 * guarded ranges (fe80::/10, the metadata fd00:ec2::/32), the IPv6 host
 * alias, and every IPv6 form of an IPv4 address decided as that address.
 */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { parseRules } from '../../dns/rules.js';
import { EgressPolicy, type Decision, type FlowInput, type PinView, type PolicyOptions } from '../../sni/policy.js';
import { PinTable } from '../../sni/pins.js';
import { formatIpv4, ipv4Network, specialRangeOfIpv4 } from '../../sni/ranges.js';
import { formatIpv6 } from '../../sni/ranges6.js';
import { embeddedForms, spellings } from './support/ipv6-forms.js';

const GUEST = { network: '192.168.127.0', prefix: 24 };
const GUEST6 = { network: 'fd00:6d6f:6174::', prefix: 64 };
const HOST_ALIAS = '192.168.127.254';
const HOST_ALIAS6 = 'fd00:6d6f:6174::fe';
const G4 = ipv4Network(GUEST.network, GUEST.prefix)!;
const PUB6 = '2606:4700:4700::1111';

function policy(rules: readonly string[], extra: Partial<PolicyOptions> = {}): EgressPolicy {
  return EgressPolicy.compile({ rules: parseRules(rules), guestSubnet: GUEST, hostAlias: HOST_ALIAS, guestPrefix6: GUEST6, hostAlias6: HOST_ALIAS6, ...extra });
}
const NO_PINS: PinView = { namesFor: () => [] };
const tcp = (dst: string, port: number, peeked?: FlowInput['peeked']): FlowInput => (peeked === undefined ? { proto: 'tcp', dst, port } : { proto: 'tcp', dst, port, peeked });
const allowAddress = (reason: string, rule: string | null, address: string, name: string | null = null): Decision =>
  ({ verdict: 'allow', reason, rule, name, dial: { kind: 'address', address } }) as Decision;
const blocked = (reason: string, detail?: string): Decision =>
  (detail === undefined ? { verdict: 'block', reason, rule: null, name: null } : { verdict: 'block', reason, rule: null, name: null, detail }) as Decision;

describe('EgressPolicy.decide: IPv6 destinations', () => {
  const RULES = ['github.com', 'git.example.com:22', '2606:4700::/32', '[2a00:1450::1]:443'];
  it.each([
    // An empty allowlist: everything but the guarded ranges.
    { title: 'empty: public IPv6', rules: [], dst: PUB6, port: 443, want: allowAddress('no-allowlist', null, PUB6) },
    { title: 'empty: odd spelling is dialed in its one form', rules: [], dst: '2606:4700:4700:0000:0000:0000:0000:1111', port: 443, want: allowAddress('no-allowlist', null, PUB6) },
    { title: 'empty: fe80::/10', rules: [], dst: 'fe80::1', port: 80, want: blocked('link-local') },
    { title: 'empty: metadata fd00:ec2::254', rules: [], dst: 'fd00:ec2::254', port: 80, want: blocked('link-local') },
    { title: 'empty: metadata in upper case', rules: [], dst: 'FD00:0EC2::0254', port: 80, want: blocked('link-local') },
    { title: 'empty: IPv4-mapped metadata', rules: [], dst: '::ffff:169.254.169.254', port: 80, want: blocked('link-local') },
    { title: 'empty: NAT64 metadata', rules: [], dst: '64:ff9b::a9fe:a9fe', port: 80, want: blocked('link-local') },
    { title: 'empty: 6to4 through 127.0.0.1', rules: [], dst: '2002:7f00:1::1', port: 80, want: blocked('special-range', '6to4 through 127.0.0.1 (loopback)') },
    { title: 'empty: 6to4 through metadata', rules: [], dst: '2002:a9fe:a9fe::1', port: 80, want: blocked('link-local', '6to4 through 169.254.169.254 (link-local)') },
    { title: 'empty: Teredo client 10.0.0.1', rules: [], dst: `2001:0:808:808:0:0:${((~0x0a000001 >>> 16) & 0xffff).toString(16)}:${(~0x0a000001 & 0xffff).toString(16)}`, port: 80, want: blocked('special-range', 'teredo through 10.0.0.1 (private)') },
    { title: 'empty: zone id is not an address', rules: [], dst: 'fe80::1%eth0', port: 80, want: blocked('no-rule', 'invalid destination address') },
    { title: 'empty: bracketed is not an address', rules: [], dst: '[2606:4700::1]', port: 80, want: blocked('no-rule', 'invalid destination address') },
    { title: 'empty: IPv4-mapped public is dialed at its IPv4 address', rules: [], dst: '::ffff:8.8.8.8', port: 53, want: allowAddress('no-allowlist', null, '8.8.8.8') },
    // Rules.
    { title: 'IPv6 CIDR rule', rules: RULES, dst: '2606:4700::1', port: 5000, want: allowAddress('ip-rule', '2606:4700::/32', '2606:4700::1') },
    { title: 'IPv6 exact rule with port', rules: RULES, dst: '2a00:1450:0::1', port: 443, want: allowAddress('ip-rule', '[2a00:1450::1]:443', '2a00:1450::1') },
    { title: 'IPv6 exact rule, other port', rules: RULES, dst: '2a00:1450::1', port: 8443, want: blocked('no-rule') },
    { title: 'no IPv6 rule: 443 peeks', rules: RULES, dst: '2a00:1450::2', port: 443, want: { verdict: 'peek', rules: ['github.com'] } as Decision },
    { title: 'peeked SNI dials by name', rules: RULES, dst: '2a00:1450::2', port: 443, peeked: { via: 'sni' as const, name: 'github.com' }, want: { verdict: 'allow', reason: 'name-sni', rule: 'github.com', name: 'github.com', dial: { kind: 'name', name: 'github.com' } } as Decision },
    { title: '::/0 does not open fe80::/10', rules: ['::/0'], dst: 'fe80::1', port: 80, want: blocked('link-local') },
    { title: '::/0 does not open metadata', rules: ['::/0'], dst: 'fd00:ec2::254', port: 80, want: blocked('link-local') },
    { title: 'fd00::/8 does not open metadata', rules: ['fd00::/8'], dst: 'fd00:ec2::254', port: 80, want: blocked('link-local') },
    { title: 'a rule naming the metadata address opens it', rules: ['fd00:ec2::254'], dst: 'fd00:ec2::254', port: 80, want: allowAddress('ip-rule', 'fd00:ec2::254', 'fd00:ec2::254') },
    { title: '::/0 does not open IPv4-mapped loopback', rules: ['::/0'], dst: '::ffff:127.0.0.1', port: 80, want: blocked('no-rule') },
    { title: '::/0 does not open NAT64 private', rules: ['::/0'], dst: '64:ff9b::10.0.0.1', port: 80, want: blocked('no-rule') },
    { title: '::/0 does not open 6to4 through loopback', rules: ['::/0'], dst: '2002:7f00:1::1', port: 80, want: blocked('special-range', '6to4 through 127.0.0.1 (loopback)') },
    { title: 'an IPv4 rule opens its NAT64 form, dialed at IPv4', rules: ['8.8.8.8:53'], dst: '64:ff9b::808:808', port: 53, want: allowAddress('ip-rule', '8.8.8.8:53', '8.8.8.8') },
    { title: 'an IPv4-mapped rule is its IPv4 rule', rules: ['[::ffff:8.8.8.0/120]:53'], dst: '8.8.8.8', port: 53, want: allowAddress('ip-rule', '[::ffff:8.8.8.0/120]:53', '8.8.8.8') },
    { title: 'IPv4 rules do not match plain IPv6', rules: ['0.0.0.0/0'], dst: PUB6, port: 80, want: blocked('no-rule') },
    // The IPv6 host alias.
    { title: 'alias: a containing rule does not open it', rules: ['fd00::/8'], dst: HOST_ALIAS6, port: 80, want: blocked('host-alias') },
    { title: 'alias: an exact rule does', rules: [`[${HOST_ALIAS6}]:80`], dst: HOST_ALIAS6, port: 80, want: allowAddress('ip-rule', `[${HOST_ALIAS6}]:80`, HOST_ALIAS6) },
    { title: 'alias: exempt', rules: ['github.com'], dst: HOST_ALIAS6, port: 80, opts: { hostAliasExempt: true }, want: allowAddress('host-alias-exempt', null, HOST_ALIAS6) },
  ])('$title', ({ rules, dst, port, peeked, opts, want }) => {
    expect(policy(rules, opts).decide(tcp(dst, port, peeked), NO_PINS)).toEqual(want);
  });

  it.each([
    ['host', '[::ffff:127.0.0.1]'],
    ['host', '[::FFFF:7F00:1]'],
    ['host', '[0:0:0:0:0:ffff:127.0.0.1]'],
    ['host', '[64:ff9b::a9fe:a9fe]'],
    ['host', '[fd00:ec2::254]'],
    ['sni', '::ffff:127.0.0.1'],
    ['sni', 'fd00:ec2::254'],
  ] as const)('a %s naming an IPv6 literal (%s) is refused, never dialed', (via, name) => {
    const d = policy(['github.com']).decide(tcp('2606:4700::1', 443, { via, name }), NO_PINS);
    expect(d).toMatchObject({ verdict: 'block', reason: 'ip-literal-name' });
  });

  it('a Host with a zone id is refused as a bad name', () => {
    expect(policy(['github.com']).decide(tcp('2606:4700::1', 80, { via: 'host', name: '[fe80::1%25eth0]' }), NO_PINS)).toMatchObject({ verdict: 'block' });
    expect(policy(['github.com']).decideName('tcp', '[fe80::1%eth0]', 443)).toMatchObject({ verdict: 'block', reason: 'ip-literal-name' });
  });

  it('ICMP echo to IPv6: only a portless IPv6 rule allows it; mapped forms as their IPv4 address; metadata guarded', () => {
    const p = policy(['github.com', '2606:4700::/32', '[2a00:1450::1]:443', '8.8.8.8']);
    const echo = (dst: string): Decision => p.decide({ proto: 'icmp', dst, port: 0 }, NO_PINS);
    expect(echo('2606:4700::1')).toEqual(allowAddress('ip-rule', '2606:4700::/32', '2606:4700::1'));
    expect(echo('2a00:1450::1')).toEqual(blocked('icmp-needs-ip-rule'));
    expect(echo('::ffff:8.8.8.8')).toEqual(allowAddress('ip-rule', '8.8.8.8', '8.8.8.8'));
    expect(echo('fd00:ec2::254')).toEqual(blocked('link-local'));
  });

  it('pins an IPv6 address for a name on an unpeekable port, in any spelling; a special pinned address is rebinding', () => {
    let now = 0;
    const pins = new PinTable(() => now);
    pins.pin('git.example.com', ['2606:4700:0:0:0:0:0:5', 'fd12::5'], 60_000);
    const p = policy(['git.example.com:22']);
    expect(p.decide(tcp('2606:4700::5', 22), pins)).toEqual(allowAddress('pinned', 'git.example.com:22', '2606:4700::5', 'git.example.com'));
    expect(p.decide(tcp('2606:4700:0::0005', 22), pins)).toEqual(allowAddress('pinned', 'git.example.com:22', '2606:4700::5', 'git.example.com'));
    expect(p.decide(tcp('fd12::5', 22), pins)).toEqual({ verdict: 'block', reason: 'rebinding', rule: 'git.example.com:22', name: 'git.example.com', detail: 'private' });
    const unpinned = { verdict: 'peek', rules: ['git.example.com:22'] };
    expect(p.decide(tcp('2606:4700::6', 22), pins)).toEqual(unpinned);
    now = 60_000;
    expect(p.decide(tcp('2606:4700::5', 22), pins)).toEqual(unpinned);
  });

  it('warns about IPv6 rules that contain the guarded ranges or the alias', () => {
    expect(policy(['::/0', 'fd00::/8']).warnings().map((w) => [w.rule, w.contains])).toEqual([
      ['::/0', 'host-alias'],
      ['::/0', 'link-local'],
      ['::/0', 'link-local'],
      ['fd00::/8', 'host-alias'],
      ['fd00::/8', 'link-local'],
    ]);
  });

  it('throws for an invalid IPv6 host alias or prefix', () => {
    expect(() => policy([], { hostAlias6: '192.168.127.254' })).toThrow(/IPv6 host alias/);
    expect(() => policy([], { guestPrefix6: { network: 'fd00::', prefix: 129 } })).toThrow(/guest IPv6 prefix/);
  });
});

describe('EgressPolicy.admitResolved: IPv6 answers', () => {
  const answers = [PUB6, '::1', 'fe80::1', 'fd00:ec2::254', '::ffff:127.0.0.1', '64:ff9b::a9fe:a9fe', 'fd12::1', '2002:7f00:1::1', 'fd00:6d6f:6174::9', 'ff02::1', '2001:db8::1', 'fe80::1%eth0'];
  it('refuses every special range, embedded IPv4 by its IPv4 range', () => {
    const r = policy(['github.com']).admitResolved(answers, 443);
    expect(r.admitted).toEqual([PUB6]);
    expect(r.refused).toEqual([
      { address: '::1', range: 'loopback' },
      { address: 'fe80::1', range: 'link-local' },
      { address: 'fd00:ec2::254', range: 'link-local' },
      { address: '::ffff:127.0.0.1', range: 'loopback' },
      { address: '64:ff9b::a9fe:a9fe', range: 'link-local' },
      { address: 'fd12::1', range: 'private' },
      { address: '2002:7f00:1::1', range: 'loopback' },
      { address: 'fd00:6d6f:6174::9', range: 'guest-subnet' },
      { address: 'ff02::1', range: 'multicast' },
      { address: '2001:db8::1', range: 'documentation' },
      { address: 'fe80::1%eth0', range: 'reserved' },
    ]);
  });

  it('--admit-resolved takes IPv6 networks; a containing one does not admit ::1, fe80::/10 or metadata', () => {
    const p = policy(['github.com'], { admitResolved: ['fd12::/16', '::/0', '10.0.0.0/8'] });
    const r = p.admitResolved(answers, 443);
    expect(r.admitted).toEqual([PUB6, 'fd12::1', 'fd00:6d6f:6174::9', 'ff02::1', '2001:db8::1']);
    expect(p.admitResolved(['::ffff:10.1.2.3', '64:ff9b::10.1.2.3', '2002:a01:203::1'], 443).admitted).toEqual(['::ffff:10.1.2.3', '64:ff9b::10.1.2.3']);
    const inside = policy(['github.com'], { admitResolved: ['::1', 'fe80::/64'] });
    expect(inside.admitResolved(['::1', 'fe80::1', 'fd00:ec2::254'], 443).admitted).toEqual(['::1', 'fe80::1']);
  });
});

describe('every IPv6 form of an IPv4 address is decided as that address (property)', () => {
  const ruleSets = [
    [],
    ['github.com', 'git.example.com:22'],
    ['0.0.0.0/0'],
    ['10.0.0.0/8:443', '127.0.0.1', '169.254.169.254:80', HOST_ALIAS, 'github.com'],
    ['::/0', '2002::/16', '2001::/32', '64:ff9b::/96', 'github.com'],
    ['[::ffff:10.0.0.0/104]', '8.8.8.8'],
  ];
  const special = fc.constantFrom(0x7f000001, 0xa9fea9fe, 0x0a000001, 0xc0a87f01, 0xc0a87ffe, 0x64400001, 0xe0000001, 0xffffffff, 0x00000002, 0x08080808);
  const v4 = fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), special);
  const peeked = fc.constantFrom(undefined, { via: 'sni' as const, name: 'github.com' }, { via: 'host' as const, name: 'evil.example' });

  it('mapped, compatible, translated and NAT64: the same decision, in every spelling', () => {
    fc.assert(
      fc.property(v4, fc.constantFrom(...ruleSets), fc.constantFrom(22, 53, 80, 443), peeked, fc.boolean(), (v, rules, port, pk, proto) => {
        const p = policy(rules, { allowLinkLocal: false });
        const pins = new PinTable(() => 0);
        pins.pin('git.example.com', [formatIpv4(v)], Infinity);
        const flow = (dst: string): FlowInput => ({ proto: proto ? 'tcp' : 'udp', dst, port, ...(pk === undefined ? {} : { peeked: pk }) });
        const want = p.decide(flow(formatIpv4(v)), pins);
        for (const f of embeddedForms(v).filter((x) => !x.form.startsWith('teredo') && x.form !== '6to4')) {
          for (const s of spellings(f.address)) expect({ form: f.form, s, d: p.decide(flow(s), pins) }).toEqual({ form: f.form, s, d: want });
        }
      }),
      { numRuns: 600 },
    );
  });

  it('6to4 and Teredo: a special relay is always refused; an ordinary one is an IPv6 address', () => {
    fc.assert(
      fc.property(v4, fc.constantFrom(...ruleSets), fc.constantFrom(80, 443), (v, rules) => {
        const p = policy(rules);
        const range = specialRangeOfIpv4(v, G4);
        for (const f of embeddedForms(v).filter((x) => x.form.startsWith('teredo') || x.form === '6to4')) {
          const d = p.decide(tcp(formatIpv6(f.address), 80), NO_PINS);
          if (range !== null) expect(d).toMatchObject({ verdict: 'block', reason: range === 'link-local' ? 'link-local' : 'special-range' });
          else if (rules.length === 0) expect(d).toEqual(allowAddress('no-allowlist', null, formatIpv6(f.address)));
          else if (rules.includes('2002::/16') && f.form === '6to4') expect(d).toEqual(allowAddress('ip-rule', '2002::/16', formatIpv6(f.address)));
        }
      }),
      { numRuns: 600 },
    );
  });

  it('admitResolved: every embedded form is admitted exactly when its IPv4 address is', () => {
    fc.assert(
      fc.property(v4, fc.constantFrom(...ruleSets), fc.constantFrom([], ['10.0.0.0/8'], ['0.0.0.0/0', '::/0']), (v, rules, admit) => {
        const p = policy(rules, { admitResolved: admit });
        const ok4 = p.admitResolved([formatIpv4(v)], 443).admitted.length === 1;
        for (const f of embeddedForms(v)) {
          const ok6 = p.admitResolved([formatIpv6(f.address)], 443).admitted.length === 1;
          if (f.form === '6to4' || f.form.startsWith('teredo')) {
            if (specialRangeOfIpv4(v, G4) !== null) expect({ form: f.form, ok6 }).toEqual({ form: f.form, ok6: false });
          } else expect({ form: f.form, ok6 }).toEqual({ form: f.form, ok6: ok4 });
        }
      }),
      { numRuns: 600 },
    );
  });
});
