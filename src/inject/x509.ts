/**
 * X.509 issuance: one function that signs a certificate with ECDSA P-256.
 *
 * Node's crypto parses certificates (X509Certificate) but cannot build one.
 * The ASN.1 structures come from @peculiar/asn1-x509 (RFC 5280 schema, the
 * layer under @peculiar/x509, without its tsyringe/reflect-metadata globals);
 * keys and signatures are node:crypto's (native, ~0.1 ms per ECDSA signature).
 * node-forge was the other candidate: its certificate API signs with RSA only,
 * so every leaf would cost an RSA key (tens of ms) or a shared RSA key, and it
 * re-implements the crypto in JavaScript.
 */
import { createHash, randomBytes, sign, type KeyObject } from 'node:crypto';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  AuthorityKeyIdentifier,
  BasicConstraints,
  Certificate,
  ExtendedKeyUsage,
  Extension,
  Extensions,
  GeneralName,
  id_ce_authorityKeyIdentifier,
  id_ce_basicConstraints,
  id_ce_extKeyUsage,
  id_ce_keyUsage,
  id_ce_subjectAltName,
  id_ce_subjectKeyIdentifier,
  id_kp_serverAuth,
  KeyIdentifier,
  KeyUsage,
  KeyUsageFlags,
  Name,
  RelativeDistinguishedName,
  SubjectAlternativeName,
  SubjectKeyIdentifier,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
} from '@peculiar/asn1-x509';

const ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';
const COMMON_NAME = '2.5.4.3';
const ORGANIZATION = '2.5.4.10';

export interface IssueRequest {
  /** Subject common name. */
  commonName: string;
  /** The subject's public key. */
  publicKey: KeyObject;
  /** The issuer's private key (the subject's own for a self-signed CA). */
  signingKey: KeyObject;
  /** The issuer's name (DER of the CA certificate's subject), or undefined: self-signed. */
  issuer?: { name: Name; keyId: ArrayBuffer };
  notBefore: Date;
  notAfter: Date;
  /** A CA certificate (basicConstraints cA, keyCertSign) or a TLS server leaf for `dnsName`. */
  kind: { ca: true } | { ca: false; dnsName: string };
}

export function subjectName(commonName: string): Name {
  const rdn = (type: string, value: string): RelativeDistinguishedName => new RelativeDistinguishedName([new AttributeTypeAndValue({ type, value: new AttributeValue({ utf8String: value }) })]);
  return new Name([rdn(ORGANIZATION, 'Moat'), rdn(COMMON_NAME, commonName)]);
}

/** SHA-1 of the public key bits (RFC 5280 4.2.1.2 method 1). */
function keyId(spki: SubjectPublicKeyInfo): ArrayBuffer {
  const digest = createHash('sha1').update(new Uint8Array(spki.subjectPublicKey)).digest();
  return digest.buffer.slice(digest.byteOffset, digest.byteOffset + digest.length);
}

function ext(extnID: string, critical: boolean, value: unknown): Extension {
  return new Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) });
}

/** Issues a certificate; returns it as DER, with the fields a later leaf needs from a CA. */
export function issue(req: IssueRequest): { der: Buffer; name: Name; keyId: ArrayBuffer } {
  const spkiDer = req.publicKey.export({ type: 'spki', format: 'der' });
  const spki = AsnConvert.parse(spkiDer, SubjectPublicKeyInfo);
  const ownKeyId = keyId(spki);
  const subject = subjectName(req.commonName);
  const serial = randomBytes(16);
  serial[0]! &= 0x7f; // positive INTEGER
  serial[0]! |= 0x01; // and not starting with a zero byte
  const extensions: Extension[] = [ext(id_ce_subjectKeyIdentifier, false, new SubjectKeyIdentifier(ownKeyId))];
  if (req.issuer !== undefined) extensions.push(ext(id_ce_authorityKeyIdentifier, false, new AuthorityKeyIdentifier({ keyIdentifier: new KeyIdentifier(req.issuer.keyId) })));
  if (req.kind.ca) {
    extensions.push(ext(id_ce_basicConstraints, true, new BasicConstraints({ cA: true, pathLenConstraint: 0 })));
    extensions.push(ext(id_ce_keyUsage, true, new KeyUsage(KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign)));
  } else {
    extensions.push(ext(id_ce_basicConstraints, true, new BasicConstraints({ cA: false })));
    extensions.push(ext(id_ce_keyUsage, true, new KeyUsage(KeyUsageFlags.digitalSignature)));
    extensions.push(ext(id_ce_extKeyUsage, false, new ExtendedKeyUsage([id_kp_serverAuth])));
    extensions.push(ext(id_ce_subjectAltName, false, new SubjectAlternativeName([new GeneralName({ dNSName: req.kind.dnsName })])));
  }
  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: serial.buffer.slice(serial.byteOffset, serial.byteOffset + serial.length),
    signature: new AlgorithmIdentifier({ algorithm: ECDSA_WITH_SHA256 }),
    issuer: req.issuer?.name ?? subject,
    validity: new Validity({ notBefore: req.notBefore, notAfter: req.notAfter }),
    subject,
    subjectPublicKeyInfo: spki,
    extensions: new Extensions(extensions),
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const signature = sign('sha256', tbsDer, { key: req.signingKey, dsaEncoding: 'der' });
  const cert = new Certificate({
    tbsCertificate: tbs,
    signatureAlgorithm: new AlgorithmIdentifier({ algorithm: ECDSA_WITH_SHA256 }),
    signatureValue: signature.buffer.slice(signature.byteOffset, signature.byteOffset + signature.length),
  });
  return { der: Buffer.from(AsnConvert.serialize(cert)), name: subject, keyId: ownKeyId };
}

/** The subject name and key id of a CA certificate read back from DER (a CA loaded from disk). */
export function caIdentity(der: Uint8Array): { name: Name; keyId: ArrayBuffer } {
  const cert = AsnConvert.parse(der, Certificate);
  return { name: cert.tbsCertificate.subject, keyId: keyId(cert.tbsCertificate.subjectPublicKeyInfo) };
}

export function toPem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64');
  return `-----BEGIN CERTIFICATE-----\n${b64.replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;
}

