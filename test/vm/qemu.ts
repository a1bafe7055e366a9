/**
 * One QEMU guest for a VM test: started through the e2e harness (tracked by
 * PID, killed on every exit path), its serial console on stdout, read line
 * by line for the markers the guest's /init prints (guest-scripts.ts).
 *
 * QEMU runs under TCG (`-accel tcg`): /dev/kvm, where there is one, cannot
 * be relied on here. `-nodefaults` matters for safety as well as speed: it
 * keeps QEMU from adding its default NIC (user-mode networking, which would
 * give the guest a path to the real network that bypasses Moat).
 */
import { hasTool, killTracked, spawnTracked, withTimeout, type TrackedProcess } from '../e2e/harness.js';
import type { GuestKernel } from './guest-image.js';

export const QEMU = 'qemu-system-x86_64';

export interface VmOptions {
  kernel: GuestKernel;
  /** The initramfs (writeCaseInitramfs). */
  initrd: string;
  /** The -netdev value, e.g. "stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/x.sock" (id must be n0). */
  netdev: string;
  /** The NIC's MAC. */
  mac: string;
  /** Let a guest reboot reset the machine instead of ending QEMU (default false: -no-reboot). */
  allowReboot?: boolean;
  memoryMb?: number;
}

export interface Mark {
  /** Milliseconds since QEMU was spawned, on the host's clock, when the line arrived. */
  hostMs: number;
  /** The guest's uptime in seconds when it printed the line. */
  guestS: number;
}

export interface VmResult {
  /** "ok" or "fail <why>". */
  verdict: string;
  /** Milliseconds from spawn to the verdict line. */
  ms: number;
}

export interface RunningVm {
  readonly proc: TrackedProcess;
  /** The console so far (kernel messages and the guest's markers), \r removed. */
  console(): string;
  /** Every MARK line so far, in order (a rebooting guest prints the same name again). */
  marks(): Array<{ name: string } & Mark>;
  /** Wait for the `nth` (1-based) mark NAME; fails at once if QEMU exits or a verdict arrives first. */
  waitMark(name: string, timeoutMs: number, nth?: number): Promise<Mark>;
  /** Wait for the verdict line; kills QEMU (by PID) if it does not come in time, then throws. */
  result(timeoutMs: number): Promise<VmResult>;
  /** SIGKILL QEMU (idempotent) and wait for it to go. */
  kill(): Promise<void>;
}

export function qemuAvailable(): boolean {
  return hasTool(QEMU);
}

export function qemuArgs(o: VmOptions): string[] {
  return [
    '-nodefaults',
    '-no-user-config',
    '-machine', 'pc',
    '-accel', 'tcg',
    '-m', String(o.memoryMb ?? 256),
    '-smp', '1',
    '-display', 'none',
    '-serial', 'stdio',
    '-kernel', o.kernel.kernel,
    '-initrd', o.initrd,
    // panic=-1: a kernel panic resets at once (and with -no-reboot, ends QEMU).
    '-append', 'console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init',
    ...(o.allowReboot ? [] : ['-no-reboot']),
    '-netdev', o.netdev,
    // romfile= : no PXE option ROM (the kernel is loaded directly; saves boot time and the ipxe package).
    '-device', `virtio-net-pci,netdev=n0,mac=${o.mac},romfile=`,
  ];
}

const MARK_RE = /^MOAT-VM-MARK (\S+) ([\d.]+)$/;
const RESULT_RE = /^MOAT-VM-RESULT (.*)$/;

export function startVm(o: VmOptions): RunningVm {
  if (!o.netdev.includes('id=n0')) throw new Error(`netdev must have id=n0: ${o.netdev}`);
  const started = Date.now();
  const proc = spawnTracked(QEMU, qemuArgs(o));
  const marks: Array<{ name: string } & Mark> = [];
  let verdict: VmResult | undefined;
  let partial = '';
  let text = '';
  const LIMIT = 512 * 1024;
  proc.child.stdout?.on('data', (d: string | Buffer) => {
    const now = Date.now() - started;
    const chunk = String(d).replace(/\r/g, '');
    text = (text + chunk).slice(-LIMIT);
    partial += chunk;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    if (partial.length > 4096) partial = partial.slice(-4096);
    for (const line of lines) {
      const m = MARK_RE.exec(line.trim());
      if (m) marks.push({ name: m[1]!, hostMs: now, guestS: Number(m[2]) });
      const r = RESULT_RE.exec(line.trim());
      if (r && verdict === undefined) verdict = { verdict: r[1]!, ms: now };
    }
  });
  const gone = (): boolean => proc.child.exitCode !== null || proc.child.signalCode !== null;
  const tail = (): string => `\n--- console tail ---\n${text.slice(-3000)}\n--- qemu stderr ---\n${proc.stderr().slice(-1500)}`;

  const poll = async <T>(what: string, timeoutMs: number, probe: () => T | undefined): Promise<T> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = probe();
      if (v !== undefined) return v;
      if (gone()) {
        // Let the last bytes of stdout arrive before giving up.
        await new Promise((r) => setTimeout(r, 100));
        const again = probe();
        if (again !== undefined) return again;
        throw new Error(`QEMU exited (${proc.child.exitCode ?? proc.child.signalCode}) before ${what}${tail()}`);
      }
      if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${tail()}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };

  const kill = async (): Promise<void> => {
    await killTracked(proc, 'SIGKILL').catch(() => {});
  };

  return {
    proc,
    console: () => text,
    marks: () => [...marks],
    async waitMark(name, timeoutMs, nth = 1) {
      return poll(`guest mark "${name}" #${nth}`, timeoutMs, () => {
        const found = marks.filter((m) => m.name === name);
        if (found.length >= nth) return found[nth - 1];
        if (verdict !== undefined) throw new Error(`guest finished (${verdict.verdict}) without mark "${name}" #${nth}${tail()}`);
        return undefined;
      });
    },
    async result(timeoutMs) {
      try {
        const v = await poll('the guest verdict (MOAT-VM-RESULT)', timeoutMs, () => verdict);
        // poweroff -f ends QEMU by itself; give it a moment, then make sure.
        await withTimeout(proc.exited, 5_000, 'QEMU to exit after poweroff').catch(kill);
        return v;
      } catch (e) {
        await kill();
        throw e;
      }
    },
    kill,
  };
}
