/**
 * Shared set-up for the VM test files: the prerequisite gate (fail in CI,
 * skip loudly elsewhere, like the e2e gate), the guest image built once per
 * test file in a temporary directory, and the address guard for case scripts.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assertRoutesInto, checkPrerequisites, onCleanup } from '../e2e/harness.js';
import { ipv4Literals, ipv6Literals } from '../e2e/moat-fixture.js';
import { inPrefix6, parseIPv6, type IPv6 } from '../../netstack/addr.js';
import { DEFAULT_IPV6_PREFIX } from '../../src/config.js';
import { buildBaseImage, findGuestKernel, writeCaseInitramfs, type BaseImage, type GuestExtras, type GuestKernel } from './guest-image.js';
import { qemuAvailable } from './qemu.js';

export const GATEWAY_IP = '192.168.127.1';
export const GUEST_IP = '192.168.127.2';
export const HOST_IP = '192.168.127.254';
/** Moat's default IPv6 prefix (--ipv6-prefix): the guest's SLAAC /64, the gateway at ::1, the host alias at ::fe. */
export const PREFIX6 = DEFAULT_IPV6_PREFIX.replace(/::\/64$/, ':');
export const GATEWAY6 = `${PREFIX6}:1`;
export const HOST6 = `${PREFIX6}:fe`;
const PREFIX6_NET = parseIPv6(DEFAULT_IPV6_PREFIX.replace(/\/64$/, '')) as IPv6;
const LINK_LOCAL6 = parseIPv6('fe80::') as IPv6;

/**
 * Addresses a case script names that nothing checked: IPv4 ones not in
 * `allowed`, and IPv6 ones not in `allowed`, not in Moat's own /64 (they end
 * at Moat; its host alias ::fe at the host's ::1, loopback) and not
 * link-local (they never leave the guest's link, which is Moat).
 */
export function unguardedAddresses(caseScript: string, allowed: ReadonlySet<string>): string[] {
  const bad = ipv4Literals([caseScript]).filter((a) => !allowed.has(a));
  for (const a of ipv6Literals([caseScript])) {
    const ip = parseIPv6(a)!;
    if (!allowed.has(a) && !inPrefix6(ip, PREFIX6_NET, 64) && !inPrefix6(ip, LINK_LOCAL6, 10)) bad.push(a);
  }
  return bad;
}

/** What is missing for the VM tests (root and namespaces too when `needRoot`). */
export function vmProblems(needRoot: boolean): string[] {
  const problems: string[] = [];
  if (!qemuAvailable()) problems.push('missing qemu-system-x86_64 (Debian package qemu-system-x86)');
  if (!findGuestKernel()) problems.push('no /boot/vmlinuz-* with /lib/modules/<release>/modules.dep (Debian package linux-image-amd64)');
  if (!existsSync('/bin/busybox')) problems.push('missing /bin/busybox (Debian package busybox-static)');
  if (needRoot) problems.push(...checkPrerequisites(['ip', 'cc']).problems);
  else if (!existsSync(join(process.cwd(), 'node_modules'))) problems.push('node_modules missing (npm install)');
  return problems;
}

/** e2eGate for the VM tests: throws in CI (process.env.CI), else skip=true with a loud message. */
export function vmGate(needRoot: boolean): { skip: boolean; reason: string } {
  const problems = vmProblems(needRoot);
  if (problems.length === 0) return { skip: false, reason: '' };
  const reason = `VM test prerequisites missing: ${problems.join('; ')}`;
  if (process.env.CI) throw new Error(`${reason} (CI is set: VM tests must not be skipped)`);
  process.stderr.write(`\n*** SKIPPING VM tests: ${reason} ***\n\n`);
  return { skip: true, reason };
}

export interface VmEnv {
  readonly dir: string;
  readonly kernel: GuestKernel;
  readonly base: BaseImage;
  /** Write an initramfs for `caseScript` (after checking its addresses); returns its path. */
  initrd(name: string, caseScript: string): string;
  /** Allow case scripts to name these addresses (checked: they must route via loopback or `devices`). */
  allowAddresses(addresses: readonly string[], devices?: readonly string[]): void;
  /** Allow a case script to name an address it only compares (a DNS answer), never dials. */
  allowCompareOnly(address: string): void;
}

/** Build the guest image in a fresh temporary directory (removed by the harness's cleanup). */
export function createVmEnv(prefix: string, extra: GuestExtras = {}): VmEnv {
  const kernel = findGuestKernel();
  if (!kernel) throw new Error('no guest kernel (linux-image-amd64)');
  const dir = mkdtempSync(join(tmpdir(), prefix));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const t0 = Date.now();
  const base = buildBaseImage(kernel, '/bin/busybox', extra);
  console.log(
    `vm: initramfs built in ${Date.now() - t0} ms (${(base.gz.length / 1024).toFixed(0)} KiB gzip, kernel ${kernel.release}, modules ${base.modules.join(' ')})`,
  );
  // Moat's own addresses: they never leave Moat (the host alias goes to 127.0.0.1).
  const allowed = new Set<string>([GATEWAY_IP, GUEST_IP, HOST_IP, '192.168.127.255', '255.255.255.0']);
  return {
    dir,
    kernel,
    base,
    initrd(name, caseScript) {
      const bad = unguardedAddresses(caseScript, allowed);
      if (bad.length > 0) throw new Error(`case ${name}: refusing addresses not checked by allowAddresses(): ${bad.join(', ')}`);
      return writeCaseInitramfs(base, caseScript, join(dir, `${name}.initrd`));
    },
    allowAddresses(addresses, devices = []) {
      assertRoutesInto(addresses, devices);
      for (const a of addresses) allowed.add(a);
    },
    allowCompareOnly(address) {
      allowed.add(address);
    },
  };
}
