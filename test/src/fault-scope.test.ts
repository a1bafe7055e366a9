/**
 * The fault router of `moat host`, in a child process (an uncaught
 * exception must not reach the test runner's own handler): an exception in
 * a host socket callback created inside a network's scope closes that
 * network; one outside every scope still ends the process. Runs dist/ (npm
 * run build first), as library-exports.test.ts does.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const DIST = join(process.cwd(), 'dist/src/fault-scope.js');

function run(script: string): { status: number | null; stdout: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, stdout: r.stdout };
}

describe('fault router', () => {
  it('routes an exception from a host socket callback to the network whose input created the socket', () => {
    const r = run(`
      import net from 'node:net';
      import { networkScope, installFaultRouter } from '${DIST}';
      const log = { error: (m) => console.log('LOG', m), child: () => log };
      installFaultRouter(log, (code) => { console.log('EXIT', code); process.exit(code); });
      const server = net.createServer((c) => c.end('hello'));
      server.listen(0, '127.0.0.1', () => {
        // As the NAT does: a host socket dialed while a guest's input runs in its network's scope.
        networkScope.run((e) => console.log('FAULT A', e.message), () => {
          const c = net.connect(server.address().port, '127.0.0.1');
          c.on('data', () => { throw new Error('boom in A'); });
        });
        setTimeout(() => { console.log('ALIVE'); server.close(); }, 300);
      });`);
    expect(r.stdout).toContain('FAULT A boom in A');
    expect(r.stdout).toContain('ALIVE');
    expect(r.status).toBe(0);
  });

  it('an exception outside every network still ends the process, logged', () => {
    const r = run(`
      import { installFaultRouter } from '${DIST}';
      const log = { error: (m) => console.log('LOG', m), child: () => log };
      installFaultRouter(log, (code) => { console.log('EXIT', code); process.exit(code); });
      setTimeout(() => { throw new Error('not a network'); }, 10);
      setTimeout(() => console.log('ALIVE'), 300);`);
    expect(r.stdout).toContain('LOG uncaught exception outside any network');
    expect(r.stdout).not.toContain('ALIVE');
    expect(r.status).toBe(1);
  });
});
