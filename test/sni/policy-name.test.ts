import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { parseRules } from '../../dns/rules.js';
import { EgressPolicy, type Decision, type NameVia } from '../../sni/policy.js';

// decideName: the proxy's question "may I connect to NAME:PORT?" (no guest-chosen address).

const GUEST = { network: '192.168.127.0', prefix: 24 };

function policy(rules: readonly string[]): EgressPolicy {
  return EgressPolicy.compile({ rules: parseRules(rules), guestSubnet: GUEST, hostAlias: '192.168.127.254' });
}

const RULES = ['github.com', '*.example.org', 'api.example.net:8443', 'git.example.com:22', '203.0.113.0/24', '192.0.2.1'];

const allow = (reason: string, rule: string | null, name: string): Decision =>
  ({ verdict: 'allow', reason, rule, name, dial: { kind: 'name', name } }) as Decision;
const blocked = (reason: string, name: string | null = null, detail?: string): Decision =>
  (detail === undefined ? { verdict: 'block', reason, rule: null, name } : { verdict: 'block', reason, rule: null, name, detail }) as Decision;

interface Row {
  title: string;
  name: string;
  port: number;
  proto?: 'tcp' | 'udp';
  via?: NameVia;
  rules?: readonly string[];
  want: Decision;
}

const rows: Row[] = [
  { title: 'exact host on 443', name: 'github.com', port: 443, want: allow('name-target', 'github.com', 'github.com') },
  { title: 'exact host on 80', name: 'github.com', port: 80, want: allow('name-target', 'github.com', 'github.com') },
  { title: 'case and trailing dot are canonicalised', name: 'GitHub.COM.', port: 443, want: allow('name-target', 'github.com', 'github.com') },
  { title: 'portless rule does not cover 8080', name: 'github.com', port: 8080, want: blocked('name-not-allowed', 'github.com') },
  { title: 'portless rule does not cover 22', name: 'github.com', port: 22, want: blocked('name-not-allowed', 'github.com') },
  { title: 'subdomain of an exact rule is not allowed', name: 'api.github.com', port: 443, want: blocked('name-not-allowed', 'api.github.com') },
  { title: 'wildcard covers one level below', name: 'www.example.org', port: 443, want: allow('name-target', '*.example.org', 'www.example.org') },
  { title: 'wildcard covers any depth below', name: 'a.b.example.org', port: 80, want: allow('name-target', '*.example.org', 'a.b.example.org') },
  { title: 'wildcard never matches its apex', name: 'example.org', port: 443, want: blocked('name-not-allowed', 'example.org') },
  { title: 'ported rule covers its port', name: 'api.example.net', port: 8443, want: allow('name-target', 'api.example.net:8443', 'api.example.net') },
  { title: 'ported rule does not cover 443', name: 'api.example.net', port: 443, want: blocked('name-not-allowed', 'api.example.net') },
  { title: 'ssh rule covers 22', name: 'git.example.com', port: 22, want: allow('name-target', 'git.example.com:22', 'git.example.com') },
  { title: 'unlisted name', name: 'evil.test', port: 443, want: blocked('name-not-allowed', 'evil.test') },
  { title: 'via sni reports name-sni', name: 'github.com', port: 443, via: 'sni', want: allow('name-sni', 'github.com', 'github.com') },
  { title: 'via host reports name-host', name: 'github.com', port: 80, via: 'host', want: allow('name-host', 'github.com', 'github.com') },
  { title: 'UDP to a name needs an IP rule', name: 'github.com', port: 443, proto: 'udp', want: blocked('udp-needs-ip-rule', 'github.com') },
  { title: 'IPv4 literal inside an IP rule is still refused here', name: '203.0.113.5', port: 443, want: blocked('ip-literal-name', '203.0.113.5', 'rule:numeric-name') },
  { title: 'bracketed IPv6 literal', name: '[::1]', port: 443, want: { verdict: 'block', reason: 'ip-literal-name', rule: null, name: '[::1]' } as Decision },
  { title: 'empty name', name: '', port: 443, want: { verdict: 'block', reason: 'bad-name', rule: null, name: '' } as Decision },
  { title: 'port 0', name: 'github.com', port: 0, want: blocked('no-rule', null, 'invalid destination port') },
  { title: 'port 65536', name: 'github.com', port: 65536, want: blocked('no-rule', null, 'invalid destination port') },
  { title: 'empty allowlist allows any name', name: 'anything.test', port: 25, rules: [], want: allow('no-allowlist', null, 'anything.test') },
  { title: 'empty allowlist still refuses a literal', name: '169.254.169.254', port: 80, rules: [], want: blocked('ip-literal-name', '169.254.169.254', 'rule:numeric-name') },
];

describe('EgressPolicy.decideName', () => {
  for (const r of rows) {
    it(r.title, () => {
      const got = policy(r.rules ?? RULES).decideName(r.proto ?? 'tcp', r.name, r.port, r.via);
      if (r.want.verdict === 'block' && !('detail' in r.want)) {
        // Rows without a detail compare everything but the (parser-worded) detail.
        expect(got.verdict).toBe('block');
        expect({ ...got, detail: undefined }).toEqual({ ...r.want, detail: undefined });
      } else expect(got).toEqual(r.want);
    });
  }

  it('agrees with decide() after a peek of the same name (both walls read a name the same way)', () => {
    const p = policy(RULES);
    const names = fc.constantFrom('github.com', 'GITHUB.com.', 'x.example.org', 'example.org', 'api.example.net', 'git.example.com', 'evil.test');
    const ports = fc.constantFrom(22, 80, 443, 8443, 8080);
    fc.assert(
      fc.property(names, ports, (name, port) => {
        const byName = p.decideName('tcp', name, port, 'sni');
        const afterPeek = p.decide({ proto: 'tcp', dst: '140.82.112.3', port, peeked: { via: 'sni', name } }, { namesFor: () => [] });
        // decide() may refuse before the peek when no rule covers the port at all ('no-rule'); by name that is 'name-not-allowed'.
        if (afterPeek.verdict === 'block' && afterPeek.reason === 'no-rule') return byName.verdict === 'block';
        return JSON.stringify(byName) === JSON.stringify(afterPeek);
      }),
    );
  });

  it('never throws and never allows without a rule, for arbitrary strings', () => {
    const p = policy(['github.com']);
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), fc.integer({ min: -1, max: 70000 }), (name, port) => {
        const d = p.decideName('tcp', name, port);
        if (d.verdict === 'allow') return d.name === 'github.com' && (port === 80 || port === 443);
        return d.verdict === 'block';
      }),
    );
  });
});
