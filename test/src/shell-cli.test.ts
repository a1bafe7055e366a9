import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EXIT_OK, EXIT_RUNTIME_ERROR, EXIT_USAGE, runCli, type CliIo } from '../../src/cli.js';
import { mainHelp, SERVE_FLAGS, serveHelp } from '../../src/config.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mv6-cli-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function fakeIo(stop: Promise<string> = new Promise(() => {})): CliIo & { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => err.push(s) },
    config: { readFile: () => '{}', readResolvConf: () => 'nameserver 127.0.0.1\n' },
    stopSignal: () => stop,
  };
}

describe('help text', () => {
  it('moat --help and moat serve --help mention every flag, its default and the QEMU and shim examples', () => {
    for (const text of [mainHelp(), serveHelp()]) {
      for (const f of SERVE_FLAGS) {
        expect(text).toContain(`--${f.name}`);
        if (f.default !== undefined) expect(text).toContain(`Default: ${f.default}.`);
      }
      expect(text).toContain('-netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/moat.sock');
      expect(text).toContain('-device virtio-net-pci,netdev=n0');
      expect(text).toContain('moat-shim');
    }
  });

  it('prints help with exit 0, and usage with exit 2 when no command is given', async () => {
    const io = fakeIo();
    expect(await runCli(['--help'], io)).toBe(EXIT_OK);
    expect(io.out.join('')).toBe(mainHelp());
    const io2 = fakeIo();
    expect(await runCli(['serve', '--help'], io2)).toBe(EXIT_OK);
    expect(io2.out.join('')).toBe(serveHelp());
    const io3 = fakeIo();
    expect(await runCli(['help', 'serve'], io3)).toBe(EXIT_OK);
    expect(io3.out.join('')).toBe(serveHelp());
    expect(await runCli([], fakeIo())).toBe(EXIT_USAGE);
  });
});

describe('exit codes', () => {
  it('2 for an unknown command, an unknown flag or a bad value, with the message on stderr', async () => {
    const a = fakeIo();
    expect(await runCli(['launch'], a)).toBe(EXIT_USAGE);
    expect(a.err.join('')).toMatch(/unknown command "launch"/);
    const b = fakeIo();
    expect(await runCli(['serve', '--listen-qemu', 'unix:///tmp/x.sock', '--frobnicate'], b)).toBe(EXIT_USAGE);
    expect(b.err.join('')).toMatch(/unknown flag --frobnicate/);
    const c = fakeIo();
    expect(await runCli(['serve', '--listen-qemu', 'unix:///tmp/x.sock', '--mtu', '70000'], c)).toBe(EXIT_USAGE);
    expect(c.err.join('')).toBe('moat serve: --mtu: must be an integer 576..65520, got 70000\n');
  });

  it('1 when the service cannot start (the listen path is a regular file)', async () => {
    const file = join(dir, 'not-a-socket');
    writeFileSync(file, 'x');
    const io = fakeIo();
    expect(await runCli(['serve', '--listen-qemu', `unix://${file}`, '--log-format', 'json'], io)).toBe(EXIT_RUNTIME_ERROR);
    const lines = io.err.join('').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.at(-1)).toMatchObject({ level: 'error', msg: 'moat failed to start' });
    expect(JSON.stringify(lines.at(-1))).toMatch(/is not a socket/);
  });

  it('0 after a clean shutdown on a stop signal, with the real stack and NAT', async () => {
    let stop!: (s: string) => void;
    const io = fakeIo(new Promise((r) => (stop = r)));
    const sock = join(dir, 'q.sock');
    const done = runCli(['serve', '--listen-qemu', `unix://${sock}`, '--log-format', 'json'], io);
    const start = Date.now();
    while (!io.err.join('').includes('"moat ready"')) {
      if (Date.now() - start > 5000) throw new Error(`no ready line: ${io.err.join('')}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(existsSync(sock)).toBe(true);
    stop('SIGTERM');
    expect(await done).toBe(EXIT_OK);
    expect(existsSync(sock)).toBe(false);
    expect(io.err.join('')).toContain('"moat stopped"');
  });
});

describe('bin/moat.mjs (built dist/)', () => {
  const bin = join(process.cwd(), 'bin', 'moat.mjs');
  const built = existsSync(join(process.cwd(), 'dist', 'src', 'cli.js'));

  it('prints help naming every flag', (ctx) => {
    if (!built) {
      if (process.env.CI) throw new Error('dist/ must be built (npx tsc -p .) before the tests in CI');
      ctx.skip();
    }
    const out = execFileSync(process.execPath, [bin, 'serve', '--help'], { encoding: 'utf8' });
    for (const f of SERVE_FLAGS) expect(out).toContain(`--${f.name}`);
  });

  it('exits 2 on a bad flag and 0 after SIGTERM', async (ctx) => {
    if (!built) {
      if (process.env.CI) throw new Error('dist/ must be built (npx tsc -p .) before the tests in CI');
      ctx.skip();
    }
    const bad = spawn(process.execPath, [bin, 'serve', '--nope'], { stdio: 'ignore' });
    expect(await new Promise((r) => bad.once('exit', r))).toBe(2);

    const sock = join(dir, 'bin.sock');
    const child = spawn(process.execPath, [bin, 'serve', '--listen-qemu', `unix://${sock}`, '--dns-upstream', '127.0.0.1'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const start = Date.now();
    while (!err.includes('moat ready')) {
      if (Date.now() - start > 10_000) throw new Error(`no ready line: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill('SIGTERM');
    expect(await new Promise((r) => child.once('exit', r))).toBe(0);
    expect(existsSync(sock)).toBe(false);
  });

  it('--tap-fd refuses a descriptor that is not an attached TAP (a file, or none handed over), naming it', async (ctx) => {
    if (!built) {
      if (process.env.CI) throw new Error('dist/ must be built (npx tsc -p .) before the tests in CI');
      ctx.skip();
    }
    const run = async (fd3: 'ignore' | number, fdArg: string): Promise<{ code: number | null; err: string }> => {
      const child = spawn(process.execPath, [bin, 'serve', '--tap-fd', fdArg, '--dns-upstream', '127.0.0.1'], {
        stdio: ['ignore', 'ignore', 'pipe', fd3],
      });
      let err = '';
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      const code = await new Promise<number | null>((r) => child.once('exit', r));
      return { code, err };
    };
    const nullFd = openSync('/dev/null', 'r');
    try {
      // A character device, but not a TAP.
      const a = await run(nullFd, '3');
      expect(a.code).toBe(1);
      expect(a.err).toMatch(/--tap-fd 3: descriptor 3 is not an attached TUN\/TAP device; start Moat through moat-shim tap --exec/);
      expect(a.err).not.toContain('moat ready');
    } finally {
      closeSync(nullFd);
    }
    // Nothing handed over at 40: not open.
    const b = await run('ignore', '40');
    expect(b.code).toBe(1);
    expect(b.err).toMatch(/--tap-fd 40: descriptor 40 is not open \(EBADF\)/);
  });
});
