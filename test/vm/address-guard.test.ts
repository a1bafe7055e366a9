/**
 * The VM tests' guard on case scripts (vm-env.ts unguardedAddresses): every
 * address a guest script names must be Moat's own or checked to route via
 * loopback before the guest boots, IPv6 literals as well as IPv4 ones.
 */
import { describe, expect, it } from 'vitest';
import { ipv6Literals } from '../e2e/moat-fixture.js';
import { unguardedAddresses } from './vm-env.js';

describe('VM case-script address guard', () => {
  it('finds IPv6 literals in URLs, with zones, at a sentence end, IPv4-mapped; not times or shell expansions', () => {
    expect(
      ipv6Literals([
        'wget http://[fd6d:6f61:7400::fe]:8080/x',
        'ping6 fe80::1%eth0',
        "grep -o 'fd6d:6f61:7400:[0-9a-f:]*/64'",
        '${x:-y} 10:20:30 ::1 2001:db8::1.',
        'nc ::ffff:1.2.3.4 80',
      ]),
    ).toEqual(['fd6d:6f61:7400::fe', 'fe80::1', '::1', '2001:db8::1', '::ffff:1.2.3.4']);
  });

  it("lets Moat's /64 and link-local through; refuses any other IPv6 address (and IPv4 one) unless allowed", () => {
    const script = 'ping6 fd6d:6f61:7400::1; wget http://[fd6d:6f61:7400::fe]:1/; ping6 fe80::1%eth0; wget http://[2001:db8::5]/; nc ::1 80; nc ::ffff:10.0.0.1 80; nc 10.0.0.2 80';
    expect(unguardedAddresses(script, new Set())).toEqual(['10.0.0.1', '10.0.0.2', '2001:db8::5', '::1', '::ffff:10.0.0.1']);
    expect(unguardedAddresses(script, new Set(['10.0.0.1', '10.0.0.2', '2001:db8::5', '::1', '::ffff:10.0.0.1']))).toEqual([]);
  });
});
