/**
 * `moat-shim vsock` end to end, inside a QEMU guest.
 *
 * Why in a VM: the shim's vsock mode needs an AF_VSOCK transport with a peer.
 * This machine's kernel (6.18 Firecracker guest) has vsock with only its
 * virtio transport (CID 3, towards the VM host, which is not ours to use):
 * CONFIG_VSOCKETS_LOOPBACK is not set, there are no modules to load
 * (`modprobe vsock_loopback`: not found), and CONFIG_VHOST_VSOCK is not
 * set (no /dev/vhost-vsock for QEMU's vhost-vsock-pci). The Debian kernel
 * the VM tests boot (linux-image-amd64) has vsock_loopback as a module, so
 * the guest loads it and gets the loopback transport (CID 1): the shim and
 * its vsock peer both run in the guest.
 *
 *   vsock-probe (guest, CID 1 → port 5000)  ⇄  moat-shim vsock --port 5000
 *     ⇄ tcp 10.0.2.100:4000 (QEMU user net, restrict=on, guestfwd only)
 *     ⇄ Moat's unix socket on the host (moat serve)
 *
 * The probe sends an ARP request for the gateway in QEMU stream framing and
 * must get Moat's ARP reply back; then a second peer connects after the
 * first left (the shim serves one connection at a time and waits for the
 * next). Moat's /stats must show the frames.
 *
 * Safety: QEMU's user network runs with restrict=on (the guest reaches
 * nothing but the guestfwd endpoint, which is Moat's unix socket); 10.0.2.x
 * exists only inside QEMU's slirp, never on the host. No root needed.
 *
 * It does not skip where the VM tests run (CI: the VM gate fails when QEMU
 * or the Debian kernel is missing); the static binaries need gcc and libc6-dev
 * (libc.a), which .ci/run installs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { cleanupAll, REPO_ROOT } from '../e2e/harness.js';
import { startVm } from './qemu.js';
import { createVmEnv, vmGate, type VmEnv } from './vm-env.js';
import { startMoat, type VmMoat } from './vm-moat.js';

const gate = vmGate(false);
const CASE_TIMEOUT_MS = 150_000;
const GATEWAY_MAC = '5a:94:ef:e4:0c:dd';
/** QEMU slirp's side: the forwarded endpoint and the guest's address (never on the host). */
const FWD_IP = '10.0.2.100';
const SLIRP_GUEST = '10.0.2.15';

/** Static builds (the initramfs has no libc): moat-shim from src/shim, the probe from test/vm. */
function staticBinary(dir: string, name: string, sources: string[]): Uint8Array {
  const out = join(dir, name);
  execFileSync('cc', ['-static', '-std=c11', '-O2', '-o', out, ...sources], { stdio: 'pipe', timeout: 120_000 });
  return readFileSync(out);
}

describe.skipIf(gate.skip)('moat-shim vsock in a QEMU guest (vsock_loopback, CID 1)', () => {
  let env: VmEnv;
  let moat: VmMoat;

  beforeAll(async () => {
    const shimDir = join(REPO_ROOT, 'src', 'shim');
    const buildDir = execFileSync('mktemp', ['-d', '/tmp/mvsock-build-XXXXXX'], { encoding: 'utf8' }).trim();
    try {
      const shim = staticBinary(buildDir, 'moat-shim', readdirSync(shimDir).filter((f) => f.endsWith('.c')).map((f) => join(shimDir, f)));
      const probe = staticBinary(buildDir, 'vsock-probe', [join(REPO_ROOT, 'test', 'vm', 'vsock-probe.c')]);
      env = createVmEnv('mvsock-', {
        modules: ['vsock_loopback'],
        files: [
          { path: 'bin/moat-shim', mode: 0o100755, data: shim },
          { path: 'bin/vsock-probe', mode: 0o100755, data: probe },
        ],
      });
    } finally {
      execFileSync('rm', ['-rf', buildDir]);
    }
    // Addresses of QEMU's slirp network: compared and dialed only inside QEMU (restrict=on).
    env.allowCompareOnly(FWD_IP);
    env.allowCompareOnly(SLIRP_GUEST);
    moat = await startMoat(env.dir, 'vsock', ['--dns-upstream', '127.0.0.1:9']);
  }, 180_000);

  afterAll(async () => {
    await moat?.stop();
    cleanupAll();
  }, 30_000);

  it('two vsock peers in turn get Moat\'s ARP reply through the shim', async () => {
    const script = `
grep -q vsock_loopback /proc/modules || fail "vsock_loopback not loaded"
ip addr add ${SLIRP_GUEST}/24 dev eth0
mark net
/bin/moat-shim vsock --port 5000 --connect tcp://${FWD_IP}:4000 >/tmp/shim.log 2>&1 &
n=0
while ! grep -q "ready: vsock" /tmp/shim.log; do
  n=$((n + 1)); [ $n -gt 200 ] && fail "shim not ready: $(tail -n 3 /tmp/shim.log | tr '\\n' ' ')"
  usleep 100000
done
mark shim
out=$(/bin/vsock-probe 1 5000 1) || fail "first peer: $out; shim: $(tail -n 3 /tmp/shim.log | tr '\\n' ' ')"
echo "$out"
out=$(/bin/vsock-probe 1 5000 2) || fail "second peer: $out; shim: $(tail -n 3 /tmp/shim.log | tr '\\n' ' ')"
echo "$out"
grep -q "vsock: guest disconnected; waiting for the next connection" /tmp/shim.log || fail "shim did not wait for the next peer"
cat /tmp/shim.log
`;
    const vm = startVm({
      kernel: env.kernel,
      initrd: env.initrd('vsock', script),
      netdev: `user,id=n0,restrict=on,ipv6=off,net=10.0.2.0/24,guestfwd=tcp:${FWD_IP}:4000-unix:${moat.socket}`,
      mac: '52:54:00:8a:00:31',
    });
    try {
      const r = await vm.result(CASE_TIMEOUT_MS);
      expect(r.verdict, `${vm.console().slice(-3000)}\nmoat:\n${moat.logTail()}`).toBe('ok');
      const replies = vm.console().match(/VSOCK-ARP-REPLY (\S+)/g) ?? [];
      expect(replies).toEqual([`VSOCK-ARP-REPLY ${GATEWAY_MAC}`, `VSOCK-ARP-REPLY ${GATEWAY_MAC}`]);
      const stats = (await moat.stats()) as unknown as { link: { framesIn: number; framesOut: number } };
      expect(stats.link.framesIn).toBeGreaterThanOrEqual(2);
      expect(stats.link.framesOut).toBeGreaterThanOrEqual(2);
      console.log(`vm vsock: verdict in ${r.ms} ms`);
    } finally {
      await vm.kill();
    }
  }, CASE_TIMEOUT_MS + 30_000);
});
