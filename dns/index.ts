/**
 * dns/: the allowlist's DNS wall as a pure library (no I/O, injected
 * resolver and timers). The service wires it: parse rules → pre-resolve
 * exact hosts → build the zone table → answer queries with DnsResponder.
 */
export {
  canonicalHostname,
  isRuleError,
  parseRule,
  parseRules,
  RuleError,
  RuleSetError,
  type AddressRule,
  type CidrRule,
  type HostRule,
  type Rule,
  type RuleReason,
  type WildcardRule,
} from './rules.js';
export {
  BUILTIN_TTL,
  builtinHosts,
  compareZoneNames,
  DEFAULT_GATEWAY_NAMES,
  DEFAULT_HOST_ALIAS_NAMES,
  formatZoneTable,
  hostsToResolve,
  isInZone,
  labelCount,
  ROOT_ZONE,
  ZoneTable,
  type BuiltinHost,
  type BuiltinOptions,
  type HostRecords,
  type SinkholeMode,
  type Zone,
  type ZoneKind,
} from './zones.js';
export {
  AttemptTimeoutError,
  backoffMs,
  clampTtl,
  DEFAULT_RETRY_POLICY,
  DEFAULT_TTL_CLAMP,
  isNxdomain,
  lookup,
  NXDOMAIN_CODE,
  preresolve,
  PreresolveError,
  withRetry,
  type HostFailure,
  type PreresolveOptions,
  type RecordFamily,
  type ResolvedAddresses,
  type Resolver,
  type RetryContext,
  type RetryPolicy,
  type ServiceRecords,
  type ServiceType,
  type Timers,
  type TtlClamp,
} from './preresolve.js';
export {
  DEFAULT_MAX_LIVE_LOOKUPS,
  DEFAULT_MAX_UDP_PAYLOAD,
  DEFAULT_SINKHOLE_TTL,
  DnsResponder,
  type DnsDecision,
  type DnsOutcome,
  type DnsReply,
  type DnsTransport,
  type Rcode,
  type ResponderOptions,
  type ResponderStats,
} from './responder.js';
export {
  DEFAULT_LIVE_BUDGET,
  LiveLookupBudget,
  type LiveBudgetLimits,
  type LiveBudgetOptions,
  type LiveBudgetStats,
  type LiveSpend,
} from './live-budget.js';
export { emitSvcb, parseSvcb, SVC_KEY, SvcbError, targetText, type SvcbRecord, type SvcParam } from './svcb.js';
export { filterServiceRecord, type FilteredService } from './svcb-filter.js';
