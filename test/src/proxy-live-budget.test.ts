/**
 * `moat proxy`: every CONNECT to a new name below a wildcard spends from the
 * proxy's one live-lookup budget (issue 14, finding 1: the DNS tunnel works
 * through proxy targets too). Everything on 127.0.0.1: the test's DNS
 * server; nothing is dialed (the tunnels are refused or left peeking).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import { NULL_LOGGER } from '../../src/log.js';
import { startTestUpstream, type TestUpstream } from './allowlist-upstream.js';

let dns: TestUpstream;
let proxy: RunningProxy;

beforeAll(async () => {
  dns = await startTestUpstream({ 'a.w.test': { a: ['127.0.0.1'] }, 'b.w.test': { a: ['127.0.0.1'] }, 'c.w.test': { a: ['127.0.0.1'] } });
  const parsed = parseProxyArgs([
    '--listen', '127.0.0.1:0',
    '--allow', '*.w.test',
    '--resolver', `127.0.0.1:${dns.port}`,
    '--admit-resolved', '127.0.0.0/8',
    // One new name, and no more for the test's life.
    '--live-lookup-burst', '1',
    '--live-lookup-rate', '0',
  ]);
  if (parsed.kind !== 'config') throw new Error('expected a config');
  proxy = await startProxy(parsed.config, NULL_LOGGER);
});

afterAll(async () => {
  await proxy?.close();
  await dns?.close();
});

/** The status line and headers of the proxy's answer to CONNECT host:443. */
function connectHead(host: string): Promise<string> {
  const [h, p] = proxy.http.split(':');
  return new Promise((resolve, reject) => {
    const s = connect(Number(p), h!, () => s.write(`CONNECT ${host}:443 HTTP/1.1\r\nHost: ${host}:443\r\n\r\n`));
    let got = '';
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n')) {
        s.destroy();
        resolve(got);
      }
    });
    s.on('error', reject);
    setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer to CONNECT ${host}: ${got}`));
    }, 5_000);
  });
}

describe('moat proxy: the live-lookup budget', () => {
  it('a first new name is looked up; the next is refused 403 live-budget without a lookup; the first again is free', async () => {
    expect(await connectHead('a.w.test')).toMatch(/^HTTP\/1\.1 200/);
    const refused = await connectHead('b.w.test');
    expect(refused).toMatch(/^HTTP\/1\.1 403/);
    expect(refused.toLowerCase()).toContain('x-moat-reason: live-budget');
    expect(dns.count('b.w.test')).toBe(0);
    expect(await connectHead('a.w.test')).toMatch(/^HTTP\/1\.1 200/);
    expect(proxy.stats().liveBudget).toMatchObject({ enabled: true, spent: 1, overBudget: 1 });
  });
});
