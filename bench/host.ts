/**
 * `moat host` next to `moat serve`, started the same way on this machine:
 *
 *  - `moat serve` start to ready (spawn -> the "moat ready" line), the CPU
 *    it used by then, and its idle RSS (no guest attached), over --runs runs,
 *    interleaved with: the same CLI loaded from the unbundled modules
 *    (dist/src/cli.js, what bin/moat.mjs ran before the bundle), node alone
 *    printing the line (the floor), and passt if installed, start to its
 *    socket (gvproxy is not installed here);
 *  - `moat host` start to ready, its idle RSS with no network, then with
 *    --networks networks created over the API (no guests): RSS per added
 *    network, and each POST /networks round trip (create to ready: the answer
 *    comes once the network's socket listens).
 *
 * Everything listens on unix sockets in a temporary directory; no guest, no
 * traffic, no namespace. Run from dist/ (npm run build):
 *
 *   node dist/bench/host.js [--networks 100] [--runs 5] [--workers N] [--out FILE]
 *
 * The host places its networks as it does by default (a worker per core)
 * unless --workers N says otherwise (RSS includes the workers' isolates:
 * their memory is in the same process).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { defaultWorkers } from '../src/host-config.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const MOAT = join(ROOT, 'bin', 'moat.mjs');

const { values } = parseArgs({
  options: { networks: { type: 'string', default: '100' }, runs: { type: 'string', default: '5' }, workers: { type: 'string' }, out: { type: 'string' } },
});
const NETWORKS = Number(values.networks);
const RUNS = Number(values.runs);
const WORKERS = values.workers === undefined ? defaultWorkers() : Number(values.workers);

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function hasProgram(name: string): boolean {
  return (process.env['PATH'] ?? '').split(':').some((d) => d !== '' && existsSync(join(d, name)));
}

/** CPU time a process has used so far, every thread (schedstat: nanoseconds on a CPU). */
function cpuMsOf(pid: number): number {
  let ns = 0;
  for (const task of readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
  return ns / 1e6;
}

function serveArgs(sock: string): string[] {
  return ['--listen-qemu', `unix://${sock}`, '--dns-upstream', '127.0.0.1:9', '--log-format', 'json'];
}

/** Spawns `node args...` and resolves with the ms until its stderr has `line`, and the CPU it used by then. */
function startUntil(args: string[], line: string): Promise<{ child: ChildProcess; ms: number; cpuMs: number }> {
  const started = performance.now();
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  return new Promise((resolvePromise, reject) => {
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      if (err.includes(line)) resolvePromise({ child, ms: performance.now() - started, cpuMs: cpuMsOf(child.pid!) });
    });
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited ${code}: ${err}`)));
  });
}

/** passt in QEMU stream mode, as bench:compare starts it: start to its socket. */
async function startPasst(): Promise<{ child: ChildProcess; ms: number; cpuMs: number }> {
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
  child.once('exit', () => rmSync(pdir, { recursive: true, force: true }));
  while (!existsSync(sock)) {
    if (child.exitCode !== null) throw new Error(`passt exited ${child.exitCode}`);
    await sleep(2);
  }
  return { child, ms: performance.now() - started, cpuMs: cpuMsOf(child.pid!) };
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
  const result: Record<string, unknown> = { date: new Date().toISOString(), node: process.version, networks: NETWORKS, runs: RUNS, workers: WORKERS, loadBefore: loadavg().map((l) => +l.toFixed(2)) };
  try {
    // Start to ready, interleaved run by run so that the machine's load falls on every variant alike:
    // `moat serve` as installed (bin/moat.mjs: the bundle), the same CLI from the unbundled modules,
    // node itself (a script that prints the ready line: the floor), and passt (to its socket) if installed.
    // Wall time moves with the machine's load; the CPU time the process used until ready moves less.
    const launcher = join(dir, 'modules.mjs');
    writeFileSync(launcher, `import { main } from ${JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'src', 'cli.js')).href)};\nawait main();\n`);
    const floor = join(dir, 'floor.mjs');
    writeFileSync(floor, `process.stderr.write('"moat ready"\\n'); setInterval(() => {}, 1000);\n`);
    const variants: { label: string; start(sock: string): Promise<{ child: ChildProcess; ms: number; cpuMs: number }> }[] = [
      { label: 'serve', start: (sock) => startUntil([MOAT, 'serve', ...serveArgs(sock)], '"moat ready"') },
      { label: 'serveModules', start: (sock) => startUntil([launcher, 'serve', ...serveArgs(sock)], '"moat ready"') },
      { label: 'nodeFloor', start: () => startUntil([floor], '"moat ready"') },
    ];
    if (hasProgram('passt')) variants.push({ label: 'passt', start: startPasst });
    const startMs = new Map<string, number[]>(variants.map((v) => [v.label, []]));
    const cpuMs = new Map<string, number[]>(variants.map((v) => [v.label, []]));
    const rss = new Map<string, number[]>(variants.map((v) => [v.label, []]));
    for (let i = 0; i < RUNS; i++) {
      for (const v of variants) {
        const { child, ms, cpuMs: cpu } = await v.start(join(dir, `${v.label}-${i}.sock`));
        startMs.get(v.label)!.push(ms);
        cpuMs.get(v.label)!.push(cpu);
        await sleep(1000);
        rss.get(v.label)!.push(rssKiB(child.pid!));
        await stop(child);
      }
    }
    for (const v of variants) {
      result[v.label] = {
        startToReadyMs: startMs.get(v.label)!.map(Math.round),
        medianMs: Math.round(median(startMs.get(v.label)!)),
        medianCpuMs: Math.round(median(cpuMs.get(v.label)!)),
        medianIdleRssMiB: +(median(rss.get(v.label)!) / 1024).toFixed(1),
      };
    }

    // moat host: start, RSS with no network, then with NETWORKS networks.
    const api = join(dir, 'host.sock');
    const { child, ms: hostMs } = await startUntil([MOAT, 'host', '--api', `unix://${api}`, '--workers', String(WORKERS), '--log-format', 'json', '--max-networks', String(Math.max(NETWORKS, 1))], '"moat host ready"');
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
  result['loadAfter'] = loadavg().map((l) => +l.toFixed(2));
  const text = JSON.stringify(result, null, 2);
  console.log(text);
  if (values.out !== undefined) writeFileSync(values.out, `${text}\n`);
}

await main();
