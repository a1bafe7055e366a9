/**
 * node:crypto's primitives for sni/quic-initial.ts (which imports no node:
 * module): HMAC-SHA256 for HKDF, one AES-128 block for header protection,
 * AES-128-GCM open for the Initial payload.
 */
import { createCipheriv, createDecipheriv, createHmac } from 'node:crypto';
import type { QuicCrypto } from '../../sni/quic-initial.js';

const TAG_BYTES = 16;

export const nodeQuicCrypto: QuicCrypto = {
  hmacSha256: (key, data) => createHmac('sha256', key).update(data).digest(),
  aes128Block: (key, block) => {
    const c = createCipheriv('aes-128-ecb', key, null);
    c.setAutoPadding(false);
    return c.update(block);
  },
  aes128GcmOpen: (key, nonce, aad, sealed) => {
    if (sealed.length < TAG_BYTES) return null;
    const d = createDecipheriv('aes-128-gcm', key, nonce);
    d.setAAD(aad);
    d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    const head = d.update(sealed.subarray(0, sealed.length - TAG_BYTES));
    try {
      return Buffer.concat([head, d.final()]);
    } catch {
      return null; // does not authenticate
    }
  },
};
