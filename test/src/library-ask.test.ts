/**
 * Ask mode from the package root: serve({ ask }) and proxy({ ask }) turn it
 * on without --on-unlisted, the callback answers each pending decision, and
 * the decision records carry asked: true and answeredBy: 'callback'.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, proxy, serve, type DecisionRecord, type PendingView } from '../../src/index.js';
import type { Resolver } from '../../dns/preresolve.js';
import { GUEST, GW_IP, udpFrame } from '../support/frames.js';
import { dnsQuery } from './allowlist-upstream.js';
import { captureLogger } from './shell-fakes.js';

const ADDRESSES: Record<string, string[]> = { 'api.example.test': ['192.0.2.10'], 'new.example.test': ['192.0.2.11'] };
const fakeResolver: Resolver = {
  resolve4: async (name) => {
    const a = ADDRESSES[name];
    if (a === undefined) throw Object.assign(new Error(`queryA ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
    return { addresses: a, ttl: 300 };
  },
  resolve6: async () => ({ addresses: [], ttl: 300 }),
};

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

async function until(check: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 3000;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('ask mode from the library', () => {
  it('serve({ ask }): a guest DNS query for an unlisted name is answered by the callback (allow-name adds the rule)', async () => {
    const asked: PendingView[] = [];
    const moat = await serve({ listenQemu: 'tcp://127.0.0.1:0', allow: ['api.example.test'], resolver: ['127.0.0.1'] }, {
      deps: { createDnsResolver: () => fakeResolver },
      ask: async (p) => {
        asked.push(p);
        return 'allow-name';
      },
    });
    closers.push(() => moat.close());
    expect(moat.config.ask).toMatchObject({ timeoutMs: 30_000 });
    const records: DecisionRecord[] = [];
    moat.onDecision((r) => records.push(r));
    moat.stack.input([udpFrame(GUEST, 40000, GW_IP, 53, dnsQuery('new.example.test', 'A', 7))]);
    await until(() => records.some((r) => r.name === 'new.example.test'), 'the asked DNS decision');
    expect(asked.map((p) => [p.name, p.proto])).toEqual([['new.example.test', 'dns']]);
    expect(records.find((r) => r.name === 'new.example.test')).toMatchObject({ decision: 'allowed', proto: 'dns', asked: true, answeredBy: 'callback' });
    expect(moat.rules()).toEqual(['api.example.test', 'new.example.test']);
  });

  it('ask mode with nobody to answer (no --api, no callback) says so at start', async () => {
    const { log, lines } = captureLogger('info');
    const moat = await serve({ listenQemu: 'tcp://127.0.0.1:0', allow: ['api.example.test'], resolver: ['127.0.0.1'], 'on-unlisted': 'ask' }, { deps: { createDnsResolver: () => fakeResolver }, log });
    closers.push(() => moat.close());
    expect(lines.some((l) => l['level'] === 'warn' && String(l['msg']).startsWith('--on-unlisted ask without --api'))).toBe(true);
  });

  it('proxy({ ask }) turns ask mode on; ask without rules is a ConfigError', async () => {
    const p = await proxy({ listen: '127.0.0.1:0', allow: ['api.example.test'], resolver: ['127.0.0.1'] }, { ask: () => 'deny', deps: { createDnsResolver: () => fakeResolver } });
    closers.push(() => p.close());
    expect(p.config.ask).toMatchObject({ timeoutMs: 30_000 });
    await expect(serve({ listenQemu: 'tcp://127.0.0.1:0' }, { ask: () => 'deny' })).rejects.toBeInstanceOf(ConfigError);
  });
});
