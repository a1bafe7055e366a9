/**
 * The allowlist runtime for a guest network with IPv6 (issue 19), end to end
 * through AllowlistRuntime (rules → pre-resolution → zone table + pins +
 * policy): AAAA answers from pre-resolution and live lookups, the sinkhole's
 * `::`, IPv6 pins admitting connections as IPv4 pins do, dial-by-name in
 * whichever family the name resolved to, and without the option today's
 * IPv4-only behaviour.
 */
import { afterEach, describe, expect, it } from 'vitest';
import dnsPacket from 'dns-packet';
import { parseRules } from '../../dns/rules.js';
import type { ResolvedAddresses, Resolver } from '../../dns/preresolve.js';
import { AllowlistRuntime, type AllowlistIpv6Options } from '../../src/egress/allowlist-runtime.js';
import { dialOrder, familyOf } from '../../src/egress/dial-targets.js';
import { DEFAULT_EGRESS_OPTIONS } from '../../src/egress/egress.js';
import { createLogger } from '../../src/log.js';

/** name -> [A, AAAA]; anything else NXDOMAIN. Counts questions. */
class DualResolver implements Resolver {
  readonly asked: string[] = [];
  constructor(private readonly zone: Record<string, [string[], string[]]>) {}
  private answer(name: string, i: 0 | 1): ResolvedAddresses {
    this.asked.push(`${name} ${i === 0 ? 'A' : 'AAAA'}`);
    const z = this.zone[name];
    if (z === undefined) throw Object.assign(new Error(`${name}: not found`), { code: 'ENOTFOUND' });
    return { addresses: z[i], ttl: 60 };
  }
  async resolve4(name: string): Promise<ResolvedAddresses> {
    return this.answer(name, 0);
  }
  async resolve6(name: string): Promise<ResolvedAddresses> {
    return this.answer(name, 1);
  }
}

const ZONE: Record<string, [string[], string[]]> = {
  'dual.test': [['203.0.113.10'], ['2606:4700:0:0:0:0:0:10']],
  'git.test': [['203.0.113.22'], ['2606:4700::22']],
  'v6only.test': [[], ['2606:4700::66']],
  'v4only.wild.test': [['203.0.113.44'], []],
  'both.wild.test': [['203.0.113.45'], ['2606:4700::45']],
  'meta.wild.test': [[], ['fd00:ec2::254']],
};
const IPV6: AllowlistIpv6Options = { guestPrefix: { network: 'fd00:6d6f:6174::', prefix: 64 }, gatewayIpv6: 'fd00:6d6f:6174::1', hostAliasIpv6: 'fd00:6d6f:6174::fe' };
const RULES = ['dual.test', 'git.test:22', 'v6only.test', '*.wild.test', '*.wild.test:22', '[2a00:1450::/32]:443'];
const runtimes: AllowlistRuntime[] = [];
afterEach(async () => {
  for (const r of runtimes.splice(0)) await r.close();
});

async function start(rules: string[], ipv6: AllowlistIpv6Options | null, resolver = new DualResolver(ZONE)): Promise<AllowlistRuntime> {
  const runtime = await AllowlistRuntime.start(
    {
      rules: parseRules(rules),
      resolver,
      gatewayIpv4: '192.168.127.1',
      hostAliasIpv4: '192.168.127.254',
      sinkhole: 'zero',
      guestSubnet: { network: '192.168.127.0', prefix: 24 },
      admitResolved: [],
      hostAliasExempt: false,
      allowLinkLocal: false,
      egress: DEFAULT_EGRESS_OPTIONS,
      now: () => performance.now(),
      ipv6,
    },
    createLogger({ level: 'error', format: 'json', stream: { write: () => {} } }),
  );
  runtimes.push(runtime);
  return runtime;
}

async function ask(runtime: AllowlistRuntime, name: string, type: dnsPacket.RecordType): Promise<{ rcode: string; data: string[] }> {
  const q = dnsPacket.encode({ type: 'query', id: 7, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });
  const bytes = await runtime.dns.resolve(q, 'udp');
  const msg = dnsPacket.decode(Buffer.from(bytes!)) as dnsPacket.DecodedPacket & { rcode: string };
  return { rcode: msg.rcode, data: (msg.answers ?? []).map((a) => String((a as { data: unknown }).data)) };
}

describe('AllowlistRuntime with IPv6', () => {
  it('pre-resolves A and AAAA; answers AAAA for allowed and built-in names; the sinkhole answers AAAA with ::', async () => {
    const resolver = new DualResolver(ZONE);
    const rt = await start(RULES, IPV6, resolver);
    expect(resolver.asked.sort()).toEqual(['dual.test A', 'dual.test AAAA', 'git.test A', 'git.test AAAA', 'v6only.test A', 'v6only.test AAAA']);
    expect(await ask(rt, 'dual.test', 'AAAA')).toEqual({ rcode: 'NOERROR', data: ['2606:4700::10'] });
    expect(await ask(rt, 'dual.test', 'A')).toEqual({ rcode: 'NOERROR', data: ['203.0.113.10'] });
    expect(await ask(rt, 'v6only.test', 'AAAA')).toEqual({ rcode: 'NOERROR', data: ['2606:4700::66'] });
    expect(await ask(rt, 'v6only.test', 'A')).toEqual({ rcode: 'NOERROR', data: [] });
    expect(await ask(rt, 'gateway.containers.internal', 'AAAA')).toEqual({ rcode: 'NOERROR', data: ['fd00:6d6f:6174::1'] });
    expect(await ask(rt, 'host.containers.internal', 'AAAA')).toEqual({ rcode: 'NOERROR', data: ['fd00:6d6f:6174::fe'] });
    expect(await ask(rt, 'evil.test', 'AAAA')).toEqual({ rcode: 'NOERROR', data: ['::'] });
    expect(await ask(rt, 'evil.test', 'A')).toEqual({ rcode: 'NOERROR', data: ['0.0.0.0'] });
    expect(await ask(rt, 'evil.test', 'MX')).toEqual({ rcode: 'NOERROR', data: [] });
  });

  it('live lookups below a wildcard answer AAAA; the answer is pinned and a pinned IPv6 address is admitted on a non-web port', async () => {
    const rt = await start(RULES, IPV6);
    expect(await ask(rt, 'both.wild.test', 'AAAA')).toEqual({ rcode: 'NOERROR', data: ['2606:4700::45'] });
    expect(rt.egress.decide({ proto: 'tcp', dst: '2606:4700::45', port: 22 })).toMatchObject({ verdict: 'allow', reason: 'pinned', name: 'both.wild.test', dial: { kind: 'address', address: '2606:4700::45' } });
    // A pre-resolved IPv6 pin, in another spelling.
    expect(rt.egress.decide({ proto: 'tcp', dst: '2606:4700:0000::22', port: 22 })).toMatchObject({ verdict: 'allow', reason: 'pinned', name: 'git.test' });
    // Not pinned: held for a name, never let out by address.
    expect(rt.egress.decide({ proto: 'tcp', dst: '2606:4700::99', port: 22 })).toMatchObject({ verdict: 'peek' });
    // A name answering with the metadata address: pinned (it was answered) but refused as rebinding.
    expect(await ask(rt, 'meta.wild.test', 'AAAA')).toEqual({ rcode: 'NOERROR', data: ['fd00:ec2::254'] });
    expect(rt.egress.decide({ proto: 'tcp', dst: 'fd00:ec2::254', port: 22 })).toMatchObject({ verdict: 'block', reason: 'link-local' });
  });

  it('rules: an IPv6 CIDR rule allows by address; the IPv6 host alias needs an exact rule', async () => {
    const rt = await start(RULES, IPV6);
    expect(rt.egress.decide({ proto: 'tcp', dst: '2a00:1450:4001::1', port: 443 })).toMatchObject({ verdict: 'allow', reason: 'ip-rule', rule: '[2a00:1450::/32]:443' });
    expect(rt.egress.decide({ proto: 'tcp', dst: 'fd00:6d6f:6174::fe', port: 22 })).toMatchObject({ verdict: 'block', reason: 'host-alias' });
    expect(rt.egress.decide({ proto: 'tcp', dst: 'fd00:6d6f:6174::9', port: 443 })).toMatchObject({ verdict: 'peek' });
    expect(rt.egress.policy.admitResolved(['fd00:6d6f:6174::9'], 443).refused).toEqual([{ address: 'fd00:6d6f:6174::9', range: 'guest-subnet' }]);
  });

  it('dial by name: both families looked up; the guest flow\'s family first, the other when the name has only that', async () => {
    const rt = await start(RULES, IPV6);
    const both = await rt.egress.targets.addressesFor('both.wild.test');
    expect(both).toEqual(['203.0.113.45', '2606:4700::45']);
    expect(dialOrder(both, 6)).toEqual(['2606:4700::45', '203.0.113.45']);
    expect(dialOrder(both, 4)).toEqual(['203.0.113.45', '2606:4700::45']);
    // An IPv6 guest flow to an IPv4-only host, and an IPv4 flow to an IPv6-only one.
    expect(dialOrder(await rt.egress.targets.addressesFor('v4only.wild.test'), 6)).toEqual(['203.0.113.44']);
    expect(dialOrder(await rt.egress.targets.addressesFor('v6only.test'), 4)).toEqual(['2606:4700::66']);
    expect(familyOf('::ffff:1.2.3.4')).toBe(6);
    expect(familyOf('1.2.3.4')).toBe(4);
  });

  it('without the ipv6 option: A only, AAAA NODATA, no IPv6 pins, an IPv6-only host fails start-up naming why', async () => {
    const resolver = new DualResolver(ZONE);
    const rt = await start(['dual.test', '*.wild.test'], null, resolver);
    expect(resolver.asked).toEqual(['dual.test A']);
    expect(await ask(rt, 'dual.test', 'AAAA')).toEqual({ rcode: 'NOERROR', data: [] });
    expect(await ask(rt, 'evil.test', 'AAAA')).toEqual({ rcode: 'NOERROR', data: [] });
    expect(rt.egress.pins.addressesFor('dual.test')).toEqual(['203.0.113.10']);
    expect(await rt.egress.targets.addressesFor('both.wild.test')).toEqual(['203.0.113.45']);
    await expect(start(['v6only.test'], null)).rejects.toThrow(/v6only\.test \(only AAAA records, and the guest network is IPv4-only\)/);
  });
});

describe('dialOrder', () => {
  it('is a stable partition by family', () => {
    const mixed = ['1.1.1.1', '::1', '2.2.2.2', '2001:db8::2', '3.3.3.3'];
    expect(dialOrder(mixed, 6)).toEqual(['::1', '2001:db8::2', '1.1.1.1', '2.2.2.2', '3.3.3.3']);
    expect(dialOrder(mixed, 4)).toEqual(['1.1.1.1', '2.2.2.2', '3.3.3.3', '::1', '2001:db8::2']);
    expect(dialOrder([], 4)).toEqual([]);
  });
});
