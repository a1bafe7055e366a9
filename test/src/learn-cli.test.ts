/**
 * `moat learn` through runCli (fake files and stdin), and the log-line
 * reader: decision-log lines and main-log "egress decision" lines count,
 * anything else is skipped.
 */
import { describe, it, expect } from 'vitest';
import { EXIT_OK, EXIT_RUNTIME_ERROR, EXIT_USAGE, runCli, type CliIo } from '../../src/cli.js';
import { parseDecisionLine, readDecisionRecords } from '../../src/learn.js';
import { parseRules } from '../../dns/rules.js';

function fakeIo(files: Record<string, string>, stdin = ''): { io: CliIo; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  const io: CliIo = {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    config: {
      readFile: (path) => {
        const text = files[path];
        if (text === undefined) throw new Error(`ENOENT: no such file, open '${path}'`);
        return text;
      },
      readResolvConf: () => undefined,
    },
    stopSignal: () => new Promise(() => {}),
    readStdin: async () => stdin,
  };
  return { io, out: () => out, err: () => err };
}

// As src/egress/decision-log.ts writes them: the --decision-log file, and the main log (--log-format json).
const DECISION_LOG = [
  '{"time":"2025-01-01T00:00:00.000Z","id":"ab12-1","decision":"would-block","reason":"name-not-allowed","rule":null,"proto":"tcp","dst":"93.184.215.14:443","name":"www.example.com","via":"sni"}',
  '{"time":"2025-01-01T00:00:00.001Z","id":"ab12-2","decision":"allowed","reason":"name-sni","rule":"github.com","proto":"tcp","dst":"140.82.112.3:443","name":"github.com","via":"sni"}',
  '{"time":"2025-01-01T00:00:00.002Z","id":"ab12-3","decision":"would-block","reason":"udp-needs-ip-rule","rule":null,"proto":"udp","dst":"162.159.200.1:123","name":null,"via":null}',
  '{"time":"2025-01-01T00:00:00.003Z","id":"ab12-4","decision":"blocked","reason":"dns-sinkhole","rule":null,"proto":"dns","dst":"telemetry.example.net","name":"telemetry.example.net","via":"dns","detail":"A"}',
  '',
].join('\n');
const MAIN_LOG = [
  '{"time":"2025-01-01T00:00:00.000Z","level":"info","msg":"moat ready","listen":["unix:///tmp/m.sock"]}',
  '{"time":"2025-01-01T00:00:01.000Z","level":"info","msg":"egress decision","component":"egress","id":"cd34-9","decision":"would-block","reason":"no-rule","rule":null,"proto":"tcp","dst":"10.1.2.3:5432","name":null,"via":null}',
  '2025-01-01T00:00:02.000Z INFO  egress decision decision=blocked proto=tcp dst=1.2.3.4:443',
  '',
].join('\n');

describe('moat learn (CLI)', () => {
  it('prints one rule per line from several logs and stdin, and says what it left out', async () => {
    const { io, out, err } = fakeIo({ '/logs/decisions.jsonl': DECISION_LOG, '/logs/main.jsonl': MAIN_LOG }, MAIN_LOG);
    expect(await runCli(['learn', '/logs/decisions.jsonl', '/logs/main.jsonl', '-'], io)).toBe(EXIT_OK);
    expect(out()).toBe('www.example.com\ngithub.com\n10.1.2.3:5432\n162.159.200.1:123\n');
    expect(err()).toContain('telemetry.example.net');
    expect(err()).toMatch(/4 rule\(s\) from 6 decision\(s\); 4 line\(s\) that are not decisions skipped/);
  });

  it('--format flags and --format json print what moat serve takes', async () => {
    const logs = { '/d.jsonl': DECISION_LOG };
    const flags = fakeIo(logs);
    expect(await runCli(['learn', '--format', 'flags', '--include-dns', '/d.jsonl'], flags.io)).toBe(EXIT_OK);
    expect(flags.out()).toBe('--allow www.example.com --allow github.com --allow telemetry.example.net --allow 162.159.200.1:123\n');
    const json = fakeIo(logs);
    expect(await runCli(['learn', '--format', 'json', '/d.jsonl'], json.io)).toBe(EXIT_OK);
    const parsed = JSON.parse(json.out()) as { allow: string[] };
    expect(parsed).toEqual({ allow: ['www.example.com', 'github.com', '162.159.200.1:123'] });
    expect(parseRules(parsed.allow).map((r) => r.kind)).toEqual(['host', 'host', 'address']);
  });

  it('wildcards are shell-quoted in --format flags', async () => {
    const lines = ['a', 'b', 'c'].map((l, i) =>
      JSON.stringify({ decision: 'would-block', reason: 'name-not-allowed', rule: null, proto: 'tcp', dst: `1.2.3.${i}:443`, name: `${l}.cdn.example.org`, via: 'sni' }),
    );
    const { io, out } = fakeIo({ '/w': lines.join('\n') });
    expect(await runCli(['learn', '--format', 'flags', '/w'], io)).toBe(EXIT_OK);
    expect(out()).toBe("--allow '*.cdn.example.org'\n");
  });

  it('--refused-only leaves out what the rules already allowed', async () => {
    const { io, out } = fakeIo({ '/d': DECISION_LOG });
    expect(await runCli(['learn', '--refused-only', '/d'], io)).toBe(EXIT_OK);
    expect(out()).toBe('www.example.com\n162.159.200.1:123\n');
  });

  it('usage errors exit 2, unreadable or empty logs exit 1 and print no rules', async () => {
    for (const args of [['learn'], ['learn', '--format', 'yaml', '/d'], ['learn', '--wildcard-min', '1', '/d'], ['learn', '--bogus', '/d'], ['learn', '--host-ip', 'x', '/d']]) {
      const { io, out, err } = fakeIo({ '/d': DECISION_LOG });
      expect(await runCli(args, io), args.join(' ')).toBe(EXIT_USAGE);
      expect(out()).toBe('');
      expect(err()).toMatch(/^moat learn: /);
    }
    const missing = fakeIo({});
    expect(await runCli(['learn', '/nope'], missing.io)).toBe(EXIT_RUNTIME_ERROR);
    expect(missing.err()).toContain('cannot read "/nope"');
    const empty = fakeIo({ '/e': MAIN_LOG.split('\n')[0]! });
    expect(await runCli(['learn', '/e'], empty.io)).toBe(EXIT_RUNTIME_ERROR);
    expect(empty.out()).toBe('');
    expect(empty.err()).toContain('no flow to allow');
  });

  it('help: moat learn --help and moat help learn', async () => {
    const a = fakeIo({});
    expect(await runCli(['learn', '--help'], a.io)).toBe(EXIT_OK);
    expect(a.out()).toMatch(/^Usage: moat learn/);
    const b = fakeIo({});
    expect(await runCli(['help', 'learn'], b.io)).toBe(EXIT_OK);
    expect(b.out()).toBe(a.out());
    const c = fakeIo({});
    await runCli(['--help'], c.io);
    expect(c.out()).toMatch(/\n {2}learn {4}/);
  });
});

describe('decision log lines', () => {
  it('reads decision-log lines and main-log egress decisions; skips the rest', () => {
    const { records, skipped } = readDecisionRecords(DECISION_LOG + MAIN_LOG);
    expect(records.map((r) => r.dst)).toEqual(['93.184.215.14:443', '140.82.112.3:443', '162.159.200.1:123', 'telemetry.example.net', '10.1.2.3:5432']);
    expect(skipped).toBe(2);
  });

  it('refuses lines whose fields are not a decision record', () => {
    const ok = { decision: 'blocked', reason: 'no-rule', proto: 'tcp', dst: '1.2.3.4:80', name: null };
    expect(parseDecisionLine(JSON.stringify(ok))).toEqual(ok);
    for (const bad of [
      { ...ok, decision: 'maybe' },
      { ...ok, proto: 'icmp' },
      { ...ok, dst: 7 },
      { ...ok, name: 5 },
      { ...ok, msg: 'tcp flow failed' },
      [ok],
    ]) {
      expect(parseDecisionLine(JSON.stringify(bad)), JSON.stringify(bad)).toBeNull();
    }
    expect(parseDecisionLine('{"decision":')).toBeNull();
  });
});
