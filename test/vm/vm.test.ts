/**
 * A real VM on Moat: QEMU (TCG) boots the Debian kernel with a busybox
 * initramfs (guest-image.ts) whose virtio-net card is wired to a `moat serve`
 * started by the test, either directly (-netdev stream on Moat's unix socket)
 * or through `moat-shim unixgram` (-netdev dgram). The guest runs a case
 * script and prints its verdict on the serial console (guest-scripts.ts).
 *
 * Safety: the guest can only reach what Moat NATs, and Moat runs in the root
 * namespace; every address a case script names is either Moat's own
 * (192.168.127.x) or checked by assertRoutesInto (loopback here), and QEMU
 * runs with -nodefaults (no user-mode NIC). Every process is started
 * through the e2e harness and killed by PID on every exit path.
 *
 * Each case is bounded (QEMU killed on timeout) and logs one line of timings.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { get } from 'node:http';
import { join } from 'node:path';
import { cleanupAll, killTracked, startShim, type TrackedProcess } from '../e2e/harness.js';
import { startVm, type RunningVm } from './qemu.js';
import { createVmEnv, vmGate, GATEWAY_IP, GATEWAY6, GUEST_IP, HOST_IP, HOST6, PREFIX6, type VmEnv } from './vm-env.js';
import { freeLoopbackPort, startDnsServer, startHostHttp, startMoat, type HostHttp, type VmMoat } from './vm-moat.js';

const gate = vmGate(false);

/** Boot + case budget under TCG on a busy 2-core machine. */
const CASE_TIMEOUT_MS = 150_000;
const MAC = '52:54:00:8a:00:02';
/** A name the loopback DNS server answers (the guest only compares the answer). */
const FORWARDED_NAME = 'www.mz8.test';
const FORWARDED_ADDR = '198.51.100.7';

function timing(name: string, vm: RunningVm, total: number, extra = ''): void {
  const dhcp = vm.marks().filter((m) => m.name === 'dhcp');
  const dhcpText = dhcp.map((m) => `${m.hostMs} ms (guest uptime ${m.guestS} s)`).join(', ');
  console.log(`vm ${name}: boot-to-DHCP ${dhcpText || 'n/a'}; case total ${total} ms${extra ? `; ${extra}` : ''}`);
}

/** Seconds between two marks on the host's clock (a TCG guest's clock is not a good stopwatch). */
function markGap(vm: RunningVm, from: string, to: string): number | undefined {
  const a = vm.marks().find((m) => m.name === from);
  const b = vm.marks().find((m) => m.name === to);
  return a && b ? (b.hostMs - a.hostMs) / 1000 : undefined;
}

/** The common checks of a fresh guest on Moat's defaults (MTU `mtu`). */
function basicCase(http: HostHttp, mtu: number): string {
  const url = `http://${HOST_IP}:${http.port}`;
  return `
dhcp
expect_eq "lease ip" "$ip" ${GUEST_IP}
expect_eq "lease mask" "$mask" 24
expect_eq "lease router" "$router" ${GATEWAY_IP}
expect_eq "lease dns" "$dns" ${GATEWAY_IP}
expect_eq "lease mtu" "$mtu" ${mtu}
expect_eq "eth0 mtu" "$(cat /sys/class/net/eth0/mtu)" ${mtu}
check "ping gateway" ping -c 2 -W 5 ${GATEWAY_IP}
expect_eq "nslookup ${FORWARDED_NAME} (forwarded)" "$(resolve ${FORWARDED_NAME} ${GATEWAY_IP})" ${FORWARDED_ADDR}
expect_eq "wget hello via host alias" "$(timeout 20 wget -q -O - ${url}/hello)" "moat-vm hello"
mark big-start
expect_eq "sha256 of ${http.bigSize} bytes" "$(timeout 60 wget -q -O - ${url}/big | sha256sum | cut -d' ' -f1)" ${http.bigSha256}
mark big-done
`;
}

/** GET a URL on the host (loopback only), bounded; resolves with status and body. */
function hostGet(url: string, timeoutMs = 10_000): Promise<{ status: number; body: string }> {
  if (!url.startsWith('http://127.0.0.1:')) throw new Error(`hostGet: loopback only, not ${url}`);
  return new Promise((resolve, reject) => {
    const req = get(url, { timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: timed out`)));
    req.on('error', reject);
  });
}

describe.skipIf(gate.skip)('a QEMU guest on Moat', () => {
  let env: VmEnv;
  let http: HostHttp;
  let dnsPort: number;
  let dns: TrackedProcess;
  const running: Array<{ stop(): Promise<void> }> = [];

  beforeAll(async () => {
    env = createVmEnv('mz8-vm-');
    env.allowAddresses(['127.0.0.1']);
    env.allowCompareOnly(FORWARDED_ADDR);
    http = await startHostHttp();
    dnsPort = await freeLoopbackPort();
    dns = await startDnsServer('127.0.0.1', dnsPort, { [FORWARDED_NAME]: [{ type: 'A', data: FORWARDED_ADDR }] });
  }, 60_000);

  afterEach(async () => {
    while (running.length > 0) await running.pop()!.stop().catch(() => {});
  });

  afterAll(async () => {
    await http?.close();
    if (dns) await killTracked(dns).catch(() => {});
    cleanupAll();
  }, 30_000);

  /** A fresh Moat for one case; DNS forwarded to the loopback test server only. */
  const moat = async (name: string, extra: string[] = []): Promise<VmMoat> => {
    const m = await startMoat(env.dir, name, ['--dns-upstream', `127.0.0.1:${dnsPort}`, ...extra]);
    running.push(m);
    return m;
  };
  const vmOn = (m: VmMoat, name: string, script: string, opts: { allowReboot?: boolean } = {}): RunningVm => {
    const vm = startVm({
      kernel: env.kernel,
      initrd: env.initrd(name, script),
      netdev: `stream,id=n0,server=off,addr.type=unix,addr.path=${m.socket}`,
      mac: MAC,
      allowReboot: opts.allowReboot,
    });
    running.push({ stop: vm.kill });
    return vm;
  };
  const expectOk = async (vm: RunningVm, m: VmMoat): Promise<number> => {
    const r = await vm.result(CASE_TIMEOUT_MS - 10_000);
    expect(r.verdict, `guest verdict\n--- console ---\n${vm.console().slice(-3000)}\n--- moat log ---\n${m.logTail()}`).toBe('ok');
    return r.ms;
  };

  it('stream: DHCP lease (address, router, DNS, MTU), ping, DNS, HTTP via the host alias, 8 MiB with its checksum', async () => {
    const m = await moat('stream-basic');
    const vm = vmOn(m, 'stream-basic', basicCase(http, 1500));
    const ms = await expectOk(vm, m);
    const secs = markGap(vm, 'big-start', 'big-done');
    timing('stream-basic', vm, ms, secs === undefined ? '' : `8 MiB download ${secs.toFixed(2)} s (host clock, ${((http.bigSize * 8) / secs / 1e6).toFixed(1)} Mbit/s)`);
    // Every byte of the download crossed Moat's link to the guest (the guest's ACKs are few: GRO).
    const stats = await m.stats();
    expect(stats.bytes.out).toBeGreaterThan(http.bigSize);
    expect(stats.frames.out).toBeGreaterThan(http.bigSize / 1514);
  }, CASE_TIMEOUT_MS);

  it('stream: IPv6 by SLAAC from Moat\'s RA (global /64 address, default route via the gateway\'s link-local), ping6 to the gateway, DNS over IPv6 to the gateway, HTTP and 8 MiB with its checksum from [::1] via the IPv6 host alias; then IPv4 too (dual stack)', async () => {
    // The host alias ::fe is dialled at the host's ::1: the server listens there only, so a fetch that worked went over IPv6 end to end.
    env.allowAddresses(['::1']);
    const http6 = await startHostHttp(undefined, '::1');
    running.push({ stop: http6.close });
    const m = await moat('stream-ipv6');
    const url6 = `http://[${HOST6}]:${http6.port}`;
    const vm = vmOn(
      m,
      'stream-ipv6',
      `
# No DHCP first: IPv6 alone must configure the guest (the kernel does SLAAC: accept_ra is on, forwarding off).
expect_eq "accept_ra" "$(cat /proc/sys/net/ipv6/conf/eth0/accept_ra)" 1
n=0
while :; do
  a6=$(ip -6 -o addr show dev eth0 scope global | grep -v tentative | grep -o '${PREFIX6}[0-9a-f:]*/64' | head -n 1)
  [ -n "$a6" ] && break
  n=$((n + 1)); [ $n -gt 300 ] && fail "no SLAAC address in ${PREFIX6}:/64: $(ip -6 addr show dev eth0 | tr '\n' ' ')"
  usleep 100000
done
mark slaac
echo "MOAT-VM-STEP SLAAC address $a6"
r6=$(ip -6 route show default)
case "$r6" in *"via fe80::"*"dev eth0"*) echo "MOAT-VM-STEP default route $r6" ;; *) fail "IPv6 default route: got '$r6'" ;; esac
check "ping6 gateway" ping6 -c 2 -W 5 ${GATEWAY6}
expect_eq "nslookup ${FORWARDED_NAME} over IPv6 (UDP to [${GATEWAY6}]:53)" "$(resolve ${FORWARDED_NAME} ${GATEWAY6})" ${FORWARDED_ADDR}
expect_eq "wget hello via [${HOST6}]" "$(timeout 20 wget -q -O - ${url6}/hello)" "moat-vm hello"
mark big6-start
expect_eq "sha256 of ${http6.bigSize} bytes over IPv6" "$(timeout 60 wget -q -O - ${url6}/big | sha256sum | cut -d' ' -f1)" ${http6.bigSha256}
mark big6-done
dhcp
expect_eq "wget hello via ${HOST_IP} (dual stack)" "$(timeout 20 wget -q -O - http://${HOST_IP}:${http.port}/hello)" "moat-vm hello"
`,
    );
    const ms = await expectOk(vm, m);
    expect(http6.requests).toEqual(['GET /hello', 'GET /big']);
    const slaac = vm.marks().find((x) => x.name === 'slaac');
    const secs = markGap(vm, 'big6-start', 'big6-done');
    timing(
      'stream-ipv6',
      vm,
      ms,
      `link-up-to-SLAAC ${markGap(vm, 'link', 'slaac')?.toFixed(2)} s (guest uptime ${slaac?.guestS} s)` +
        (secs === undefined ? '' : `; 8 MiB download over IPv6 ${secs.toFixed(2)} s (host clock, ${((http6.bigSize * 8) / secs / 1e6).toFixed(1)} Mbit/s)`),
    );
  }, CASE_TIMEOUT_MS);

  it('stream: host.containers.internal resolves to the host alias (forwarding mode, no --allow)', async () => {
    const m = await moat('stream-alias');
    const vm = vmOn(
      m,
      'stream-alias',
      `
dhcp
expect_eq "nslookup host.containers.internal" "$(resolve host.containers.internal ${GATEWAY_IP})" ${HOST_IP}
`,
    );
    const ms = await expectOk(vm, m);
    timing('stream-alias', vm, ms);
  }, CASE_TIMEOUT_MS);

  it('stream: the guest reboots (same QEMU, same socket), then a second QEMU takes the socket over; both get the lease back without restarting Moat', async () => {
    const m = await moat('stream-reboot');
    const url = `http://${HOST_IP}:${http.port}`;
    const script = (key: string, boots: number): string => `
dhcp
expect_eq "lease ip" "$ip" ${GUEST_IP}
n=$(timeout 20 wget -q -O - ${url}/boot/${key}) || fail "boot counter"
expect_eq "wget hello (boot $n)" "$(timeout 20 wget -q -O - ${url}/hello)" "moat-vm hello"
if [ "$n" -lt ${boots} ]; then mark rebooting; reboot -f; while :; do sleep 1; done; fi
expect_eq "boot number" "$n" ${boots}
`;
    const t0 = Date.now();
    // A guest reboot: the machine resets, QEMU keeps its connection to Moat.
    const vm1 = vmOn(m, 'stream-reboot-1', script('reset', 2), { allowReboot: true });
    const ms1 = await expectOk(vm1, m);
    expect(vm1.marks().filter((x) => x.name === 'dhcp')).toHaveLength(2);
    expect(vm1.marks().filter((x) => x.name === 'rebooting')).toHaveLength(1);
    timing('stream-reboot (reset in one QEMU)', vm1, ms1);

    // A new QEMU process: a new connection on Moat's socket, same MAC.
    const vm2 = vmOn(m, 'stream-reboot-2', script('second', 1));
    await vm2.waitMark('dhcp', CASE_TIMEOUT_MS - 30_000);
    const leases = await m.api('GET', '/services/dhcp/leases');
    expect(leases.status).toBe(200);
    expect(leases.body).toEqual({ [GUEST_IP]: MAC });
    const ms2 = await expectOk(vm2, m);
    timing('stream-reboot (second QEMU process)', vm2, ms2, `whole case ${Date.now() - t0} ms`);
    const connects = m.logEntries().filter((e) => e['msg'] === 'guest connected');
    expect(connects).toHaveLength(2);
  }, CASE_TIMEOUT_MS * 2);

  it('stream: an HTTP server in the guest is reached from the host through POST /services/forwarder/expose', async () => {
    const m = await moat('stream-forward');
    const token = `guest-httpd-${process.pid}`;
    const url = `http://${HOST_IP}:${http.port}`;
    const vm = vmOn(
      m,
      'stream-forward',
      `
dhcp
echo "${token}" > /www/index.html
httpd -p 8080 -h /www || fail "httpd did not start"
mark httpd
n=0
until [ "$(timeout 5 wget -q -O - ${url}/wait/forward 2>/dev/null)" = go ]; do
  n=$((n + 1)); [ $n -gt 240 ] && fail "the host never said go"
  usleep 250000
done
`,
    );
    await vm.waitMark('httpd', CASE_TIMEOUT_MS - 30_000);
    const t0 = Date.now();
    const port = await freeLoopbackPort();
    const local = `127.0.0.1:${port}`;
    const r = await m.api('POST', '/services/forwarder/expose', { local, remote: `${GUEST_IP}:8080`, protocol: 'tcp' });
    expect(r.status, r.text).toBeLessThan(300);
    const got = await hostGet(`http://${local}/`, 20_000);
    expect(got.status).toBe(200);
    expect(got.body).toBe(`${token}\n`);
    const fetchMs = Date.now() - t0;
    const all = await m.api('GET', '/services/forwarder/all');
    expect(JSON.stringify(all.body)).toContain(local);
    const un = await m.api('POST', '/services/forwarder/unexpose', { local, protocol: 'tcp' });
    expect(un.status, un.text).toBeLessThan(300);
    await expect(hostGet(`http://${local}/`, 5_000)).rejects.toThrow(/ECONNREFUSED/);
    http.release('forward');
    const ms = await expectOk(vm, m);
    timing('stream-forward', vm, ms, `expose + first GET through the forward ${fetchMs} ms`);
  }, CASE_TIMEOUT_MS);

  it('dgram: the basic case through moat-shim unixgram and QEMU -netdev dgram', async () => {
    const m = await moat('dgram');
    const shimSock = join(env.dir, 'dgram-shim.sock');
    const qemuSock = join(env.dir, 'dgram-qemu.sock');
    const shim = await startShim(['unixgram', '--listen', shimSock, '--connect', `unix://${m.socket}`], 10_000);
    running.push({ stop: () => killTracked(shim) });
    const vm = startVm({
      kernel: env.kernel,
      initrd: env.initrd('dgram', basicCase(http, 1500)),
      netdev: `dgram,id=n0,local.type=unix,local.path=${qemuSock},remote.type=unix,remote.path=${shimSock}`,
      mac: MAC,
    });
    running.push({ stop: vm.kill });
    const r = await vm.result(CASE_TIMEOUT_MS - 10_000);
    expect(r.verdict, `guest verdict\n--- console ---\n${vm.console().slice(-3000)}\n--- shim ---\n${shim.stderr()}\n--- moat log ---\n${m.logTail()}`).toBe('ok');
    const secs = markGap(vm, 'big-start', 'big-done');
    timing('dgram-basic', vm, r.ms, secs === undefined ? '' : `8 MiB download ${secs.toFixed(2)} s (host clock, ${((http.bigSize * 8) / secs / 1e6).toFixed(1)} Mbit/s)`);
    expect(shim.stderr()).toMatch(/peer is .*dgram-qemu\.sock/);
  }, CASE_TIMEOUT_MS);
});
