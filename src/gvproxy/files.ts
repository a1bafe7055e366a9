/**
 * gvproxy's -pid-file and -log-file, written so that a misused path cannot
 * be turned against the user: the PID file is written to a new file beside
 * it and renamed over the path (a symbolic link planted there is replaced,
 * never followed; a reader never sees it half written), and removed at exit
 * only while it still holds this process's PID; the log file is opened
 * without following a symbolic link in its last component. gvproxy uses
 * os.Create for both (follows links, truncates what they point at).
 */
import { closeSync, constants, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import type { LogStream } from '../log.js';

export interface PidFile {
  readonly path: string;
  /** Removes the file if it still holds our PID (another process may have taken the path since). */
  remove(): void;
}

/** Writes `pid` (decimal, no newline: gvproxy's strconv.Itoa) to `path` atomically. Throws with the path in the message. */
export function writePidFile(path: string, pid: number): PidFile {
  const tmp = `${path}.${pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    // O_EXCL: a name that exists, link or not, is an error, never opened.
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
    try {
      writeSync(fd, String(pid));
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new Error(`-pid-file: cannot write "${path}": ${(e as Error).message}`);
  }
  return {
    path,
    remove: () => {
      try {
        if (readFileSync(path, 'utf8').trim() === String(pid)) rmSync(path, { force: true });
      } catch {
        // Gone already: nothing to remove.
      }
    },
  };
}

export interface LogFile {
  readonly stream: LogStream;
  close(): void;
}

/** Opens (creates or truncates, as gvproxy) the -log-file; refuses a symbolic link. */
export function openLogFile(path: string): LogFile {
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW | constants.O_APPEND, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ELOOP' ? 'it is a symbolic link (not followed)' : (e as Error).message;
    throw new Error(`-log-file: cannot open "${path}": ${why}`);
  }
  let open = true;
  return {
    stream: {
      write: (line: string) => {
        if (!open) return;
        try {
          writeSync(fd, line);
        } catch {
          // A full disk must not stop the network; the lines are lost.
        }
      },
    },
    close: () => {
      if (!open) return;
      open = false;
      closeSync(fd);
    },
  };
}
