/**
 * Decision records of an intercepted connection: one per request, `allowed`
 * with reason `inject` and `injected: NAMES` (never a value), or `blocked`
 * with the reason the request was not forwarded (inject-host-mismatch...).
 * A refusal here is always enforced, audit mode or not: forwarding it would
 * hand the value to a host it was not declared for.
 */
import type { Egress } from '../egress/egress.js';
import type { InterceptReporter } from './interceptor.js';

export function injectionReporter(egress: Egress, dst: string, port: number, name: string, via: 'sni' | 'connect', onClosed: () => void): InterceptReporter {
  const base = { rule: null, proto: 'tcp' as const, dst: `${dst}:${port}`, name, via };
  return {
    injected: (names, detail) =>
      egress.decisions.record({ id: egress.decisions.nextId(), decision: 'allowed', reason: 'inject', ...base, detail, ...(names.length > 0 ? { injected: names.join(',') } : {}) }),
    refused: (reason, detail) => egress.decisions.record({ id: egress.decisions.nextId(), decision: 'blocked', reason, ...base, detail }),
    closed: onClosed,
  };
}
