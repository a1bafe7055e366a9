/**
 * What a refusal tells the client (issue 14, finding 9): the 403 names the
 * host, the reason and the decision id, never the rules, which would tell a
 * guest what else it may reach and which wildcards are resolved live (the
 * DNS channel of finding 1). --refusal-details adds them, for debugging.
 * The same body comes from `moat serve` (src/egress/held-connection.ts);
 * test/src/egress-nat.test.ts covers that side.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { forbiddenResponse } from '../../src/egress/refusals.js';
import { NULL_LOGGER } from '../../src/log.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import { startTestUpstream, type TestUpstream } from './allowlist-upstream.js';
import { rawExchange } from './proxy-raw-upstream.js';

let dns: TestUpstream;
const RULES = ['secure.test', '*.wild.test', '127.66.17.0/24:9999'];

async function start(extra: string[] = []): Promise<RunningProxy> {
  const parsed = parseProxyArgs([
    '--listen', '127.0.0.1:0',
    ...RULES.flatMap((r) => ['--allow', r]),
    '--resolver', `127.0.0.1:${dns.port}`,
    '--admit-resolved', '127.66.17.0/24',
    ...extra,
  ]);
  if (parsed.kind !== 'config') throw new Error('expected a config');
  return startProxy(parsed.config, NULL_LOGGER);
}

beforeAll(async () => {
  dns = await startTestUpstream({ 'secure.test': { a: ['127.66.17.10'] } });
});
afterAll(async () => {
  await dns?.close();
});

const body = (reply: string) => reply.slice(reply.indexOf('\r\n\r\n') + 4);

/** The three ways the proxy answers 403: an absolute-form request, a CONNECT, and a tunnel whose Host is not its CONNECT host. */
async function refusals(p: RunningProxy): Promise<string[]> {
  const get = await rawExchange(p.http, 'GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n');
  const refusedConnect = await rawExchange(p.http, 'CONNECT blocked.test:443 HTTP/1.1\r\n\r\n');
  const inner = await innerReply(p, 'CONNECT secure.test:80 HTTP/1.1\r\n\r\n', 'GET / HTTP/1.1\r\nHost: other.test\r\n\r\n');
  return [get, refusedConnect, inner];
}

/** Opens a tunnel, sends `inside`, and returns the first response that comes back through it. */
function innerReply(p: RunningProxy, connectLine: string, inside: string): Promise<string> {
  const colon = p.http.lastIndexOf(':');
  return new Promise((resolve) => {
    const s = connect(Number(p.http.slice(colon + 1)), p.http.slice(0, colon));
    let got = '';
    let opened = false;
    s.on('data', (c: Buffer) => {
      got += c.toString('latin1');
      if (!opened && got.includes('\r\n\r\n')) {
        opened = true;
        got = got.slice(got.indexOf('\r\n\r\n') + 4);
        s.write(inside);
      }
    });
    s.on('close', () => resolve(got));
    s.on('error', () => resolve(got));
    s.write(connectLine);
  });
}

describe('moat proxy refusals name the decision, not the rules', () => {
  it('by default: host, reason and decision id; no rule, no wildcard', async () => {
    const p = await start();
    try {
      for (const r of await refusals(p)) {
        expect(r).toMatch(/^HTTP\/1\.1 403 /);
        const id = /x-moat-decision: (\S+)/i.exec(r)?.[1];
        expect(id).toMatch(/\S/);
        expect(body(r)).toContain(`decision ${id}`);
        expect(body(r)).toMatch(/reason: (name-not-allowed|host-mismatch)/);
        for (const rule of [...RULES, 'wild.test', 'Allowed:']) expect(body(r)).not.toContain(rule);
      }
    } finally {
      await p.close();
    }
  });

  it('--refusal-details lists them, for debugging', async () => {
    const p = await start(['--refusal-details']);
    try {
      for (const r of await refusals(p)) {
        expect(r).toMatch(/^HTTP\/1\.1 403 /);
        expect(body(r)).toContain(`Allowed: ${RULES.join(', ')}`);
      }
    } finally {
      await p.close();
    }
  });
});

describe('forbiddenResponse', () => {
  const text = (rules: readonly string[] | null) => new TextDecoder().decode(forbiddenResponse({ host: 'x.test', reason: 'name-not-allowed', id: 'd-1', rules }));
  it('names host, reason and id; rules only when given; a long list is cut', () => {
    expect(text(null)).toMatch(/\r\n\r\nBlocked by Moat's egress allowlist: host x\.test is not allowed \(reason: name-not-allowed, decision d-1\)\.\n$/);
    expect(text(['a.test'])).toContain('\nAllowed: a.test\n');
    expect(text([])).toContain('\nAllowed: (nothing)\n');
    expect(text(Array.from({ length: 60 }, (_, i) => `r${i}.test`))).toContain('r49.test, and 10 more\n');
  });
});
