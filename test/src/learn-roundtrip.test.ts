/**
 * Issue 6's promise, end to end with real clients: run a job through
 * `moat proxy --mode audit`, feed its decision log to `moat learn`, and the
 * allowlist learnt lets the same job pass in enforce mode while anything
 * else is refused.
 *
 * The job: curl to an HTTPS host, a plain HTTP host and a name below a
 * second domain, none of which the audit run's rules (one unrelated host, echo.test)
 * allow. All servers live on 127.66.3.0/24 (proxy-support.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { proxy, type MoatProxy } from '../../src/embed.js';
import { learnAllowlist } from '../../src/learn/core.js';
import { readDecisionRecords } from '../../src/learn/read.js';
import { run, startProxyWorld, type ProxyWorld } from './proxy-support.js';

let world: ProxyWorld;
beforeAll(async () => {
  world = await startProxyWorld(3);
}, 30_000);
afterAll(async () => {
  await world?.close();
});

async function startProxy(extra: Record<string, string | string[] | boolean>): Promise<MoatProxy> {
  return proxy({
    listen: '127.0.0.1:0',
    resolver: `127.0.0.1:${world.dns.port}`,
    admitResolved: '127.66.0.0/16',
    ...extra,
  });
}

/** curl through the proxy; returns the body, or throws with curl's exit code. */
async function curl(p: MoatProxy, url: string): Promise<string> {
  const { stdout } = await run('curl', ['-sS', '--fail', '--max-time', '10', '--cacert', world.certFile, '-x', `http://${p.http}`, url]);
  return stdout;
}

const JOB = ['https://secure.test/a', 'http://plain.test/b', 'https://other.test/c'];

describe('audit, learn, enforce', () => {
  it('the learnt allowlist passes the job and refuses everything else', async () => {
    const log = join(world.dir, 'audit.jsonl');
    const audit = await startProxy({ allow: ['echo.test'], mode: 'audit', decisionLog: log });
    try {
      // In audit mode the job runs although no rule allows any of it.
      for (const url of JOB) expect(await curl(audit, url)).toContain('hello from');
    } finally {
      await audit.close();
    }
    const records = readDecisionRecords(readFileSync(log, 'utf8')).records;
    expect(records.some((r) => r.decision === 'would-block')).toBe(true);
    const learnt = learnAllowlist(records).rules;
    expect(learnt).toEqual(expect.arrayContaining(['secure.test', 'plain.test', 'other.test']));
    expect(learnt).not.toContain('blocked.test');

    const enforce = await startProxy({ allow: learnt });
    try {
      for (const url of JOB) expect(await curl(enforce, url)).toContain('hello from');
      const before = world.accepted.blocked;
      await expect(curl(enforce, 'https://blocked.test/')).rejects.toThrow();
      await expect(curl(enforce, 'http://blocked.test/')).rejects.toThrow(/403/);
      expect(world.accepted.blocked).toBe(before);
    } finally {
      await enforce.close();
    }
  }, 60_000);
});
