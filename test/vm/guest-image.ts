/**
 * The guest for the VM tests: the host's Debian kernel (linux-image-amd64)
 * and an initramfs built here, at test time, from busybox-static and the
 * kernel's own virtio modules. Nothing is downloaded and nothing is written
 * outside the temporary directory the caller gives.
 *
 * The initramfs is two concatenated gzip'd cpio "newc" archives (the kernel
 * unpacks each in turn, see Documentation/driver-api/early-userspace/
 * buffer-format.rst): a base one built once per test file (busybox, /init,
 * modules) and a tiny one per VM holding /case.sh, the script of that case.
 * So a case costs a few hundred bytes of gzip, not a rebuild.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { GUEST_INIT, UDHCPC_SCRIPT } from './guest-scripts.js';

export interface GuestKernel {
  /** Path of vmlinuz. */
  kernel: string;
  /** The release, e.g. "6.1.0-56-amd64". */
  release: string;
  /** /lib/modules/<release>. */
  modulesDir: string;
}

/** Modules the guest loads, by name; their dependencies come from modules.dep. */
export const GUEST_MODULES: readonly string[] = ['virtio_pci', 'virtio_net'];

/**
 * The newest /boot/vmlinuz-* whose /lib/modules/<release>/modules.dep exists,
 * or undefined. (The running host kernel is not what we want: the Debian
 * package installs its own, with modules to match.)
 */
export function findGuestKernel(): GuestKernel | undefined {
  if (!existsSync('/boot')) return undefined;
  const releases = readdirSync('/boot')
    .filter((f) => f.startsWith('vmlinuz-'))
    .map((f) => f.slice('vmlinuz-'.length))
    .filter((r) => existsSync(join('/lib/modules', r, 'modules.dep')))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const release = releases.at(-1);
  if (release === undefined) return undefined;
  return { kernel: join('/boot', `vmlinuz-${release}`), release, modulesDir: join('/lib/modules', release) };
}

/**
 * The module files (paths relative to modulesDir) to insmod, dependencies
 * first, each once. modules.dep lists a module's dependencies in an order
 * modprobe loads from the END (the last one first), so they are visited in
 * reverse.
 */
export function moduleLoadOrder(modulesDir: string, wanted: readonly string[]): string[] {
  const deps = new Map<string, string[]>();
  for (const line of readFileSync(join(modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    deps.set(line.slice(0, colon), line.slice(colon + 1).trim().split(/\s+/).filter((s) => s !== ''));
  }
  const byName = new Map<string, string>();
  for (const path of deps.keys()) {
    const base = path.slice(path.lastIndexOf('/') + 1).replace(/\.ko(\.xz|\.zst|\.gz)?$/, '');
    byName.set(base.replace(/-/g, '_'), path);
  }
  const order: string[] = [];
  const visit = (path: string, depth: number): void => {
    if (order.includes(path)) return;
    if (depth > 32) throw new Error(`modules.dep: dependency loop at ${path}`);
    for (const d of [...(deps.get(path) ?? [])].reverse()) visit(d, depth + 1);
    order.push(path);
  };
  for (const name of wanted) {
    const path = byName.get(name.replace(/-/g, '_'));
    // Built into the kernel (=y): nothing to load.
    if (path === undefined) continue;
    visit(path, 0);
  }
  return order;
}

/** The module's bytes, decompressed (insmod in busybox does not take .xz/.zst). */
function moduleBytes(file: string): Uint8Array {
  if (file.endsWith('.ko')) return readFileSync(file);
  const tool = file.endsWith('.xz') ? 'xz' : file.endsWith('.zst') ? 'zstd' : file.endsWith('.gz') ? 'gzip' : undefined;
  if (!tool) throw new Error(`unknown module compression: ${file}`);
  return execFileSync(tool, ['-dc', file], { maxBuffer: 64 * 1024 * 1024, timeout: 30_000 });
}

// ------------------------------------------------------------------ cpio newc

export interface CpioEntry {
  /** Path without a leading slash, e.g. "bin/busybox". */
  path: string;
  /** Full st_mode: file type bits and permissions (0o100755, 0o040755, 0o020600 ...). */
  mode: number;
  data?: Uint8Array;
  /** For device nodes. */
  rdevMajor?: number;
  rdevMinor?: number;
}

const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFCHR = 0o020000;

const hex8 = (n: number): string => n.toString(16).padStart(8, '0');

/** A cpio archive in the "newc" format (magic 070701) the kernel's initramfs unpacker reads. */
export function cpioNewc(entries: readonly CpioEntry[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let offset = 0;
  const push = (b: Uint8Array): void => {
    parts.push(b);
    offset += b.length;
  };
  const pad4 = (): void => {
    const rem = offset % 4;
    if (rem !== 0) push(new Uint8Array(4 - rem));
  };
  const all = [...entries, { path: 'TRAILER!!!', mode: 0 } as CpioEntry];
  all.forEach((e, i) => {
    const data = e.data ?? new Uint8Array(0);
    const name = Buffer.from(`${e.path}\0`, 'utf8');
    const header =
      '070701' +
      hex8(i + 1) + // ino
      hex8(e.mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8((e.mode & 0o170000) === S_IFDIR ? 2 : 1) + // nlink
      hex8(0) + // mtime
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(e.rdevMajor ?? 0) +
      hex8(e.rdevMinor ?? 0) +
      hex8(name.length) +
      hex8(0); // check
    push(Buffer.from(header, 'ascii'));
    push(name);
    pad4();
    if (data.length > 0) {
      push(data);
      pad4();
    }
  });
  return Buffer.concat(parts);
}

// ------------------------------------------------------------------ the images

export interface BaseImage {
  /** The gzip'd base archive (busybox, /init, modules). */
  gz: Uint8Array;
  /** Module files in load order, as the guest sees them under /lib/modules/. */
  modules: string[];
}

/** More for a test file's guest: modules to load at boot (with their dependencies), files to add. */
export interface GuestExtras {
  modules?: readonly string[];
  files?: readonly CpioEntry[];
}

/** Build the base initramfs archive (gzip'd cpio) from the host's busybox and kernel modules. */
export function buildBaseImage(kernel: GuestKernel, busyboxPath = '/bin/busybox', extra: GuestExtras = {}): BaseImage {
  const order = moduleLoadOrder(kernel.modulesDir, [...GUEST_MODULES, ...(extra.modules ?? [])]);
  const entries: CpioEntry[] = [];
  for (const d of ['bin', 'dev', 'etc', 'lib', 'lib/modules', 'proc', 'sys', 'tmp', 'www', 'root']) {
    entries.push({ path: d, mode: S_IFDIR | 0o755 });
  }
  // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
  entries.push({ path: 'dev/console', mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 });
  entries.push({ path: 'bin/busybox', mode: S_IFREG | 0o755, data: readFileSync(busyboxPath) });
  entries.push({ path: 'init', mode: S_IFREG | 0o755, data: Buffer.from(GUEST_INIT) });
  entries.push({ path: 'etc/udhcpc.sh', mode: S_IFREG | 0o755, data: Buffer.from(UDHCPC_SCRIPT) });
  const names: string[] = [];
  for (const rel of order) {
    const name = rel.slice(rel.lastIndexOf('/') + 1).replace(/\.(xz|zst|gz)$/, '');
    names.push(name);
    entries.push({ path: `lib/modules/${name}`, mode: S_IFREG | 0o644, data: moduleBytes(join(kernel.modulesDir, rel)) });
  }
  entries.push({ path: 'lib/modules/order', mode: S_IFREG | 0o644, data: Buffer.from(names.join('\n') + '\n') });
  entries.push(...(extra.files ?? []));
  return { gz: gzipSync(cpioNewc(entries), { level: 6 }), modules: names };
}

/** Write base + a second archive holding /case.sh to `path`; returns path. */
export function writeCaseInitramfs(base: BaseImage, caseScript: string, path: string): string {
  const extra = gzipSync(cpioNewc([{ path: 'case.sh', mode: S_IFREG | 0o644, data: Buffer.from(caseScript) }]));
  writeFileSync(path, Buffer.concat([base.gz, extra]));
  return path;
}
