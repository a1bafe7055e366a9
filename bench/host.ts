/**
 * `moat host` next to `moat serve`, started the same way on this machine:
 *
 *  - `moat serve` start to ready (spawn -> the "moat ready" line), and its
 *    idle RSS (no guest attached), over --runs runs; passt (if installed)
 *    the same way, start to its socket (gvproxy is not installed here);
 *  - `moat host` start to ready, its idle RSS with no network, then with
 *    --networks networks created over the API (no guests): RSS per added
 *    network, and each POST /networks round trip (create to ready: the answer
 *    comes once the network's socket listens).
 *
 * Everything listens on unix sockets in a temporary directory; no guest, no
 * traffic, no namespace. Run from dist/ (npm run build):
 *
 *   node dist/bench/host.js [--networks 100] [--runs 5] [--workers 0] [--out FILE]
 *
 * With --workers N the host places its networks on N threads (RSS then
 * includes the workers' isolates; their memory is in the same process).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const ROOT = resolve(import.meta.dirname, '..', '..');
const MOAT = join(ROOT, 'bin', 'moat.mjs');

const { values } = parseArgs({
  options: { networks: { type: 'string', default: '100' }, runs: { type: 'string', default: '5' }, workers: { type: 'string', default: '0' }, out: { type: 'string' } },
});
const NETWORKS = Number(values.networks);
const RUNS = Number(values.runs);
const WORKERS = Number(values.workers);

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function hasProgram(name: string): boolean {
  return (process.env['PATH'] ?? '').split(':').some((d) => d !== '' && existsSync(join(d, name)));
}

/** Spawns `moat args...` and resolves with the ms until its stderr has `line`. */
function startUntil(args: string[], line: string): Promise<{ child: ChildProcess; ms: number }> {
  const started = performance.now();
  const child = spawn(process.execPath, [MOAT, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  return new Promise((resolvePromise, reject) => {
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      if (err.includes(line)) resolvePromise({ child, ms: performance.now() - started });
    });
    child.once('exit', (code) => reject(new Error(`moat ${args[0]} exited ${code}: ${err}`)));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  child.removeAllListeners('exit');
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await gone;
}

function post(socketPath: string, path: string, body: unknown): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const req = request({ socketPath, method: 'POST', path }, (res) => {
      res.resume();
      res.on('end', () => resolvePromise(res.statusCode!));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'moat-bench-host-'));
  const result: Record<string, unknown> = { date: new Date().toISOString(), node: process.version, networks: NETWORKS, runs: RUNS, workers: WORKERS };
  try {
    // moat serve: start to ready, idle RSS.
    const serveMs: number[] = [];
    const serveRss: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const sock = join(dir, `serve-${i}.sock`);
      const { child, ms } = await startUntil(['serve', '--listen-qemu', `unix://${sock}`, '--dns-upstream', '127.0.0.1:9', '--log-format', 'json'], '"moat ready"');
      serveMs.push(ms);
      await sleep(1000);
      serveRss.push(rssKiB(child.pid!));
      await stop(child);
    }
    result['serve'] = { startToReadyMs: serveMs.map(Math.round), medianMs: Math.round(median(serveMs)), idleRssKiB: serveRss, medianIdleRssMiB: +(median(serveRss) / 1024).toFixed(1) };

    // passt (QEMU stream mode, as bench:compare starts it), when installed: start to socket, idle RSS.
    if (hasProgram('passt')) {
      const passtMs: number[] = [];
      const passtRss: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        // Its own directory in /tmp: passt drops to "nobody" when started as root, who must reach it.
        const pdir = mkdtempSync(join(tmpdir(), 'moat-bench-passt-'));
        chmodSync(pdir, 0o777);
        const sock = join(pdir, 'passt.sock');
        const started = performance.now();
        // Pipes, not /dev/null: passt leaves at once when its stdin is /dev/null (seen here).
        const child = spawn('passt', ['-f', '-q', '-1', '-4', '-s', sock, '-a', '192.168.127.2', '-n', '24', '-g', '192.168.127.1', '--no-dhcp', '--no-ndp', '--no-dhcpv6', '--no-ra'], {
          stdio: 'pipe',
        });
        child.stdout!.resume();
        child.stderr!.resume();
        while (!existsSync(sock)) {
          if (child.exitCode !== null) throw new Error(`passt exited ${child.exitCode}`);
          await sleep(2);
        }
        passtMs.push(performance.now() - started);
        await sleep(1000);
        passtRss.push(rssKiB(child.pid!));
        await stop(child);
        rmSync(pdir, { recursive: true, force: true });
      }
      result['passt'] = { startToSocketMs: passtMs.map(Math.round), medianMs: Math.round(median(passtMs)), idleRssKiB: passtRss, medianIdleRssMiB: +(median(passtRss) / 1024).toFixed(1) };
    }

    // moat host: start, RSS with no network, then with NETWORKS networks.
    const api = join(dir, 'host.sock');
    const { child, ms: hostMs } = await startUntil(['host', '--api', `unix://${api}`, '--workers', String(WORKERS), '--log-format', 'json', '--max-networks', String(Math.max(NETWORKS, 1))], '"moat host ready"');
    await sleep(1000);
    const rss0 = rssKiB(child.pid!);
    const createMs: number[] = [];
    for (let i = 0; i < NETWORKS; i++) {
      const t = performance.now();
      const status = await post(api, '/networks', { name: `n${i}`, 'listen-qemu': `unix://${join(dir, `n${i}.sock`)}`, 'dns-upstream': '127.0.0.1:9' });
      createMs.push(performance.now() - t);
      if (status !== 201) throw new Error(`POST /networks n${i}: ${status}`);
    }
    await sleep(2000);
    const rssN = rssKiB(child.pid!);
    await stop(child);
    result['host'] = {
      startToReadyMs: Math.round(hostMs),
      idleRssNoNetworkMiB: +(rss0 / 1024).toFixed(1),
      idleRssWithNetworksMiB: +(rssN / 1024).toFixed(1),
      rssPerNetworkKiB: Math.round((rssN - rss0) / Math.max(NETWORKS, 1)),
      createToReadyMedianMs: +median(createMs).toFixed(2),
      createToReadyP90Ms: +quantile(createMs, 0.9).toFixed(2),
      createToReadyMaxMs: +Math.max(...createMs).toFixed(2),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const text = JSON.stringify(result, null, 2);
  console.log(text);
  if (values.out !== undefined) writeFileSync(values.out, `${text}\n`);
}

await main();
