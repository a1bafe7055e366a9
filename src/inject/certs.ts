/**
 * Leaf certificates for intercepted hosts, issued on demand by Moat's CA and
 * kept in a bounded LRU.
 *
 * All leaves share one ECDSA P-256 key made at start-up and never written to
 * disk (as mitmproxy does): issuing a leaf is then one signature (~0.1 ms),
 * not a key generation. Only hosts with an injection rule are ever
 * intercepted, so the set of names is the operator's list; the bound is there
 * all the same (`maxLeaves`), so no sequence of SNI names can grow memory.
 * A leaf is valid for LEAF_DAYS and re-issued after REISSUE_MS in the cache.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { CertificateAuthority } from './ca.js';
import { issue, toPem } from './x509.js';

const LEAF_DAYS = 30;
const REISSUE_MS = 86400_000;
export const DEFAULT_MAX_LEAVES = 1024;

interface Entry {
  context: SecureContext;
  issuedAt: number;
}

export class LeafCertificates {
  private readonly cache = new Map<string, Entry>();
  private readonly key: KeyObject;
  private readonly publicKey: KeyObject;
  private readonly keyPem: string;
  issued = 0;

  constructor(
    private readonly ca: CertificateAuthority,
    private readonly maxLeaves = DEFAULT_MAX_LEAVES,
    private readonly now: () => number = Date.now,
  ) {
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    this.key = pair.privateKey;
    this.publicKey = pair.publicKey;
    this.keyPem = this.key.export({ type: 'pkcs8', format: 'pem' }) as string;
  }

  get size(): number {
    return this.cache.size;
  }

  /** The TLS context presenting a certificate for `host` (canonical name). */
  contextFor(host: string): SecureContext {
    const t = this.now();
    const hit = this.cache.get(host);
    if (hit !== undefined && t - hit.issuedAt < REISSUE_MS) {
      // Most recently used last: Map keeps insertion order.
      this.cache.delete(host);
      this.cache.set(host, hit);
      return hit.context;
    }
    const leaf = issue({
      commonName: host,
      publicKey: this.publicKey,
      signingKey: this.ca.key,
      issuer: { name: this.ca.name, keyId: this.ca.keyId },
      notBefore: new Date(t - 3600_000),
      notAfter: new Date(t + LEAF_DAYS * 86400_000),
      kind: { ca: false, dnsName: host },
    });
    this.issued++;
    const context = createSecureContext({ key: this.keyPem, cert: toPem(leaf.der) + this.ca.certPem });
    this.cache.delete(host);
    this.cache.set(host, { context, issuedAt: t });
    while (this.cache.size > this.maxLeaves) this.cache.delete(this.cache.keys().next().value as string);
    return context;
  }
}
