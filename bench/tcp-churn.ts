/**
 * Server-closed connection churn from a real Linux guest (issue 16's target:
 * 1,000 per second for 120 s, zero refused, memory bounded). The in-memory
 * simulation of the same load is bench/tcp-timewait.ts; this one runs the
 * kernel guest behind `moat serve` (test/e2e/churn-support.ts): a C client
 * in the guest namespace paced at RATE connections per second to a host
 * server on 127.0.0.1 (through Moat's host alias) that writes a byte and
 * closes first, so Moat holds every TIME-WAIT. Prints a sample every few
 * seconds (Moat's RSS, connections, TIME-WAIT, refusals) and the summary.
 *
 *   npm run bench:tcp-churn -- [--rate 1000] [--seconds 120] [--link exec|relay]
 *       [--sample-ms 5000] [--moat-bin OTHER/bin/moat.mjs] [--out FILE.json]
 *       [--profile-dir DIR] (Moat under node --cpu-prof; the .cpuprofile lands in DIR)
 *
 * Runs as root (namespaces, TAP). Every process is tracked by PID and every
 * namespace by name through test/e2e/harness.ts.
 */
import { writeFileSync } from 'node:fs';
import { cleanupAll, checkPrerequisites } from '../test/e2e/harness.js';
import { describeChurn, runChurn } from '../test/e2e/churn-support.js';

function parseArgs(argv: string[]): { rate: number; seconds: number; link: 'exec' | 'relay'; sampleMs: number; moatBin?: string; out?: string; profileDir?: string } {
  const value = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const rate = Number(value('--rate') ?? 1000);
  const seconds = Number(value('--seconds') ?? 120);
  const sampleMs = Number(value('--sample-ms') ?? 5000);
  const link = value('--link') ?? 'exec';
  if (!(rate > 0 && rate <= 20_000)) throw new Error(`--rate: want 1..20000 connections per second (got ${value('--rate')})`);
  if (!(seconds > 0 && seconds <= 3600)) throw new Error(`--seconds: want 1..3600 (got ${value('--seconds')})`);
  if (!(sampleMs >= 100)) throw new Error(`--sample-ms: want >= 100 (got ${value('--sample-ms')})`);
  if (link !== 'exec' && link !== 'relay') throw new Error(`--link: exec or relay (got ${link})`);
  return { rate, seconds, link, sampleMs, moatBin: value('--moat-bin'), out: value('--out'), profileDir: value('--profile-dir') };
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const pre = checkPrerequisites(['ip', 'busybox', 'cc']);
  if (!pre.ok) throw new Error(`bench:tcp-churn needs: ${pre.problems.join('; ')}`);
  const log = (m: string): void => void process.stderr.write(`[tcp-churn ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
  log(`${o.rate}/s for ${o.seconds} s, link ${o.link}${o.moatBin ? `, Moat ${o.moatBin}` : ''}`);
  const r = await runChurn({
    rate: o.rate,
    seconds: o.seconds,
    link: o.link,
    sampleMs: o.sampleMs,
    moatBin: o.moatBin,
    ...(o.profileDir !== undefined ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', o.profileDir] } : {}),
    onSample: (s) =>
      log(
        `t=${s.t.toFixed(0)} s ok ${s.ok} refused ${s.refused}; Moat RSS ${(s.rssBytes / 2 ** 20).toFixed(1)} MiB, ` +
          `connections ${s.tcpConnections}, TIME-WAIT ${s.tcpTimeWait} (recycled ${s.timeWaitRecycled}), flow-limit refusals ${s.tcpFlowsRefused}`,
      ),
  });
  console.log(describeChurn(r));
  if (o.out !== undefined) writeFileSync(o.out, JSON.stringify({ command: process.argv.slice(1).join(' '), ...r }, null, 2) + '\n');
}

main()
  .catch((e: unknown) => {
    process.stderr.write(`bench:tcp-churn failed: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanupAll());
