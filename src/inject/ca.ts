/**
 * Moat's certificate authority for credential injection: generated at the
 * first start that needs it, kept in the state directory, and exported as
 * PEM for the guest to trust (GET /ca.pem, `moat ca`).
 *
 *   STATE_DIR/ca.pem  the certificate (public)
 *   STATE_DIR/ca.key  its ECDSA P-256 private key, PKCS#8 PEM, mode 0600
 *
 * The directory is created 0700. A key file that group or others may read or
 * write is refused (start-up stops naming it): whoever reads the key can
 * impersonate every host to every guest that trusts this CA. The key is
 * written with O_EXCL, so two processes starting at once cannot interleave
 * two keys; the loser reads the winner's.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import { chmodSync, closeSync, constants, fstatSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { caIdentity, issue, toPem } from './x509.js';
import type { Name } from '@peculiar/asn1-x509';

export interface CertificateAuthority {
  readonly certPem: string;
  readonly certDer: Buffer;
  readonly key: KeyObject;
  readonly name: Name;
  readonly keyId: ArrayBuffer;
  /** Where it lives (for the start-up log). */
  readonly dir: string;
}

/** Years the CA is valid: long, because every guest image that trusts it would need the new one. */
const CA_YEARS = 10;

export { defaultStateDir } from './state-dir.js';

export class CaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CaError';
  }
}

/** Loads the CA from `dir`, or creates it there. Throws CaError naming the file. */
export function loadOrCreateCa(dir: string): CertificateAuthority {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const keyPath = join(dir, 'ca.key');
  const certPath = join(dir, 'ca.pem');
  let fd: number;
  try {
    fd = openSync(keyPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new CaError(`${keyPath}: cannot create (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    return load(dir, keyPath, certPath);
  }
  try {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const now = Date.now();
    const ca = issue({
      commonName: 'Moat credential injection CA',
      publicKey,
      signingKey: privateKey,
      notBefore: new Date(now - 3600_000),
      notAfter: new Date(now + CA_YEARS * 365 * 86400_000),
      kind: { ca: true },
    });
    // The certificate first: a key without its certificate would be refused at the next start.
    writeFileSync(certPath, toPem(ca.der), { mode: 0o644 });
    writeFileSync(fd, privateKey.export({ type: 'pkcs8', format: 'pem' }));
    // The umask cannot widen 0600, but a pre-set ACL default could: say what we mean.
    chmodSync(keyPath, 0o600);
  } finally {
    closeSync(fd);
  }
  return load(dir, keyPath, certPath);
}

function load(dir: string, keyPath: string, certPath: string): CertificateAuthority {
  let keyText: string;
  const fd = openSync(keyPath, 'r');
  try {
    const st = fstatSync(fd);
    if ((st.mode & 0o077) !== 0) throw new CaError(`${keyPath}: mode ${(st.mode & 0o777).toString(8)} lets others read or write the CA key; chmod 600 it (or delete it to make a new CA)`);
    if (!st.isFile()) throw new CaError(`${keyPath}: not a regular file`);
    keyText = readFileSync(fd, 'utf8');
  } finally {
    closeSync(fd);
  }
  let certText: string;
  try {
    certText = readFileSync(certPath, 'utf8');
  } catch (err) {
    throw new CaError(`${certPath}: cannot read (${(err as NodeJS.ErrnoException).code ?? 'error'}); delete ${keyPath} to make a new CA`);
  }
  let key: KeyObject;
  let cert: X509Certificate;
  try {
    key = createPrivateKey(keyText);
    cert = new X509Certificate(certText);
  } catch {
    throw new CaError(`${dir}: ca.key or ca.pem does not parse; delete both to make a new CA`);
  }
  if (!cert.checkPrivateKey(key)) throw new CaError(`${dir}: ca.key is not the key of ca.pem`);
  if (!cert.ca) throw new CaError(`${certPath}: not a CA certificate`);
  if (key.asymmetricKeyType !== 'ec' || createPublicKey(key).asymmetricKeyDetails?.namedCurve !== 'prime256v1') throw new CaError(`${keyPath}: expected an ECDSA P-256 key`);
  const id = caIdentity(cert.raw);
  return { certPem: cert.toString(), certDer: cert.raw, key, name: id.name, keyId: id.keyId, dir };
}

/** The CA's PEM if one exists in `dir` (for `moat ca` without creating anything). */
export function existingCaPem(dir: string): string | undefined {
  try {
    statSync(join(dir, 'ca.key'));
    return readFileSync(join(dir, 'ca.pem'), 'utf8');
  } catch {
    return undefined;
  }
}
