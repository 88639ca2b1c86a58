// The package against a running gateway (started by sdk/run-tests.sh): minted tokens accepted,
// a wrong bind refused, every vector's verdict, and the client in each auth mode.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { Auth, RawJson, TollgateClient, TollgateError, mintAppJwt, randomJti, select } from '../src/index.js';

const env = process.env;
const needed = ['TOLLGATE_TEST_URL', 'TOLLGATE_TEST_SUBSCRIPTION', 'TOLLGATE_TEST_KID', 'TOLLGATE_TEST_SECRET', 'TOLLGATE_TEST_OWNER_KEY'];
const present = needed.every((n) => env[n]);
if (!present && env.TOLLGATE_TEST_REQUIRE_GATEWAY === '1') {
  throw new Error('TOLLGATE_TEST_* are not set but a gateway is required');
}
const skip = present ? false : 'no running gateway (sdk/run-tests.sh starts one)';
const gw = present && {
  base: env.TOLLGATE_TEST_URL.replace(/\/$/, ''),
  sub: env.TOLLGATE_TEST_SUBSCRIPTION,
  kid: env.TOLLGATE_TEST_KID,
  secret: env.TOLLGATE_TEST_SECRET,
  owner: env.TOLLGATE_TEST_OWNER_KEY,
};
const vectors = JSON.parse(readFileSync(new URL('../../test-vectors/app-jwt.json', import.meta.url), 'utf8'));

async function post(path, token, raw) {
  const res = await fetch(gw.base + path, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: raw,
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

const CHAT = { model: 'mock-chat', max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] };

test('a minted token is accepted and a wrong bind refused', { skip }, async () => {
  const token = await mintAppJwt({
    subscriptionId: gw.sub, kid: gw.kid, key: gw.secret, alg: 'HS256', sub: 'end-user-js',
    bind: select(CHAT, ['/model', '/max_tokens']), bindSha256: { '/messages': CHAT.messages }, ttl: 120, jti: randomJti(),
  });
  const ok = await post('/v1/chat/completions', token, JSON.stringify(CHAT));
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  assert.equal(ok.body.object, 'chat.completion');
  const wrong = await mintAppJwt({ subscriptionId: gw.sub, kid: gw.kid, key: gw.secret, sub: 'end-user-js', bind: { '/model': 'mock-chat', '/max_tokens': 4096 } });
  const no = await post('/v1/chat/completions', wrong, JSON.stringify(CHAT));
  assert.equal(no.status, 403);
  assert.equal(no.body.error.code, 'AUTH_BINDING_MISMATCH');
  assert.equal(no.body.error.param, '/max_tokens');
});

test('every vector request gets its verdict', { skip }, async () => {
  for (const v of vectors.tokens) {
    let kid = gw.kid;
    let key = gw.secret;
    if (v.alg !== 'HS256') {
      const res = await fetch(`${gw.base}/v1/subscriptions/${gw.sub}/credentials`, {
        method: 'POST',
        headers: { authorization: `Bearer ${gw.owner}`, 'content-type': 'application/json' },
        body: JSON.stringify({ type: 'jwt_public_key', alg: v.alg, public_key: v.key.public_pem }),
      });
      assert.equal(res.status, 201);
      kid = (await res.json()).kid;
      key = v.key.private_pem;
    }
    const m = v.mint;
    for (const req of v.requests) {
      const token = await mintAppJwt({
        subscriptionId: gw.sub, kid, key, alg: v.alg, sub: m.sub, bind: m.bind, ttl: m.ttl, jti: randomJti(),
        bindSha256: Object.fromEntries(Object.entries(m.bind_sha256_json ?? {}).map(([p, t]) => [p, new RawJson(t)])),
      });
      const got = await post('/v1/chat/completions', token, req.body);
      const what = `${v.name} / ${req.name}: ${JSON.stringify(got.body)}`;
      assert.equal(got.status, req.verdict.status, what);
      if (req.verdict.code) {
        assert.equal(got.body.error.code, req.verdict.code, what);
        assert.equal(got.body.error.param, req.verdict.param, what);
      }
    }
  }
});

test('the client in the api-key, jwt and subscription-id modes', { skip }, async () => {
  const owner = new TollgateClient({ baseUrl: gw.base, auth: Auth.apiKey(gw.owner) });
  assert.ok((await owner.models()).data.some((m) => m.id === 'mock-chat'));
  assert.equal((await owner.me()).credential.type, 'api_key');

  let calls = 0;
  const app = new TollgateClient({
    baseUrl: gw.base,
    auth: Auth.jwt({
      subscriptionId: gw.sub,
      // The app's backend: validate, then bind what it checked.
      getJwt: async ({ params }) => {
        calls += 1;
        if (!['mock-chat', 'mock-embed', 'mock-image'].includes(params.model)) throw new Error('not sold');
        const bindSha256 = {};
        for (const f of ['messages', 'prompt', 'input']) if (f in params) bindSha256[`/${f}`] = params[f];
        return mintAppJwt({ subscriptionId: gw.sub, kid: gw.kid, key: gw.secret, sub: 'end-user-js', bind: { '/model': params.model }, bindSha256 });
      },
    }),
  });
  const answer = await app.chat(CHAT);
  assert.ok(answer.choices[0].message.content);
  await app.chat(CHAT);
  assert.equal(calls, 1, 'the same request reuses its token');

  const stream = await app.chatStream({ ...CHAT, stream_options: { include_usage: true } });
  let text = '';
  let usage = null;
  for await (const c of stream) {
    text += c.choices[0]?.delta?.content ?? '';
    usage = c.usage ?? usage;
  }
  assert.ok(text.length > 0);
  assert.ok(usage.total_tokens > 0);

  const emb = await app.embeddings({ model: 'mock-embed', input: ['a', 'b'] });
  assert.equal(emb.data.length, 2);
  const img = await app.images({ model: 'mock-image', prompt: 'a lighthouse', n: 1 });
  assert.equal(img.data.length, 1);
  const op = await app.imagesAsync({ model: 'mock-image', prompt: 'a lighthouse at dusk', n: 1 });
  assert.match(op.id, /^op_/);

  // Anyone holding only the subscription id polls it.
  const poller = new TollgateClient({ baseUrl: gw.base, auth: Auth.subscriptionId(gw.sub) });
  const done = await poller.waitOperation(op, { intervalMs: 100 });
  assert.equal(done.data.length, 1);
  assert.equal((await poller.me()).credential.type, 'subscription_id');
  assert.deepEqual((await poller.models()).data.map((m) => m.id).sort(), ['mock-chat', 'mock-embed', 'mock-image']);
  await assert.rejects(app.chat({ ...CHAT, model: 'gpt-4o' }), (e) => e.kind === 'token');

  const err = await owner.chat({ ...CHAT, model: 'no-such-model' }).catch((e) => e);
  assert.ok(err instanceof TollgateError);
  assert.equal(err.code, 'NOT_FOUND');
  assert.equal(err.param, 'model');
  assert.ok(err.requestId);
});
