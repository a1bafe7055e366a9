/**
 * gvproxy's -forward-sock/-forward-dest/-forward-user/-forward-identity (what
 * podman machine forwards its API socket with) under `moat gvproxy`: a unix
 * socket on the host reaches a unix socket "inside the guest" through the
 * guest's own sshd, over the -ssh-port forward into the guest network.
 *
 *   host client -> HOST.sock (ssh -L, run by Moat) -> 127.0.0.1:SSH_PORT
 *     -> Moat's port forward -> guest 192.168.127.2:22 (sshd in the guest netns)
 *     -> direct-streamlocal -> GUEST.sock (a server in the guest netns)
 *
 * The sshd is OpenSSH's, started in the guest namespace with a host key, an
 * authorized key and a config of the test's own (nothing of the system's);
 * it listens only inside the guest namespace. No address outside the test's
 * namespaces and loopback is used.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, hostRun, waitFor } from './harness.js';
import { FIXTURE_TOOLS, startMoatFixture, type MoatFixture } from './moat-fixture.js';

const SSHD = '/usr/sbin/sshd';
const gate = e2eGate([...FIXTURE_TOOLS, 'ssh', 'ssh-keygen', SSHD]);

/** A unix-socket server: answers every connection with a greeting and what it was sent. */
const GUEST_SOCKET_SERVER_JS = `
const net = require('node:net');
const [path] = process.argv.slice(1);
const s = net.createServer((c) => { c.write('hello from the guest socket\\n'); c.on('data', (d) => c.write('echo ' + d)); });
s.listen(path, () => console.log('ready'));
`;

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe.skipIf(gate.skip)('moat gvproxy -forward-sock: a host unix socket reaches a guest unix socket over ssh', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mgs-'));
  const hostSock = join(dir, 'podman-api.sock');
  const guestSock = join(dir, 'guest-podman.sock');

  beforeAll(async () => {
    for (const [key, type] of [['machine', 'ed25519'], ['host_key', 'ed25519']] as const) {
      const r = hostRun('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', join(dir, key)]);
      if (r.status !== 0) throw new Error(`ssh-keygen: ${r.stderr}`);
    }
    writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'machine.pub')));
    writeFileSync(
      join(dir, 'sshd_config'),
      [
        'Port 22',
        'ListenAddress 0.0.0.0',
        `HostKey ${join(dir, 'host_key')}`,
        `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes no',
        'AllowStreamLocalForwarding yes',
        `PidFile ${join(dir, 'sshd.pid')}`,
        '',
      ].join('\n'),
    );
    // sshd's privilege-separation directory (the package's tmpfiles would create it at boot).
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
    const sshPort = await freePort();
    fx = await startMoatFixture({
      prefix: 'mgs-',
      moatCommand: ({ moatSocket, apiSocket, dnsServerAddr }) => [
        'gvproxy',
        '-listen', `unix://${apiSocket}`,
        '-mtu', '1500',
        '-ssh-port', String(sshPort),
        '-listen-qemu', `unix://${moatSocket}`,
        '-forward-sock', hostSock,
        '-forward-dest', guestSock,
        '-forward-user', 'root',
        '-forward-identity', join(dir, 'machine'),
        '-pid-file', join(dir, 'gvproxy.pid'),
        '--',
        '--dns-upstream', `${dnsServerAddr}:53`,
        '--log-format', 'json',
        '--log-level', 'debug',
      ],
    });
    await fx.startNodeServer(fx.guestNs, GUEST_SOCKET_SERVER_JS, [guestSock]);
    // sshd in the guest namespace only; -e: its log on stderr.
    fx.guestSpawn(SSHD, ['-D', '-e', '-f', join(dir, 'sshd_config')]);
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('once the guest sshd is up, the host socket answers with the guest socket\'s server', async () => {
    // Moat's ssh retries with a backoff until the guest's sshd answers, then binds the host socket.
    await waitFor('the forwarded host socket', () => existsSync(hostSock), { timeoutMs: 45_000, intervalMs: 100 });
    const reply = await new Promise<string>((resolve, reject) => {
      let got = '';
      const c = connect(hostSock);
      c.setEncoding('utf8');
      c.on('data', (d: string) => {
        got += d;
        if (got.includes('echo ping')) {
          c.end();
          resolve(got);
        }
      });
      c.on('connect', () => c.write('ping\n'));
      c.on('error', reject);
      setTimeout(() => reject(new Error(`no answer; got ${JSON.stringify(got)}`)), 10_000).unref();
    });
    expect(reply).toContain('hello from the guest socket');
    expect(reply).toContain('echo ping');
  }, 60_000);

  it('on SIGTERM the ssh forward ends and the host socket is removed (as gvproxy)', async () => {
    await fx.stop();
    expect((await fx.moat.exited).code).toBe(0);
    expect(existsSync(hostSock)).toBe(false);
    expect(existsSync(join(dir, 'gvproxy.pid'))).toBe(false);
  });
});
