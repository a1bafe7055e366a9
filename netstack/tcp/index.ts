/** Moat's TCP: wire format, sequence arithmetic, buffers, RTO, NewReno and the connection state machine. */
export * from './header.js';
export * from './seq.js';
export * from './send-buffer.js';
export * from './recv-buffer.js';
export * from './rtt.js';
export * from './congestion.js';
export * from './connection.js';
export * from './isn.js';
