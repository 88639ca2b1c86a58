// The client against a scripted local server: credential headers per mode, retries, the single
// renewal after AUTH_TOKEN_EXPIRED, streams cut by an SSE error event, operations, OAuth.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';

import {
  Auth, OAuthError, OAuthSession, PkceFlow, TollgateClient, TollgateClientError, TollgateError,
} from '../src/index.js';

const SUB = '66ec1726e728c1405e5ebca2';

/** A server answering from `script(req, body, n)` → {status, headers, body}; records requests. */
async function server(script) {
  const seen = [];
  const s = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', async () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body });
      const r = await script(req, body, seen.length);
      res.writeHead(r.status ?? 200, { 'content-type': 'application/json', 'x-request-id': `rq-${seen.length}`, ...(r.headers ?? {}) });
      if (typeof r.body === 'function') await r.body(res);
      else res.end(typeof r.body === 'string' ? r.body : JSON.stringify(r.body ?? {}));
    });
  });
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${s.address().port}`;
  return { base, seen, close: () => new Promise((r) => s.close(r)) };
}

const apiError = (code, type = 'x', message = 'm', param = null) => ({ error: { code, type, message, param } });
const chat = { model: 'mock-chat', messages: [{ role: 'user', content: 'Hi' }] };
const okList = { object: 'list', data: [] };

test('each mode puts its credential where the seeds SDK does', async () => {
  const srv = await server(() => ({ body: okList }));
  let fetched = 0;
  const fetch = (...a) => {
    fetched += 1;
    return globalThis.fetch(...a);
  };
  await new TollgateClient({ baseUrl: srv.base, auth: Auth.apiKey('tgk_a'), fetch }).models();
  await new TollgateClient({ baseUrl: `${srv.base}/v1/`, auth: Auth.apiKey('tgk_b', { header: 'bearer' }) }).models();
  const jwt = new TollgateClient({ baseUrl: srv.base, auth: Auth.jwt({ subscriptionId: SUB, getJwt: async () => 'h.p.s' }) });
  await jwt.models();
  await jwt.operation('op_1');
  await jwt.chat(chat, { headers: { 'x-end-user-id': 'eu-1' } });
  const byId = new TollgateClient({ baseUrl: srv.base, auth: Auth.subscriptionId(SUB) });
  await byId.me();
  await assert.rejects(byId.chat(chat), (e) => e instanceof TollgateClientError && e.kind === 'config');
  const h = srv.seen.map((r) => r.headers);
  assert.equal(fetched, 1, 'the custom fetch is used');
  assert.equal(h[0]['x-api-key'], 'tgk_a');
  assert.equal(h[0].authorization, undefined);
  assert.equal(h[1].authorization, 'Bearer tgk_b');
  assert.equal(h[2]['x-user-id'], SUB);
  assert.equal(h[2].authorization, undefined);
  assert.equal(srv.seen[3].url, '/v1/operations/op_1');
  assert.equal(h[3]['x-user-id'], SUB);
  assert.equal(h[4].authorization, 'Bearer h.p.s');
  assert.equal(h[4]['x-user-id'], undefined);
  assert.equal(h[4]['x-end-user-id'], 'eu-1');
  assert.equal(h[4]['content-type'], 'application/json');
  assert.deepEqual(JSON.parse(srv.seen[4].body), chat);
  assert.equal(h[5]['x-user-id'], SUB);
  assert.equal(srv.seen.length, 6, 'the refused call sent nothing');
  await srv.close();
});

test('429 RATE_LIMITED waits for Retry-After and succeeds; QUOTA_EXCEEDED is never retried', async () => {
  const srv = await server((req, body, n) =>
    n === 1 ? { status: 429, headers: { 'retry-after': '1' }, body: apiError('RATE_LIMITED', 'rate_limit_error') } : { body: okList });
  const events = [];
  const client = new TollgateClient({ baseUrl: srv.base, auth: Auth.apiKey('k'), onRetry: (e) => events.push(e) });
  const t0 = Date.now();
  await client.models();
  assert.ok(Date.now() - t0 >= 1000);
  assert.equal(events.length, 1);
  assert.equal(events[0].waitMs, 1000);
  assert.equal(events[0].error.code, 'RATE_LIMITED');
  await srv.close();

  const quota = await server(() => ({ status: 429, headers: { 'retry-after': '1' }, body: apiError('QUOTA_EXCEEDED', 'insufficient_quota') }));
  const generous = new TollgateClient({ baseUrl: quota.base, auth: Auth.apiKey('k'), retry: { maxRetries: 9, maxWaitMs: 1e9, maxTotalWaitMs: 1e9 } });
  await assert.rejects(generous.chat(chat), (e) => e instanceof TollgateError && e.code === 'QUOTA_EXCEEDED'
    && e.status === 429 && e.retryAfter === 1 && e.requestId === 'rq-1');
  assert.equal(quota.seen.length, 1);
  await quota.close();

  const always = await server(() => ({ status: 429, headers: { 'retry-after': '1' }, body: apiError('RATE_LIMITED') }));
  const bounded = new TollgateClient({ baseUrl: always.base, auth: Auth.apiKey('k'), retry: { maxRetries: 1 } });
  await assert.rejects(bounded.models(), (e) => e.code === 'RATE_LIMITED');
  assert.equal(always.seen.length, 2, 'one attempt and one retry');
  await always.close();

  const noRetry = await server(() => ({ status: 429, headers: { 'retry-after': '1', 'x-should-retry': 'false' }, body: apiError('RATE_LIMITED') }));
  await assert.rejects(new TollgateClient({ baseUrl: noRetry.base, auth: Auth.apiKey('k') }).models());
  assert.equal(noRetry.seen.length, 1, 'x-should-retry: false is obeyed');
  await noRetry.close();
});

function tokenWithExp(exp) {
  const enc = (o) => btoa(JSON.stringify(o)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  return `${enc({ alg: 'HS256' })}.${enc({ exp, n: Math.random() })}.sig`;
}

test('after 401 AUTH_TOKEN_EXPIRED getJwt is called exactly once more and the call resent', async () => {
  const expired = new Set();
  const srv = await server((req) => {
    const t = req.headers.authorization?.slice(7);
    return expired.has(t) ? { status: 401, body: apiError('AUTH_TOKEN_EXPIRED', 'authentication_error') } : { body: { choices: [] } };
  });
  let calls = 0;
  let stale = 1;
  const getJwt = async (r) => {
    calls += 1;
    assert.equal(r.path, '/v1/chat/completions');
    assert.deepEqual(r.params, chat);
    const t = tokenWithExp(Math.floor(Date.now() / 1000) + 300);
    if (calls <= stale) expired.add(t);
    return t;
  };
  const client = new TollgateClient({ baseUrl: srv.base, auth: Auth.jwt({ subscriptionId: SUB, getJwt }) });
  await client.chat(chat);
  assert.equal(calls, 2);
  await client.chat(chat);
  assert.equal(calls, 2, 'the renewed token is reused');
  stale = Infinity;
  calls = 0;
  const again = new TollgateClient({ baseUrl: srv.base, auth: Auth.jwt({ subscriptionId: SUB, getJwt }) });
  await assert.rejects(again.chat(chat), (e) => e.code === 'AUTH_TOKEN_EXPIRED' && e.status === 401);
  assert.equal(calls, 2, 'exactly one renewal');
  await srv.close();
});

test('a token past its exp is replaced before sending; params may be named fields', async () => {
  const srv = await server(() => ({ body: { choices: [] } }));
  const seen = [];
  const getJwt = (r) => {
    seen.push(r.params);
    return tokenWithExp(1000 + 60);
  };
  let now = 1000;
  const client = new TollgateClient({ baseUrl: srv.base, clock: () => now,
    auth: Auth.jwt({ subscriptionId: SUB, getJwt, params: ['/model', '/max_tokens'], refreshMarginSeconds: 0 }) });
  await client.chat({ ...chat, max_tokens: 5 });
  await client.chat({ ...chat, max_tokens: 5, messages: [{ role: 'user', content: 'other' }] });
  assert.deepEqual(seen, [{ '/model': 'mock-chat', '/max_tokens': 5 }], 'same named fields: one token');
  now = 1061;
  await client.chat({ ...chat, max_tokens: 5 });
  assert.equal(seen.length, 2, 'expired: asked again');
  await client.chat(chat, { jwtParams: { sku: 'A-1' } });
  assert.deepEqual(seen[2], { sku: 'A-1' });
  await srv.close();
});

test('a stream yields typed chunks with usage, and ends with the typed error the gateway sent', async () => {
  const chunk = (content) => `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content } }] })}\n\n`;
  const srv = await server((req, body) => ({
    headers: { 'content-type': 'text/event-stream' },
    body: async (res) => {
      const b = JSON.parse(body);
      assert.equal(b.stream, true);
      res.write(chunk('Hel'));
      await new Promise((r) => setTimeout(r, 20));
      res.write(': keep-alive\r\n\r\n' + chunk('lo'));
      if (b.messages[0].content === 'revoke me') {
        res.end(`event: error\ndata: ${JSON.stringify(apiError('AUTH_REVOKED', 'authentication_error', 'revoked'))}\n\n`);
      } else {
        res.end(`data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [], usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } })}\n\ndata: [DONE]\n\n`);
      }
    },
  }));
  const client = new TollgateClient({ baseUrl: srv.base, auth: Auth.apiKey('k') });
  const stream = await client.chatStream({ ...chat, stream_options: { include_usage: true } });
  assert.equal(srv.seen[0].headers.accept, 'text/event-stream');
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  assert.equal(chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''), 'Hello');
  assert.equal(chunks.at(-1).usage.total_tokens, 3);

  const cut = await client.chatStream({ ...chat, messages: [{ role: 'user', content: 'revoke me' }] });
  const got = [];
  await assert.rejects(async () => {
    for await (const c of cut) got.push(c);
  }, (e) => e instanceof TollgateError && e.code === 'AUTH_REVOKED' && e.status === 401 && e.inStream && e.requestId === cut.requestId);
  assert.equal(got.length, 2);
  await srv.close();
});

test('Prefer: respond-async, then polling with x-user-id until done or failed', async () => {
  let polls = 0;
  const srv = await server((req) => {
    if (req.method === 'POST') {
      assert.equal(req.headers.prefer, 'respond-async');
      return { status: 202, body: { id: 'op_9', object: 'operation', status: 'queued' } };
    }
    polls += 1;
    if (req.url === '/v1/operations/op_bad') {
      return { body: { id: 'op_bad', status: 'failed', error: { code: 'UPSTREAM_ERROR', type: 'api_error', message: 'boom', param: null } } };
    }
    return { body: polls < 3 ? { id: 'op_9', status: 'running' } : { id: 'op_9', status: 'succeeded', result: { created: 1, data: [{ b64_json: 'AA' }] } } };
  });
  const client = new TollgateClient({ baseUrl: srv.base, auth: Auth.jwt({ subscriptionId: SUB, getJwt: () => 'h.p.s' }) });
  const result = await client.imagesAndWait({ model: 'mock-image', prompt: 'p' }, { intervalMs: 10 });
  assert.equal(result.data[0].b64_json, 'AA');
  assert.equal(polls, 3);
  for (const r of srv.seen.slice(1)) assert.equal(r.headers['x-user-id'], SUB);
  await assert.rejects(client.waitOperation({ id: 'op_bad', status: 'queued' }, { intervalMs: 5 }),
    (e) => e instanceof TollgateClientError && e.kind === 'operation' && e.apiError.code === 'UPSTREAM_ERROR');
  await assert.rejects(client.operation('../me'), (e) => e.kind === 'config');
  await srv.close();
});

test('OAuth: the session keeps the newest refresh token; a forged redirect is refused', async () => {
  let n = 0;
  const srv = await server((req, body) => {
    const form = new URLSearchParams(body);
    n += 1;
    if (form.get('grant_type') === 'refresh_token') {
      assert.equal(form.get('refresh_token'), `rt-${n - 1}`, 'always the newest refresh token');
      assert.equal(form.get('client_id'), 'cli_1');
    }
    return { body: { access_token: `at-${n}`, refresh_token: `rt-${n}`, expires_in: 3600, token_type: 'Bearer' } };
  });
  const persisted = [];
  const session = OAuthSession.fromRefreshToken({ baseUrl: srv.base, clientId: 'cli_1', refreshToken: 'rt-0', onTokens: (t) => persisted.push(t.refreshToken) });
  assert.equal(await session.accessToken(), 'at-1');
  await Promise.all([session.refresh(), session.refresh()]);
  assert.equal(session.refreshToken, 'rt-3');
  assert.deepEqual(persisted, ['rt-1', 'rt-2', 'rt-3']);
  await srv.close();

  const flow = await PkceFlow.start({ baseUrl: 'http://127.0.0.1:1', clientId: 'cli_1', redirectUri: 'http://127.0.0.1:2/cb', expectedIssuer: 'http://gw' });
  const url = new URL(await flow.authorizeUrl());
  assert.equal(url.searchParams.get('code_challenge_method'), 'S256');
  assert.equal(url.searchParams.get('code_challenge'), await flow.codeChallenge());
  assert.equal(url.searchParams.get('state'), flow.state);
  assert.ok(flow.codeVerifier.length >= 43);
  await assert.rejects(flow.complete('http://127.0.0.1:2/cb?code=x&state=other'), (e) => e instanceof OAuthError && e.error === 'state_mismatch');
  await assert.rejects(flow.complete(`http://127.0.0.1:2/cb?code=x&state=${flow.state}&iss=http://evil`), (e) => e.error === 'issuer_mismatch');
  await assert.rejects(flow.complete(`http://127.0.0.1:2/cb?error=access_denied&state=${flow.state}`), (e) => e.error === 'access_denied');
});
