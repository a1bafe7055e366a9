/**
 * A QEMU guest behind `moat serve --allow` (EGRESS-CLI.md): an allowed name
 * resolves and its HTTP server answers through Moat; a blocked name resolves
 * to 0.0.0.0; a connection to an address by IP fails (port 80: Moat reads
 * the Host, finds an IP literal and answers 403; another port: reset) and
 * never reaches the server.
 *
 * "The internet" is the e2e topology's remote namespace (198.18.x.x, a
 * private range, hence --admit-resolved for it); its DNS server is Moat's
 * --resolver and --dns-upstream. Every address the case script names is
 * checked by assertRoutesInto (via the topology's veth) before the guest
 * boots. Needs root (namespaces).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupAll, createTopology, killTracked, nsSpawn, waitForOutput, type Topology, type TrackedProcess } from '../e2e/harness.js';
import { startVm } from './qemu.js';
import { createVmEnv, vmGate, GATEWAY_IP, type VmEnv } from './vm-env.js';
import { startDnsServer, startMoat, type VmMoat } from './vm-moat.js';

const gate = vmGate(true);

const CASE_TIMEOUT_MS = 150_000;
const ALLOWED = 'www.mz8.test';
const BLOCKED = 'evil.mz8.test';

/** HTTP servers on ADDR:PORT...; log "conn PORT" per connection and "request PORT HOST URL" per request. */
const LOGGING_HTTP_JS = `
const http = require('node:http');
const [addr, name, ...ports] = process.argv.slice(1);
let up = 0;
for (const port of ports) {
  const s = http.createServer((req, res) => {
    console.log('request ' + port + ' ' + req.headers.host + ' ' + req.url);
    res.end(name + ' ' + req.url + '\\n');
  });
  s.on('connection', () => console.log('conn ' + port));
  s.listen(Number(port), addr, () => { if (++up === ports.length) console.log('ready'); });
}
`;

describe.skipIf(gate.skip)('a QEMU guest behind moat serve --allow', () => {
  let env: VmEnv;
  let topo: Topology;
  let moat: VmMoat | undefined;
  const procs: TrackedProcess[] = [];

  beforeAll(async () => {
    env = createVmEnv('mz8-vma-');
    topo = createTopology({ prefix: 'mz8-', internetAddresses: 2 });
    env.allowAddresses([topo.remoteAddr, ...topo.internetAddrs], [topo.hostVeth]);
    env.allowCompareOnly('0.0.0.0');
    procs.push(
      await startDnsServer(
        topo.remoteAddr,
        53,
        {
          [ALLOWED]: [{ type: 'A', data: topo.internetAddrs[0]! }],
          [BLOCKED]: [{ type: 'A', data: topo.internetAddrs[1]! }],
        },
        topo.remoteNs,
      ),
    );
    for (const [addr, name, ports] of [
      [topo.internetAddrs[0]!, 'allowed-site', ['80']],
      [topo.internetAddrs[1]!, 'direct-site', ['80', '8080']],
    ] as const) {
      const p = nsSpawn(topo.remoteNs, process.execPath, ['-e', LOGGING_HTTP_JS, addr, name, ...ports]);
      procs.push(p);
      await waitForOutput(p, /^ready/m, { stream: 'stdout', timeoutMs: 10_000 });
    }
    moat = await startMoat(env.dir, 'allow', [
      '--dns-upstream',
      `${topo.remoteAddr}:53`,
      '--resolver',
      `${topo.remoteAddr}:53`,
      '--allow',
      ALLOWED,
      '--admit-resolved',
      topo.internetSubnet,
    ]);
  }, 60_000);

  afterAll(async () => {
    await moat?.stop();
    for (const p of procs) await killTracked(p).catch(() => {});
    topo?.destroy();
    cleanupAll();
  }, 30_000);

  it('allowed name resolves and answers over HTTP; blocked name -> 0.0.0.0; direct-IP connections fail and reach nobody', async () => {
    const [allowedIp, directIp] = [topo.internetAddrs[0]!, topo.internetAddrs[1]!];
    const vm = startVm({
      kernel: env.kernel,
      mac: '52:54:00:8a:00:03',
      netdev: `stream,id=n0,server=off,addr.type=unix,addr.path=${moat!.socket}`,
      initrd: env.initrd(
        'allowlist',
        `
dhcp
expect_eq "nslookup ${ALLOWED}" "$(resolve ${ALLOWED} ${GATEWAY_IP})" ${allowedIp}
expect_eq "wget http://${ALLOWED}/" "$(timeout 20 wget -q -O - http://${ALLOWED}/hello)" "allowed-site /hello"
expect_eq "nslookup ${BLOCKED}" "$(resolve ${BLOCKED} ${GATEWAY_IP})" 0.0.0.0
if out=$(timeout 20 wget -q -O - http://${directIp}/ 2>&1); then fail "direct IP :80 answered: $out"; fi
case "$out" in *403*) echo "MOAT-VM-STEP direct IP :80 refused: $out" ;; *) fail "direct IP :80: want a 403 from Moat, got: $out" ;; esac
if out=$(echo hi | timeout 20 nc ${directIp} 8080 2>&1); then fail "direct IP :8080 connected: $out"; fi
echo "MOAT-VM-STEP direct IP :8080 refused: $out"
`,
      ),
    });
    const r = await vm.result(CASE_TIMEOUT_MS - 10_000);
    expect(r.verdict, `guest verdict\n--- console ---\n${vm.console().slice(-3000)}\n--- moat log ---\n${moat!.logTail()}`).toBe('ok');
    const [allowedSite, directSite] = [procs[1]!, procs[2]!];
    expect(allowedSite.stdout()).toContain(`request 80 ${ALLOWED} /hello`);
    // Nothing the guest sent by IP reached the server: not even a TCP connection.
    expect(directSite.stdout().replace(/^ready\n/m, '')).toBe('');
    const dhcp = vm.marks().find((m) => m.name === 'dhcp');
    console.log(`vm allowlist: boot-to-DHCP ${dhcp?.hostMs} ms (guest uptime ${dhcp?.guestS} s); case total ${r.ms} ms`);
  }, CASE_TIMEOUT_MS);
});
