/**
 * Credential injection, as `moat serve` and `moat proxy` start it: the CA
 * from the state directory (created at the first start), the Injector, the
 * start-up log line that prints each placeholder (never a value), and what
 * the API's /secrets and /ca.pem answer.
 */
import type { InjectControl } from '../api-server.js';
import type { Logger } from '../log.js';
import { CaError, loadOrCreateCa } from './ca.js';
import { Injector, type InjectSettings } from './interceptor.js';

export { Injector, type InjectSettings } from './interceptor.js';
export { defaultStateDir, loadOrCreateCa, existingCaPem, CaError } from './ca.js';

/** Throws an Error naming --state-dir when the CA cannot be loaded or made. */
export function startInjector(settings: InjectSettings, log: Logger): Injector {
  let ca;
  try {
    ca = loadOrCreateCa(settings.stateDir);
  } catch (err) {
    throw new Error(`--state-dir: ${err instanceof CaError ? err.message : `${settings.stateDir}: ${(err as Error).message}`}`);
  }
  const injector = new Injector(settings, ca);
  for (const s of injector.describe()) log.info('secret placeholder', { secret: s.name, placeholder: s.placeholder, inject: s.inject });
  log.info('credential injection ready', { ca: `${ca.dir}/ca.pem`, hosts: [...new Set(settings.rules.rules.map((r) => `${r.host}:${r.port}`))] });
  return injector;
}

export function injectControl(injector: Injector): InjectControl {
  return {
    secrets: () => injector.describe(),
    caPem: () => injector.ca.certPem,
  };
}
