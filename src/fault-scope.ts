/**
 * Which network an exception belongs to, for `moat host`.
 *
 * A network's guest input runs inside its scope (AsyncLocalStorage), so
 * every host socket, timer and promise the NAT creates from it carries the
 * network's fault handler. An exception that escapes one of those callbacks
 * reaches process 'uncaughtException'; the router installed by `moat host`
 * finds the scope there and closes that network only. An exception with no
 * scope is the process's own: logged, and the process exits as Node would.
 *
 * `moat serve` does not use this: its one network failing is the process
 * failing, and async context tracking has a cost on every async operation.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Logger } from './log.js';

/** The current network's fault handler. */
export const networkScope = new AsyncLocalStorage<(e: unknown) => void>();

/**
 * Routes uncaught exceptions to the network they came from; returns the
 * uninstaller. Exceptions outside every network end the process (exit 1),
 * after one error line.
 */
export function installFaultRouter(log: Logger, exit: (code: number) => void = (code) => process.exit(code)): () => void {
  const onUncaught = (e: unknown): void => {
    const fault = networkScope.getStore();
    if (fault !== undefined) {
      fault(e);
      return;
    }
    log.error('uncaught exception outside any network; exiting', { error: e });
    exit(1);
  };
  process.on('uncaughtException', onUncaught);
  return () => process.off('uncaughtException', onUncaught);
}
