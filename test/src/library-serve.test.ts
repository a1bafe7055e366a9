/**
 * The embedding API (src/embed.ts, the package root's `serve`): the same
 * service as `moat serve`, from a flags object or an argv, with a handle for
 * stats, allowlist changes and decision events. Guest traffic is put straight
 * into the running stack as Ethernet frames; allowed names resolve through a
 * fake resolver (no network).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, flagsToArgs, serve, type DecisionRecord, type MoatServer } from '../../src/index.js';
import { parseServeArgs } from '../../src/config.js';
import type { Resolver } from '../../dns/preresolve.js';
import { ipv4 } from '../../netstack/addr.js';
import { GUEST, GW_IP, tcpFrame, udpFrame } from '../support/frames.js';
import { dnsQuery } from './allowlist-upstream.js';

const ADDRESSES: Record<string, string[]> = { 'api.example.test': ['192.0.2.10'], 'other.example.test': ['192.0.2.11'] };
const fakeResolver: Resolver = {
  resolve4: async (name) => {
    const a = ADDRESSES[name];
    if (a === undefined) throw Object.assign(new Error(`queryA ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
    return { addresses: a, ttl: 300 };
  },
  resolve6: async () => ({ addresses: [], ttl: 300 }),
};
const deps = { createDnsResolver: () => fakeResolver };

const open: MoatServer[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function start(...args: Parameters<typeof serve>): Promise<MoatServer> {
  const s = await serve(...args);
  open.push(s);
  return s;
}

async function waitFor(check: () => boolean, what: string, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const SYN = 0x02;

describe('serve() from the package root', () => {
  it('runs the allowlist service: decision events, the same records as --decision-log, stats, setAllowlist, close', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'moat-embed-'));
    dirs.push(dir);
    const logFile = join(dir, 'decisions.jsonl');
    const moat = await start(
      { listenQemu: 'tcp://127.0.0.1:0', allow: ['api.example.test', '203.0.113.0/24:9'], resolver: ['127.0.0.1'], 'decision-log': logFile },
      { deps },
    );
    expect(moat.listen).toHaveLength(1);
    expect(moat.listen[0]).toMatch(/^tcp:\/\/127\.0\.0\.1:[1-9][0-9]*$/);
    expect(moat.rules()).toEqual(['api.example.test', '203.0.113.0/24:9']);

    const seen: DecisionRecord[] = [];
    const unsubscribe = moat.onDecision((d) => seen.push(d));
    // A DNS question for a name outside the allowlist, then a SYN to an address no rule names.
    moat.stack.input([udpFrame(GUEST, 40000, GW_IP, 53, dnsQuery('tracker.example.net', 'A', 7))]);
    moat.stack.input([tcpFrame(GUEST, ipv4(198, 51, 100, 7), { srcPort: 40001, dstPort: 22, seq: 1000, ack: 0, flags: SYN, window: 65535 })]);
    await waitFor(() => seen.length >= 2, 'two decisions');
    // The DNS answer is asynchronous: its decision may come after the SYN's.
    const byProto = [...seen].sort((a, b) => a.proto.localeCompare(b.proto));
    expect(byProto.map((d) => ({ decision: d.decision, proto: d.proto, dst: d.dst, reason: d.reason }))).toEqual([
      { decision: 'blocked', proto: 'dns', dst: 'tracker.example.net', reason: 'dns-sinkhole' },
      { decision: 'blocked', proto: 'tcp', dst: '198.51.100.7:22', reason: 'no-rule' },
    ]);
    // The events are the records the decision log file gets, ids and all.
    await waitFor(() => readFileSync(logFile, 'utf8').split('\n').length > 2, 'two log lines');
    const fileIds = readFileSync(logFile, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as DecisionRecord).id);
    expect(fileIds).toEqual(seen.map((d) => d.id));

    unsubscribe();
    moat.stack.input([tcpFrame(GUEST, ipv4(198, 51, 100, 8), { srcPort: 40002, dstPort: 22, seq: 1000, ack: 0, flags: SYN, window: 65535 })]);
    await new Promise((r) => setTimeout(r, 50));
    expect(seen).toHaveLength(2);

    const stats = moat.stats() as { frames: { in: number } };
    expect(stats.frames).toBeDefined();
    expect(moat.stack.stats.framesIn).toBe(3);

    const update = await moat.setAllowlist(['api.example.test', 'other.example.test']);
    expect(update).toMatchObject({ rules: ['api.example.test', 'other.example.test'], dropped: 0 });
    expect(moat.rules()).toEqual(['api.example.test', 'other.example.test']);
    // A name that does not resolve: rejected, and nothing changes.
    await expect(moat.setAllowlist(['missing.example.test'])).rejects.toThrow(/missing\.example\.test/);
    await expect(moat.setAllowlist(['not a rule!'])).rejects.toThrow(/invalid allow rule/);
    expect(moat.rules()).toEqual(['api.example.test', 'other.example.test']);

    await moat.close();
    await moat.close();
  });

  it('without an allowlist: no decisions, and setAllowlist says why it cannot', async () => {
    const moat = await start(['--listen-qemu', 'tcp://127.0.0.1:0', '--dns-upstream', '127.0.0.1:9'], { deps });
    expect(moat.rules()).toBeUndefined();
    const seen: DecisionRecord[] = [];
    moat.onDecision((d) => seen.push(d));
    await expect(moat.setAllowlist(['github.com'])).rejects.toThrow(/no allowlist is running/);
    expect(seen).toEqual([]);
  });

  it('bad flags reject with the CLI parser\'s ConfigError, naming the flag, before anything opens', async () => {
    await expect(serve({ listenQemu: 'ftp://nope' })).rejects.toThrow(ConfigError);
    await expect(serve({ listenQemu: 'tcp://127.0.0.1:0', mtu: 20 })).rejects.toThrow(/--mtu/);
    await expect(serve({ listenQemu: 'tcp://127.0.0.1:0', notAFlag: 1 })).rejects.toThrow(/unknown flag --not-a-flag/);
    await expect(serve({ listenQemu: 'tcp://127.0.0.1:0', allow: ['missing.example.test'], resolver: '127.0.0.1' }, { deps })).rejects.toThrow(/missing\.example\.test/);
  });
});

describe('flags object → the CLI\'s arguments', () => {
  it('camelCase and kebab-case keys, lists, booleans and numbers', () => {
    expect(flagsToArgs({ listenQemu: 'unix:///tmp/m.sock', allow: ['a.test', '*.b.test'], 'allow-link-local': true, allowHostAlias: false, mtu: 9000, pcap: undefined })).toEqual([
      '--listen-qemu=unix:///tmp/m.sock',
      '--allow=a.test',
      '--allow=*.b.test',
      '--allow-link-local',
      '--mtu=9000',
    ]);
  });

  it('gives the same configuration as the command line', () => {
    const io = { readFile: () => '{}', readResolvConf: () => 'nameserver 127.0.0.1\n' };
    const argv = ['--listen-qemu', 'unix:///tmp/m.sock', '--allow', 'github.com', '--allow', '10.0.0.0/8:22', '--mtu', '9000', '--allow-host-alias', '--forward', '127.0.0.1:2222=192.168.127.2:22'];
    const fromFlags = parseServeArgs(
      flagsToArgs({ listenQemu: 'unix:///tmp/m.sock', allow: ['github.com', '10.0.0.0/8:22'], mtu: 9000, allowHostAlias: true, forward: ['127.0.0.1:2222=192.168.127.2:22'] }),
      io,
    );
    expect(fromFlags).toEqual(parseServeArgs(argv, io));
  });
});
