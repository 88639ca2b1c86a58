// The helper against the shared vectors (sdk/test-vectors/app-jwt.json), offline.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  RawJson, appJwtClaims, bindSha256Digest, canonicalJson, mintAppJwt, parseExact, select,
} from '../src/mint.js';

const vectors = JSON.parse(readFileSync(new URL('../../test-vectors/app-jwt.json', import.meta.url), 'utf8'));

const b64urlDecode = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
const decodePart = (s) => JSON.parse(new TextDecoder().decode(b64urlDecode(s)));

function pemDer(pem) {
  return b64urlDecode(pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '').replace(/\+/g, '-').replace(/\//g, '_'));
}

async function verify(v, token) {
  const [h, p, s] = token.split('.');
  const data = new TextEncoder().encode(`${h}.${p}`);
  const sig = b64urlDecode(s);
  const subtle = globalThis.crypto.subtle;
  if (v.alg === 'HS256') {
    const k = await subtle.importKey('raw', new TextEncoder().encode(v.key.secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify']);
    return subtle.verify('HMAC', k, sig, data);
  }
  const params = {
    RS256: [{ name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, { name: 'RSASSA-PKCS1-v1_5' }],
    ES256: [{ name: 'ECDSA', namedCurve: 'P-256' }, { name: 'ECDSA', hash: 'SHA-256' }],
    EdDSA: [{ name: 'Ed25519' }, { name: 'Ed25519' }],
  }[v.alg];
  const k = await subtle.importKey('spki', pemDer(v.key.public_pem), params[0], false, ['verify']);
  return subtle.verify(params[1], k, sig, data);
}

function mintOptions(v, overrides = {}) {
  const m = v.mint;
  return {
    subscriptionId: m.subscription_id,
    kid: m.kid,
    key: v.key.secret ?? v.key.private_pem,
    alg: v.alg,
    sub: m.sub,
    bind: m.bind,
    bindSha256: Object.fromEntries(Object.entries(m.bind_sha256_json ?? {}).map(([p, t]) => [p, new RawJson(t)])),
    ttl: m.ttl,
    jti: m.jti,
    iat: m.iat,
    ...overrides,
  };
}

test('every digest from the exact JSON text', async () => {
  for (const c of vectors.bind_sha256) {
    assert.equal(await bindSha256Digest(new RawJson(c.json)), c.sha256, c.name);
    if ('canonical' in c) assert.equal(canonicalJson(parseExact(c.json)), c.canonical, c.name);
    else assert.equal(parseExact(c.json), c.string, c.name);
  }
});

test('native values hash the same where JavaScript can hold them', async () => {
  const cases = vectors.bind_sha256.filter((c) => c.native);
  assert.ok(cases.length > 20);
  for (const c of cases) assert.equal(await bindSha256Digest(JSON.parse(c.json)), c.sha256, c.name);
});

test('JSON pointers', () => {
  for (const c of vectors.pointers) {
    const got = select(JSON.parse(c.body), [c.pointer]);
    assert.deepEqual(got, c.absent ? {} : { [c.pointer]: c.value }, JSON.stringify(c));
  }
});

test('minted tokens carry the vectors claims and verify', async () => {
  for (const v of vectors.tokens) {
    const token = await mintAppJwt(mintOptions(v));
    const [h, p] = token.split('.');
    const header = decodePart(h);
    assert.equal(header.alg, v.header.alg, v.name);
    assert.equal(header.kid, v.header.kid, v.name);
    assert.deepEqual(decodePart(p), v.claims, v.name);
    assert.ok(await verify(v, token), `${v.name}: the helper's token verifies`);
    if (v.alg !== 'ES256') assert.equal(await mintAppJwt(mintOptions(v)), token, `${v.name}: deterministic`);
  }
});

test('the vectors tokens verify and a changed one does not', async () => {
  for (const v of vectors.tokens) {
    const [, p, s] = v.token.split('.');
    assert.deepEqual(decodePart(p), v.claims, v.name);
    assert.ok(await verify(v, v.token), v.name);
    const sig = b64urlDecode(s);
    sig[4] ^= 1;
    const forged = v.token.replace(/[^.]+$/, btoa(String.fromCharCode(...sig)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, ''));
    assert.equal(await verify(v, forged), false, v.name);
  }
});

test('numbers and strings render like the gateway', () => {
  assert.equal(canonicalJson(5), '5');
  assert.equal(canonicalJson(new RawJson('5.0')), '5.0');
  assert.equal(canonicalJson(1e21), '1e+21');
  assert.equal(canonicalJson(2 ** 64), '1.8446744073709552e+19');
  assert.equal(canonicalJson(2 ** 63), '9223372036854776000'); // what JSON.stringify sends
  assert.equal(canonicalJson(-0), '0');
  assert.equal(canonicalJson(new RawJson('-0')), '-0.0');
  assert.equal(canonicalJson(1e-7), '1e-7');
  assert.equal(canonicalJson(123456789n * 10n ** 20n), '1.23456789e+28');
  assert.equal(canonicalJson({ b: [true, null, undefined], a: 'x\u2028\x7f\x00', u: undefined }), '{"a":"x\u2028\x7f\\u0000","b":[true,null,null]}');
  assert.equal(canonicalJson({ '\uffff': 1, '😀': 2 }), '{"\uffff":1,"😀":2}');
  assert.equal(canonicalJson(new Date(0)), '"1970-01-01T00:00:00.000Z"');
});

test('bad input is refused before signing', async () => {
  const ok = { subscriptionId: '66ec1726e728c1405e5ebca2', sub: 'u1' };
  await assert.rejects(appJwtClaims({ ...ok, subscriptionId: 'nope' }));
  await assert.rejects(appJwtClaims({ ...ok, ttl: 0 }));
  await assert.rejects(appJwtClaims({ ...ok, ttl: 1.5 }));
  await assert.rejects(appJwtClaims({ ...ok, bind: { model: 'm' } }));
  await assert.rejects(appJwtClaims({ ...ok, bind: { '/t': NaN } }));
  await assert.rejects(bindSha256Digest('\ud800'));
  await assert.rejects(mintAppJwt({ ...ok, kid: 'k', key: '-----BEGIN PRIVATE KEY-----', alg: 'HS256' }));
  await assert.rejects(mintAppJwt({ ...ok, kid: 'k', key: vectors.tokens[1].key.public_pem, alg: 'EdDSA' }));
  await assert.rejects(mintAppJwt({ ...ok, kid: 'k', key: 's', alg: 'none' }));
  assert.throws(() => parseExact('{"a": 1,}'));
  assert.throws(() => parseExact('"\\ud800"'));
});
