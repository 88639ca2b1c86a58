// Minting request-bound app JWTs (SPEC §2.4) on a customer's backend, with WebCrypto only:
// Node >= 20, Deno, Bun, workers and browsers (EdDSA where the platform has Ed25519).

import { RawJson, bindSha256Digest, canonicalJson, parseExact } from './canonical.js';

export { RawJson, ExactNumber, bindSha256Digest, canonicalJson, parseExact, select } from './canonical.js';

export const ALGORITHMS = ['HS256', 'RS256', 'ES256', 'EdDSA'];

const subtle = () => {
  const s = globalThis.crypto?.subtle;
  if (!s) throw new Error('WebCrypto (crypto.subtle) is not available on this platform');
  return s;
};

const encoder = new TextEncoder();

function b64url(bytes) {
  let bin = '';
  const u = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  for (let i = 0; i < u.length; i += 0x8000) bin += String.fromCharCode(...u.subarray(i, i + 0x8000));
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function pemDecode(pem) {
  const m = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/.exec(pem);
  if (!m) throw new TypeError('expected a PEM private key (-----BEGIN PRIVATE KEY-----)');
  if (m[2].includes(':')) throw new TypeError('encrypted PEM keys are not supported; decrypt it first');
  const bin = atob(m[2].replace(/\s+/g, ''));
  const der = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) der[i] = bin.charCodeAt(i);
  return { label: m[1], der };
}

// DER, just enough to wrap PKCS#1 / SEC1 keys in PKCS#8 (WebCrypto imports only PKCS#8).
function derLength(n) {
  if (n < 0x80) return [n];
  const bytes = [];
  while (n > 0) {
    bytes.unshift(n & 0xff);
    n >>= 8;
  }
  return [0x80 | bytes.length, ...bytes];
}
function der(tag, ...parts) {
  const body = parts.flatMap((p) => [...p]);
  return new Uint8Array([tag, ...derLength(body.length), ...body]);
}
const OID_RSA = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
function pkcs8(algorithmIdentifier, privateKey) {
  return der(0x30, [0x02, 0x01, 0x00], der(0x30, algorithmIdentifier), der(0x04, privateKey));
}

const PARAMS = {
  RS256: { import: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, sign: { name: 'RSASSA-PKCS1-v1_5' } },
  ES256: { import: { name: 'ECDSA', namedCurve: 'P-256' }, sign: { name: 'ECDSA', hash: 'SHA-256' } },
  EdDSA: { import: { name: 'Ed25519' }, sign: { name: 'Ed25519' } },
};

/**
 * Imports the signing key: the HS256 secret string (used as is: its UTF-8 bytes are the HMAC
 * key), or for RS256/ES256/EdDSA a PEM private key (PKCS#8; also PKCS#1 "RSA PRIVATE KEY" and
 * SEC1 "EC PRIVATE KEY"), a private JWK, or a CryptoKey.
 */
export async function importSigningKey(alg, key) {
  if (!ALGORITHMS.includes(alg)) throw new TypeError(`alg must be one of ${ALGORITHMS.join(', ')}`);
  if (globalThis.CryptoKey && key instanceof globalThis.CryptoKey) return key;
  if (alg === 'HS256') {
    if (typeof key !== 'string' || key === '') {
      throw new TypeError('HS256 takes the secret string from the credentials response');
    }
    if (key.includes('-----BEGIN')) {
      throw new TypeError('HS256 takes the secret string, not a PEM key (use RS256, ES256 or EdDSA)');
    }
    return subtle().importKey('raw', encoder.encode(key), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  }
  const p = PARAMS[alg];
  if (key && typeof key === 'object' && typeof key.kty === 'string') {
    if (!('d' in key)) throw new TypeError('this JWK has no private part: sign with the private key');
    return subtle().importKey('jwk', key, p.import, false, ['sign']);
  }
  if (typeof key !== 'string') throw new TypeError('expected a PEM private key, a private JWK or a CryptoKey');
  const { label, der: bytes } = pemDecode(key);
  let body;
  if (label === 'PRIVATE KEY') body = bytes;
  else if (label === 'RSA PRIVATE KEY' && alg === 'RS256') body = pkcs8(der(0x30, OID_RSA, [0x05, 0x00]), bytes);
  else if (label === 'EC PRIVATE KEY' && alg === 'ES256') body = pkcs8(der(0x30, OID_EC, OID_P256), bytes);
  else if (label.includes('PUBLIC') || label.includes('CERTIFICATE')) {
    throw new TypeError('this is a public key or certificate: sign with the private key');
  } else throw new TypeError(`a ${label} cannot sign ${alg}`);
  return subtle().importKey('pkcs8', body, p.import, false, ['sign']);
}

function validPointer(p) {
  return typeof p === 'string' && (p === '' || (p.startsWith('/') && encoder.encode(p).length <= 512));
}

/**
 * The payload mintAppJwt signs, checked the way the gateway will check it.
 * @returns {Promise<object>}
 */
export async function appJwtClaims({ subscriptionId, sub, bind, bindSha256, ttl = 300, jti, aud, iat }) {
  if (typeof subscriptionId !== 'string' || !/^[0-9a-f]{24}$/.test(subscriptionId)) {
    throw new TypeError("subscriptionId must be the subscription's id (24 lowercase hex characters)");
  }
  if (typeof sub !== 'string' || sub === '' || encoder.encode(sub).length > 256) {
    throw new TypeError('sub (the end user) must be a string of 1 to 256 bytes');
  }
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > 86400) {
    throw new RangeError("ttl must be 1 to 86400 seconds (and at most the subscription's maximum)");
  }
  const now = iat ?? Math.floor(Date.now() / 1000);
  if (!Number.isInteger(now)) throw new TypeError('iat must be an integer (seconds)');
  const claims = { iss: subscriptionId, sub, iat: now, exp: now + ttl };
  if (bind && Object.keys(bind).length) {
    claims.bind = {};
    for (const [p, v] of Object.entries(bind)) {
      if (!validPointer(p)) throw new TypeError(`${JSON.stringify(p)} is not a JSON Pointer ('' or starting with '/')`);
      const value = v instanceof RawJson ? parseExact(v.text) : v;
      canonicalJson(value); // refuses NaN, lone surrogates, functions ...
      claims.bind[p] = value;
    }
  }
  if (bindSha256 && Object.keys(bindSha256).length) {
    claims.bind_sha256 = {};
    for (const [p, v] of Object.entries(bindSha256)) {
      if (!validPointer(p)) throw new TypeError(`${JSON.stringify(p)} is not a JSON Pointer ('' or starting with '/')`);
      claims.bind_sha256[p] = await bindSha256Digest(v);
    }
  }
  if (jti !== undefined && jti !== null) {
    if (typeof jti !== 'string' || jti === '' || encoder.encode(jti).length > 256) {
      throw new TypeError('jti must be a string of 1 to 256 bytes');
    }
    claims.jti = jti;
  }
  if (aud !== undefined && aud !== null) claims.aud = aud;
  return claims;
}

/**
 * A signed app JWT for one request.
 *
 * @param {object} o
 * @param {string} o.subscriptionId the subscription id (iss)
 * @param {string} o.kid from the credentials response
 * @param {string|object|CryptoKey} o.key the HS256 secret, or a private key (PEM, JWK, CryptoKey)
 * @param {'HS256'|'RS256'|'ES256'|'EdDSA'} [o.alg='HS256']
 * @param {string} o.sub the end user
 * @param {object} [o.bind] JSON Pointer → exact value required in the body
 * @param {object} [o.bindSha256] JSON Pointer → value whose SHA-256 is required there
 * @param {number} [o.ttl=300] lifetime in seconds
 * @param {string} [o.jti] for subscriptions with single-use tokens (randomJti())
 * @param {string} [o.aud] if set, the gateway's public URL
 * @param {number} [o.iat] issued-at (seconds); default now
 */
export async function mintAppJwt({ subscriptionId, kid, key, alg = 'HS256', sub, bind, bindSha256, ttl, jti, aud, iat }) {
  if (typeof kid !== 'string' || kid === '') throw new TypeError('kid is required (from the credentials response)');
  const cryptoKey = await importSigningKey(alg, key);
  const claims = await appJwtClaims({ subscriptionId, sub, bind, bindSha256, ttl, jti, aud, iat });
  const header = { alg, kid, typ: 'JWT' };
  const input = `${b64url(encoder.encode(canonicalJson(header)))}.${b64url(encoder.encode(canonicalJson(claims)))}`;
  const params = alg === 'HS256' ? { name: 'HMAC' } : PARAMS[alg].sign;
  const sig = await subtle().sign(params, cryptoKey, encoder.encode(input));
  return `${input}.${b64url(sig)}`;
}

/** A random jti (128 bits, base64url). */
export function randomJti() {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return b64url(b);
}
