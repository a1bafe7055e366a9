/**
 * gvproxy's -forward-sock/-forward-dest/-forward-user/-forward-identity: a
 * unix socket on the host whose connections reach a unix socket inside the
 * guest over SSH (gvproxy: pkg/sshclient, an SSH client in Go that dials the
 * guest's port 22 inside its virtual network and opens a
 * direct-streamlocal@openssh.com channel per connection; podman machine
 * forwards its API socket this way).
 *
 * Moat has no SSH client of its own: it runs OpenSSH's `ssh -N -L
 * HOST_SOCK:GUEST_SOCK` (the same channel type), reaching the guest's sshd
 * through the -ssh-port forward (127.0.0.1:PORT → guest:22). Like gvproxy,
 * the host key is not checked (the guest is the one this process serves)
 * and the key file is the only identity offered. While the guest's sshd is
 * not up, ssh fails and is started again with a bounded backoff (gvproxy
 * retries too, "Waiting for sshd"); close() ends it and removes the socket.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import type { Logger } from '../log.js';
import type { SshSocketForward } from './config.js';

export interface SshForwarderOptions {
  /** The ssh program (tests: a fake). */
  command: string;
  minBackoffMs: number;
  maxBackoffMs: number;
}

export const DEFAULT_SSH_FORWARDER_OPTIONS: SshForwarderOptions = { command: 'ssh', minBackoffMs: 500, maxBackoffMs: 30_000 };

/** The ssh command line for one forward (exported for the test that checks it). */
export function sshArgv(fwd: SshSocketForward, sshPort: number): string[] {
  return [
    '-F', '/dev/null', // no user or system config changes what runs
    '-N',
    '-o', 'BatchMode=yes',
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'IdentitiesOnly=yes',
    '-o', 'ExitOnForwardFailure=yes',
    '-o', 'StreamLocalBindUnlink=yes',
    '-o', 'StreamLocalBindMask=0177', // the socket is the owner's only, as gvproxy's umask 0177
    '-o', 'ServerAliveInterval=10',
    '-o', 'ServerAliveCountMax=3',
    '-o', 'ConnectTimeout=5',
    '-o', 'LogLevel=ERROR',
    '-i', fwd.identity,
    '-l', fwd.user,
    '-p', String(sshPort),
    '-L', `${fwd.socket}:${fwd.dest}`,
    '127.0.0.1',
  ];
}

export class SshSocketForwarder {
  private child: ChildProcess | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private backoff: number;
  private readonly options: SshForwarderOptions;
  /** ssh processes started so far (for /stats and tests). */
  starts = 0;

  constructor(
    readonly forward: SshSocketForward,
    private readonly sshPort: number,
    private readonly log: Logger,
    options: Partial<SshForwarderOptions> = {},
  ) {
    this.options = { ...DEFAULT_SSH_FORWARDER_OPTIONS, ...options };
    this.backoff = this.options.minBackoffMs;
  }

  start(): void {
    if (this.closed || this.child !== undefined) return;
    this.starts++;
    const startedAt = performance.now();
    let stderr = '';
    const child = spawn(this.options.command, sshArgv(this.forward, this.sshPort), { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      if (stderr.length < 2048) stderr += d; // bounded: only for the log line
    });
    const onEnd = (why: string): void => {
      if (this.child !== child) return;
      this.child = undefined;
      if (this.closed) return;
      // A run that lasted a while was a working forward: start again quickly.
      if (performance.now() - startedAt > this.options.maxBackoffMs) this.backoff = this.options.minBackoffMs;
      this.log.debug('ssh socket forward ended; starting it again', { socket: this.forward.socket, why, stderr: stderr.trim().slice(0, 500), inMs: this.backoff });
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.start();
      }, this.backoff);
      this.timer.unref();
      this.backoff = Math.min(this.backoff * 2, this.options.maxBackoffMs);
    };
    child.once('error', (e) => onEnd(`cannot run ${this.options.command}: ${e.message}`));
    child.once('exit', (code, signal) => onEnd(signal !== null ? `signal ${signal}` : `exit ${code}`));
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    const child = this.child;
    this.child = undefined;
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 2_000).unref())]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    // gvproxy removes the forwarded socket when it stops.
    rmSync(this.forward.socket, { force: true });
  }
}
