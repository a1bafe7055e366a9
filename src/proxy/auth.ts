/**
 * Proxy authentication (--auth-file): who may use `moat proxy`'s allowlist
 * when its port is reachable by others.
 *
 *  - HTTP: `Proxy-Authorization: Basic base64(user:password)` (RFC 9110
 *    11.7.1, RFC 7617), on every request and CONNECT; 407 with
 *    `Proxy-Authenticate: Basic` otherwise.
 *  - SOCKS5: username/password (RFC 1929), method 0x02.
 *
 * The file holds `USER:PASSWORD` lines (blank lines and `#` comments
 * ignored), so secrets stay off the command line, where every local user
 * can read them in /proc. Only SHA-256 digests are kept: users are found by
 * the digest of the presented name (a map lookup whose time depends on that
 * digest, not on how much of a real name was right), and the password is
 * compared by crypto.timingSafeEqual over fixed-length digests, against a
 * dummy digest when the user is unknown, so both cases do the same work.
 * Failures are logged by AuthFailureLog, with the client's address and
 * never what it presented, at most one line per interval (a client guessing
 * passwords must not be able to fill the disk through the log).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { RefusalLog, REFUSAL_LOG_INTERVAL_MS, type RefusalLogLines } from '../limits.js';
import type { Logger } from '../log.js';

/** RFC 1929 carries each of user and password in 1..255 bytes; HTTP gets the same bound. */
export const MAX_CREDENTIAL_BYTES = 255;
/** Entries one file may hold. */
export const MAX_USERS = 10_000;
/** The file is read whole at start-up. */
export const MAX_AUTH_FILE_BYTES = 1 << 20;

/** The realm the 407 names; clients show it when they prompt. */
export const AUTH_REALM = 'moat proxy';
export const PROXY_AUTHENTICATE = `Basic realm="${AUTH_REALM}", charset="UTF-8"`;

export class ProxyCredentials {
  private constructor(
    /** hex SHA-256 of the user name -> SHA-256 of the password. */
    private readonly users: ReadonlyMap<string, Buffer>,
  ) {}

  get size(): number {
    return this.users.size;
  }

  /**
   * Parses the file's text. Throws an Error whose message names the line
   * and what is wrong with it, never the line itself (it holds a secret).
   */
  static parse(text: string, where: string): ProxyCredentials {
    if (Buffer.byteLength(text) > MAX_AUTH_FILE_BYTES) throw new Error(`${where} is larger than ${MAX_AUTH_FILE_BYTES} bytes`);
    const users = new Map<string, Buffer>();
    const lines = text.split(/\r?\n/);
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      if (line.trim() === '' || line.trimStart().startsWith('#')) continue;
      const at = `${where} line ${i + 1}`;
      const colon = line.indexOf(':');
      if (colon < 0) throw new Error(`${at}: expected USER:PASSWORD`);
      const user = Buffer.from(line.slice(0, colon), 'utf8');
      const password = Buffer.from(line.slice(colon + 1), 'utf8');
      if (user.length === 0) throw new Error(`${at}: the user name is empty`);
      if (password.length === 0) throw new Error(`${at}: the password is empty`);
      if (user.length > MAX_CREDENTIAL_BYTES || password.length > MAX_CREDENTIAL_BYTES) {
        throw new Error(`${at}: user name and password must be at most ${MAX_CREDENTIAL_BYTES} bytes each (SOCKS5 carries no more)`);
      }
      // Control characters cannot be typed into a proxy URL; refusing them keeps the file unambiguous.
      if (/[\x00-\x1f\x7f]/.test(line)) throw new Error(`${at}: control characters are not allowed`);
      const key = sha256(user).toString('hex');
      if (users.has(key)) throw new Error(`${at}: a user named on an earlier line`);
      if (users.size >= MAX_USERS) throw new Error(`${where}: more than ${MAX_USERS} users`);
      users.set(key, sha256(password));
    }
    if (users.size === 0) throw new Error(`${where}: no USER:PASSWORD line`);
    return new ProxyCredentials(users);
  }

  /** Is this user/password pair one of the file's? */
  check(user: Uint8Array, password: Uint8Array): boolean {
    if (user.length === 0 || user.length > MAX_CREDENTIAL_BYTES || password.length > MAX_CREDENTIAL_BYTES) return false;
    const expected = this.users.get(sha256(user).toString('hex'));
    const same = timingSafeEqual(expected ?? UNKNOWN_USER, sha256(password));
    return expected !== undefined && same;
  }

  /** Checks an HTTP Proxy-Authorization field value. */
  checkProxyAuthorization(field: string | undefined): boolean {
    const pair = parseBasic(field);
    return pair !== null && this.check(pair.user, pair.password);
  }
}

/** Compared with when the user is unknown, so that case costs what a wrong password costs. */
const UNKNOWN_USER = Buffer.alloc(32);

function sha256(b: Uint8Array): Buffer {
  return createHash('sha256').update(b).digest();
}

/** `Basic base64(user:password)` (RFC 7617 2) -> the pair as bytes, or null. */
export function parseBasic(field: string | undefined): { user: Uint8Array; password: Uint8Array } | null {
  if (field === undefined) return null;
  const m = /^\s*basic\s+([A-Za-z0-9+/]+={0,2})\s*$/i.exec(field);
  if (m === null || m[1]!.length > 4 * MAX_CREDENTIAL_BYTES) return null;
  const decoded = Buffer.from(m[1]!, 'base64');
  const colon = decoded.indexOf(0x3a);
  if (colon < 0) return null;
  return { user: decoded.subarray(0, colon), password: decoded.subarray(colon + 1) };
}

export type UserPassParse = { kind: 'need-more' } | { kind: 'error'; reason: string } | { kind: 'ok'; used: number; user: Uint8Array; password: Uint8Array };

/** The RFC 1929 request: VER=1 ULEN UNAME PLEN PASSWD. */
export function parseUserPass(b: Uint8Array): UserPassParse {
  if (b.length < 2) return { kind: 'need-more' };
  if (b[0] !== 0x01) return { kind: 'error', reason: `not RFC 1929 (version byte ${b[0]})` };
  const ulen = b[1]!;
  if (b.length < 2 + ulen + 1) return { kind: 'need-more' };
  const plen = b[2 + ulen]!;
  const end = 3 + ulen + plen;
  if (b.length < end) return { kind: 'need-more' };
  return { kind: 'ok', used: end, user: b.subarray(2, 2 + ulen), password: b.subarray(3 + ulen, end) };
}

/** RFC 1929 reply: VER=1, STATUS (0 success; anything else, and the server closes). */
export const USERPASS_OK: Uint8Array = Uint8Array.from([0x01, 0x00]);
export const USERPASS_FAILED: Uint8Array = Uint8Array.from([0x01, 0x01]);

/**
 * Counts authentication failures (every one, for /stats) and logs them
 * through the limits' RefusalLog: the first failure of a burst per listener
 * gets a line, then one summary line per interval says how many followed.
 */
const AUTH_FAILURE_LINES: RefusalLogLines = {
  level: 'info',
  first: 'proxy authentication failed',
  summary: 'proxy authentication still failing: failures since the last line',
  keyField: 'listener',
};

export class AuthFailureLog {
  private readonly lines: RefusalLog;

  constructor(
    private readonly counters: { authFailures: number },
    log: Logger,
    intervalMs = REFUSAL_LOG_INTERVAL_MS,
  ) {
    this.lines = new RefusalLog(log, intervalMs, AUTH_FAILURE_LINES);
  }

  /** `presented`: whether the client offered credentials at all (never what they were). */
  record(listener: 'http' | 'socks', client: string | undefined, presented: boolean): void {
    this.counters.authFailures++;
    this.lines.refused(listener, { client, presented });
  }

  /** Writes the pending summaries and stops their timers. */
  close(): void {
    this.lines.close();
  }
}
