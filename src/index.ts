/**
 * The `moat` package root: the service, the many-guest host and the proxy, embeddable (serve, host, proxy), and the
 * allowlist learner. The pure libraries have their own entries, which never
 * import this folder: `moat/netstack` (TCP/IP stack), `moat/dns` (rules,
 * zone table, responder) and `moat/sni` (ClientHello/Host peeking, egress
 * policy, pins).
 */
export {
  flagsToArgs,
  host,
  proxy,
  serve,
  type HostEmbedOptions,
  type MoatHost,
  type MoatNetwork,
  type MoatProxy,
  type ProxyEmbedOptions,
  type AllowlistUpdate,
  type EmbedOptions,
  type MoatServer,
  type ServeFlags,
  type ServeFlagValue,
  type SetAllowlistOptions,
} from './embed.js';
export { ConfigError, type ServeConfig } from './config.js';
export { NetworkConfigError, type FieldError } from './host-config.js';
export { HostFullError, NetworkExistsError, type NetworkSummary } from './host.js';
export type { DecisionProto, DecisionRecord, DecisionVerdict } from './egress/decision-log.js';
export type { AskCallback } from './egress/ask-gate.js';
export type { AskProto, AskVerdict, PendingView } from './egress/ask-table.js';
export {
  DEFAULT_HOST_ALIAS,
  DEFAULT_WILDCARD_MIN,
  formatRules,
  learnAllowlist,
  parseDecisionLine,
  readDecisionRecords,
  type LearnFormat,
  type LearnOptions,
  type LearnRecord,
  type LearnResult,
} from './learn.js';
export { createLogger, NULL_LOGGER, type LogFormat, type Logger, type LogLevel, type LogStream } from './log.js';
