/**
 * GET /metrics: the Prometheus text exposition format (0.0.4) from a real
 * serve() with the real stack, NAT and allowlist, checked by `promtool
 * check metrics` (Debian package prometheus; .ci/run installs it, so a
 * missing promtool fails here rather than skipping) and by reading values
 * back; plus the bounds on label values (no guest-controlled text, at most
 * MAX_LABEL_VALUES per family).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dnsPacket from 'dns-packet';
import { ipv4 } from '../../netstack/addr.js';
import { parseServeArgs } from '../../src/config.js';
import { serve } from '../../src/serve.js';
import { startHost } from '../../src/host.js';
import { boundedReasons, DecisionCounts, escapeLabelValue, MAX_LABEL_VALUES, networkMetrics, renderExposition } from '../../src/metrics.js';
import { GUEST, GW_IP, udpFrame } from '../support/frames.js';
import { captureLogger, frameStream, waitFor } from './shell-fakes.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'moat-metrics-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** `promtool check metrics` on the text: its exit status and what it said. */
function promtool(text: string): { status: number | null; output: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  if (r.error !== undefined) throw new Error(`promtool not runnable (apt-get install prometheus): ${r.error.message}`);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/** Sample lines as "name{labels}" -> value (labels as written). */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

function get(socketPath: string, path: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function dnsQuery(name: string): Uint8Array {
  return dnsPacket.encode({ type: 'query', id: 7, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
}

describe('GET /metrics on a running serve()', () => {
  it('passes promtool check metrics and counts frames, drops, decisions and DNS outcomes', async () => {
    const guestSock = join(dir, 'g.sock');
    const api = join(dir, 'api.sock');
    const r = parseServeArgs(['--listen-qemu', `unix://${guestSock}`, '--api', `unix://${api}`, '--allow', '10.0.0.0/8:443', '--resolver', '127.0.0.1:5399'], {
      readFile: () => '',
      readResolvConf: () => undefined,
    });
    if (r.kind !== 'config') throw new Error('config expected');
    const { log } = captureLogger('info');
    const running = await serve(r.config, log);
    try {
      const guest: Socket = await new Promise((resolve) => {
        const s = connect(guestSock, () => resolve(s));
      });
      guest.on('data', () => {});
      // A runt frame (dropped), a DNS query for a name outside the allowlist
      // (sinkholed, a blocked decision), and UDP to an address no rule covers
      // (a blocked decision).
      guest.write(
        frameStream([
          new Uint8Array(6),
          udpFrame(GUEST, 40000, GW_IP, 53, dnsQuery('blocked.example')),
          udpFrame(GUEST, 40001, ipv4(203, 0, 113, 9), 9, new Uint8Array(4)),
        ]),
      );
      await waitFor(() => (running.stats() as { frames: { in: number } }).frames.in >= 3);
      await waitFor(() => (running.decisions?.stats.blocked ?? 0) >= 2);

      const res = await get(api, '/metrics');
      expect(res.status).toBe(200);
      expect(res.type).toBe('text/plain; version=0.0.4; charset=utf-8');
      const check = promtool(res.body);
      expect(check.output).toBe('');
      expect(check.status).toBe(0);

      const m = samples(res.body);
      expect(m.get('moat_frames_total{direction="in"}')).toBe(3);
      expect(m.get('moat_guest_connected')).toBe(1);
      const dropped = [...m].filter(([k]) => k.startsWith('moat_drops_total{'));
      expect(dropped.reduce((a, [, v]) => a + v, 0)).toBeGreaterThanOrEqual(1);
      expect(m.get('moat_dns_queries_total')).toBe(1);
      expect(m.get('moat_dns_answers_total{outcome="sinkholed"}')).toBe(1);
      expect(m.get('moat_decisions_total{verdict="blocked",reason="dns-sinkhole"}')).toBe(1);
      const blockedFlows = [...m].filter(([k]) => k.startsWith('moat_decisions_total{verdict="blocked"') && !k.includes('dns-sinkhole'));
      expect(blockedFlows.reduce((a, [, v]) => a + v, 0)).toBe(1);
      expect(m.get('moat_limit_max{limit="tcp-flows"}')).toBe(16384);
      expect(m.get('moat_limit_current{limit="tcp-flows"}')).toBe(0);
      expect(m.get('moat_resident_memory_bytes')).toBeGreaterThan(1_000_000);
      // Nothing the guest chose (the queried name) is in the scrape.
      expect(res.body).not.toContain('blocked.example');
      guest.destroy();
    } finally {
      await running.close();
    }
  });

  it('a queried name with quotes and newlines never reaches the scrape; the text still parses', async () => {
    const guestSock = join(dir, 'g.sock');
    const api = join(dir, 'api.sock');
    const r = parseServeArgs(['--listen-qemu', `unix://${guestSock}`, '--api', `unix://${api}`, '--allow', '10.0.0.0/8:443', '--resolver', '127.0.0.1:5399'], {
      readFile: () => '',
      readResolvConf: () => undefined,
    });
    if (r.kind !== 'config') throw new Error('config expected');
    const running = await serve(r.config, captureLogger('info').log);
    try {
      const guest: Socket = await new Promise((resolve) => {
        const s = connect(guestSock, () => resolve(s));
      });
      guest.on('data', () => {});
      guest.write(frameStream([udpFrame(GUEST, 40000, GW_IP, 53, dnsQuery('evil"} moat_injected 1\n.example'))]));
      await waitFor(() => (running.stats() as { frames: { in: number } }).frames.in >= 1);
      const res = await get(api, '/metrics');
      expect(res.body).not.toContain('moat_injected');
      expect(res.body).not.toContain('evil');
      expect(promtool(res.body).status).toBe(0);
      guest.destroy();
    } finally {
      await running.close();
    }
  });
});

function post(socketPath: string, path: string, body: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'POST' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

describe('moat host: /networks/{name}/metrics per network, /metrics for the process', () => {
  for (const workers of [0, 1]) {
    it(`with ${workers} worker thread(s): each network's scrape and the host's pass promtool; the name is not a label`, async () => {
      const api = join(dir, 'api.sock');
      // Worker threads load the compiled worker: take the whole host from dist/ (npm test builds first).
      const start = workers === 0 ? startHost : ((await import('../../dist/src/host.js')) as { startHost: typeof startHost }).startHost;
      const host = await start({ apiSocket: api, maxNetworks: 2, workers, logLevel: 'info', logFormat: 'json' }, captureLogger('info').log, {
        configIo: { readFile: () => '', readResolvConf: () => undefined },
      });
      try {
        expect(await post(api, '/networks', { name: 'net-a', 'listen-qemu': `unix://${join(dir, 'a.sock')}`, 'dns-upstream': '127.0.0.1:9' })).toBe(201);
        const own = await get(api, '/networks/net-a/metrics');
        expect(own.status).toBe(200);
        expect(own.type).toBe('text/plain; version=0.0.4; charset=utf-8');
        expect(promtool(own.body).status).toBe(0);
        expect(samples(own.body).get('moat_frames_total{direction="in"}')).toBe(0);
        expect(own.body).not.toContain('net-a');
        const whole = await get(api, '/metrics');
        expect(promtool(whole.body).status).toBe(0);
        expect(samples(whole.body).get('moat_networks')).toBe(1);
      } finally {
        await host.close();
      }
    });
  }
});

describe('exposition text and label bounds', () => {
  it('escapes backslash, double quote and newline in label values (and promtool accepts the result)', () => {
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    const text = renderExposition([{ name: 'moat_x_total', help: 'x', type: 'counter', samples: [{ labels: { reason: 'a\\b"c\nd' }, value: 1 }] }]);
    expect(text).toContain('moat_x_total{reason="a\\\\b\\"c\\nd"} 1');
    expect(promtool(text).status).toBe(0);
  });

  it('promtool rejects what it must (the check can fail): a counter without _total', () => {
    const bad = renderExposition([{ name: 'moat_x', help: 'x', type: 'counter', samples: [{ value: 1 }] }]);
    expect(promtool(bad).output).toMatch(/_total/);
  });

  it('drop reasons: at most MAX_LABEL_VALUES values, the rest and anything odd counted under "other"', () => {
    // The odd ones first, so that the cap alone would not hide them.
    const many: [string, number][] = [['x"}\nmoat_injected 1', 5], ['UPPER:case', 2]];
    for (let i = 0; i < 200; i++) many.push([`l:r${i}`, 1]);
    const b = boundedReasons(many);
    expect(b.size).toBeLessThanOrEqual(MAX_LABEL_VALUES);
    expect([...b.values()].reduce((a, v) => a + v, 0)).toBe(207);
    expect([...b.keys()].every((k) => /^[a-z0-9][a-z0-9:._-]*$/.test(k))).toBe(true);
    const text = renderExposition(networkMetrics({ stats: { drops: Object.fromEntries(many) }, rss: 1 }));
    expect(text).not.toContain('moat_injected');
    expect(promtool(text).status).toBe(0);
  });

  it('decision counts are bounded too, and every decision still counts', () => {
    const d = new DecisionCounts();
    for (let i = 0; i < 1000; i++) d.record({ decision: i % 2 === 0 ? 'blocked' : 'allowed', reason: `reason-${i}` });
    d.record({ decision: 'blocked', reason: 'bad reason "with" quotes' });
    const s = d.samples();
    expect(s.length).toBeLessThanOrEqual(MAX_LABEL_VALUES * 3);
    expect(s.reduce((a, x) => a + x.value, 0)).toBe(1001);
    expect(s.some((x) => x.labels?.['reason'] === 'other' && x.labels['verdict'] === 'blocked')).toBe(true);
  });
});
