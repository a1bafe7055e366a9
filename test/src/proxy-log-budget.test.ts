/**
 * `moat proxy` has a main log and a decision log too: both get the budget
 * from the same flags, /stats.logs reports it, and the decision counters
 * still count every refusal. CONNECTs for unique blocked names on loopback.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../src/log.js';
import { mainLogBudget } from '../../src/log-flags.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';

let proxy: RunningProxy | undefined;
let dir: string | undefined;
afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** One CONNECT; resolves with the status line. */
function connectTo(proxyAddr: string, target: string): Promise<string> {
  const [host, port] = [proxyAddr.slice(0, proxyAddr.lastIndexOf(':')), Number(proxyAddr.slice(proxyAddr.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const s = connect({ host, port }, () => s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
    let text = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      text += d;
      if (text.includes('\r\n')) {
        s.destroy();
        resolve(text.split('\r\n')[0]!);
      }
    });
    s.on('error', reject);
    s.setTimeout(5_000, () => s.destroy(new Error('timeout')));
  });
}

describe('moat proxy: the log budget', () => {
  it('unique blocked names: lines beyond the budget are suppressed in both logs, every decision counted, summaries at close', async () => {
    dir = mkdtempSync(join(tmpdir(), 'moat-proxy-budget-'));
    const file = join(dir, 'decisions.jsonl');
    const parsed = parseProxyArgs([
      '--listen', '127.0.0.1:0',
      '--allow', '10.99.0.1/32',
      '--resolver', '127.0.0.1:9',
      '--decision-log', file,
      '--log-format', 'json',
      '--log-line-burst', '5',
      '--log-lines-per-sec', '1',
    ]);
    if (parsed.kind !== 'config') throw new Error('expected a config');
    const main: Record<string, unknown>[] = [];
    const log = createLogger({ level: 'info', format: 'json', stream: { write: (l: string) => main.push(JSON.parse(l) as Record<string, unknown>) }, budget: mainLogBudget(parsed.config) });
    proxy = await startProxy(parsed.config, log);
    const N = 40;
    for (let i = 0; i < N; i++) expect(await connectTo(proxy.http, `n${i}.blocked.test:443`)).toMatch(/^HTTP\/1\.1 403/);
    const s = proxy.stats();
    expect(s.decisions.blocked).toBe(N);
    const logs = s.logs as { main: { written: number; suppressed: number }; decisionLog: { written: number; suppressed: number } };
    // The start-up lines took the main log's burst already; a second may have refilled one line.
    expect(logs.main.written).toBeLessThanOrEqual(5 + 2);
    expect(logs.main.suppressed).toBeGreaterThan(N / 2);
    expect(logs.decisionLog.written).toBeLessThanOrEqual(5 + 2);
    expect(logs.decisionLog.written + logs.decisionLog.suppressed).toBe(N);
    await proxy.close();
    proxy = undefined;
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const summary = lines.filter((l) => l['msg'] === 'log lines suppressed');
    expect(summary).toHaveLength(1); // written at close
    expect(summary[0]).toMatchObject({ suppressed: logs.decisionLog.suppressed, byReason: { [String(lines[0]!['reason'])]: logs.decisionLog.suppressed } });
    expect(main.filter((l) => l['msg'] === 'log lines suppressed').length).toBeGreaterThanOrEqual(1);
  });
});
