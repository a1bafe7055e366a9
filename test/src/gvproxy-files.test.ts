import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chmodSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openLogFile, writePidFile } from '../../src/gvproxy/files.js';
import { sshArgv, SshSocketForwarder } from '../../src/gvproxy/ssh-forward.js';
import { captureLogger } from './shell-fakes.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'moat-gvfiles-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('-pid-file', () => {
  it("holds the PID as gvproxy writes it (decimal, no newline) and is removed while it is still ours", () => {
    const path = join(dir, 'gvproxy.pid');
    const pid = writePidFile(path, 31337);
    expect(readFileSync(path, 'utf8')).toBe('31337');
    pid.remove();
    expect(existsSync(path)).toBe(false);
    // No temporary file is left behind.
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a symbolic link planted at the path is replaced, never followed (its target is untouched)', () => {
    const target = join(dir, 'precious');
    writeFileSync(target, 'keep me');
    const path = join(dir, 'gvproxy.pid');
    symlinkSync(target, path);
    writePidFile(path, 4242).remove();
    expect(readFileSync(target, 'utf8')).toBe('keep me');
    expect(existsSync(path)).toBe(false);
  });

  it('a pid file another process has since written is left alone', () => {
    const path = join(dir, 'gvproxy.pid');
    const pid = writePidFile(path, 1111);
    writeFileSync(path, '2222');
    pid.remove();
    expect(readFileSync(path, 'utf8')).toBe('2222');
  });

  it('an unwritable directory is an error naming the flag and the path', () => {
    expect(() => writePidFile(join(dir, 'no-such-dir', 'x.pid'), 1)).toThrow(/^-pid-file: cannot write ".*no-such-dir\/x\.pid"/);
  });
});

describe('-log-file', () => {
  it('truncates and takes the lines; a symbolic link is refused, its target untouched', () => {
    const path = join(dir, 'gvproxy.log');
    writeFileSync(path, 'old run\n');
    const f = openLogFile(path);
    f.stream.write('line 1\n');
    f.close();
    f.stream.write('after close: dropped\n');
    expect(readFileSync(path, 'utf8')).toBe('line 1\n');
    // A new log file is the owner's only (names and addresses are in it).
    const fresh = join(dir, 'fresh.log');
    openLogFile(fresh).close();
    expect((lstatSync(fresh).mode & 0o777).toString(8)).toBe('600');
    const target = join(dir, 'precious');
    writeFileSync(target, 'keep me');
    const link = join(dir, 'link.log');
    symlinkSync(target, link);
    expect(() => openLogFile(link)).toThrow(/^-log-file: cannot open ".*link\.log": it is a symbolic link \(not followed\)/);
    expect(readFileSync(target, 'utf8')).toBe('keep me');
  });
});

describe('-forward-sock through ssh', () => {
  const fwd = { socket: '/tmp/host.sock', dest: '/run/podman/podman.sock', user: 'core', identity: '/k/id' };

  it('runs ssh -N -L HOST_SOCK:GUEST_SOCK to the -ssh-port forward, with only the given key and no host-key prompt', () => {
    const argv = sshArgv(fwd, 41234);
    expect(argv.slice(-3)).toEqual(['-L', '/tmp/host.sock:/run/podman/podman.sock', '127.0.0.1']);
    expect(argv).toContain('-N');
    const pairs = (flag: string): string[] => argv.flatMap((a, i) => (a === flag ? [argv[i + 1]!] : []));
    expect(pairs('-p')).toEqual(['41234']);
    expect(pairs('-l')).toEqual(['core']);
    expect(pairs('-i')).toEqual(['/k/id']);
    expect(pairs('-F')).toEqual(['/dev/null']);
    expect(pairs('-o')).toEqual(expect.arrayContaining(['BatchMode=yes', 'IdentitiesOnly=yes', 'StrictHostKeyChecking=no', 'StreamLocalBindMask=0177']));
  });

  it('an ssh that exits is started again with a growing, bounded backoff; close() ends it and removes the socket', async () => {
    const script = join(dir, 'fake-ssh');
    const log = join(dir, 'argv.log');
    writeFileSync(script, `#!/bin/sh\necho "$@" >> ${log}\nexit 255\n`);
    chmodSync(script, 0o755);
    const socket = join(dir, 'host.sock');
    writeFileSync(socket, '');
    const f = new SshSocketForwarder({ ...fwd, socket }, 41234, captureLogger('debug').log, { command: script, minBackoffMs: 20, maxBackoffMs: 80 });
    f.start();
    const start = Date.now();
    while (f.starts < 4 && Date.now() - start < 5000) await new Promise((r) => setTimeout(r, 10));
    expect(f.starts).toBeGreaterThanOrEqual(4);
    await f.close();
    const runs = f.starts;
    await new Promise((r) => setTimeout(r, 200));
    expect(f.starts).toBe(runs);
    expect(existsSync(socket)).toBe(false);
    expect(readFileSync(log, 'utf8').split('\n')[0]).toContain(`-L ${socket}:/run/podman/podman.sock 127.0.0.1`);
  });

  it('close() ends a running ssh', async () => {
    const script = join(dir, 'sleepy-ssh');
    writeFileSync(script, '#!/bin/sh\nexec sleep 30\n');
    chmodSync(script, 0o755);
    const f = new SshSocketForwarder({ ...fwd, socket: join(dir, 's.sock') }, 41234, captureLogger('info').log, { command: script });
    f.start();
    await new Promise((r) => setTimeout(r, 100));
    await f.close();
    expect(f.starts).toBe(1);
  });
});
