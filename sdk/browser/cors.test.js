// A real browser (Debian's Chromium, driven by playwright-core) against a running gateway
// (started by sdk/run-tests.sh): a web app on one loopback origin — a page and its backend, which
// mints app JWTs — streams a chat from the gateway on another origin. The same page served from
// an origin the subscription does not allow is stopped by the browser at the preflight.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';

import { chromium } from 'playwright-core';
import { mintAppJwt } from '../js/src/mint.js';

const env = process.env;
const needed = ['TOLLGATE_TEST_URL', 'TOLLGATE_TEST_SUBSCRIPTION', 'TOLLGATE_TEST_KID', 'TOLLGATE_TEST_SECRET', 'TOLLGATE_TEST_OWNER_KEY'];
if (!needed.every((n) => env[n])) {
  throw new Error(`${needed.join(', ')} must be set (sdk/run-tests.sh starts a gateway and sets them)`);
}
const gw = env.TOLLGATE_TEST_URL.replace(/\/$/, '');
const sub = env.TOLLGATE_TEST_SUBSCRIPTION;
const chromiumPath = env.TOLLGATE_TEST_CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find(existsSync);

const page = new URL('./page/', import.meta.url);
const sdk = new URL('../js/src/', import.meta.url);

/** A customer's web app: its page, the SDK as static files, and a backend that mints tokens. */
function webApp() {
  const minted = [];
  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://x');
      if (req.method === 'POST' && url.pathname === '/token') {
        let raw = '';
        for await (const c of req) raw += c;
        const bind = JSON.parse(raw || '{}');
        // The backend decides what it allows; here: the one model, a bounded max_tokens.
        if (bind['/model'] !== 'mock-chat' || !(bind['/max_tokens'] <= 64)) {
          res.writeHead(403).end();
          return;
        }
        const token = await mintAppJwt({
          subscriptionId: sub, kid: env.TOLLGATE_TEST_KID, key: env.TOLLGATE_TEST_SECRET, alg: 'HS256',
          sub: 'browser-user', bind, ttl: 60,
        });
        minted.push(bind);
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token }));
        return;
      }
      const [base, name] = url.pathname === '/' ? [page, 'index.html']
        : url.pathname === '/app.js' ? [page, 'app.js']
          : url.pathname.startsWith('/sdk/') && /^[a-z]+\.js$/.test(url.pathname.slice(5)) ? [sdk, url.pathname.slice(5)]
            : [null, null];
      if (!base) {
        res.writeHead(404).end();
        return;
      }
      const body = await readFile(new URL(name, base));
      res.writeHead(200, {
        'content-type': name.endsWith('.html') ? 'text/html; charset=utf-8' : 'text/javascript; charset=utf-8',
        'content-security-policy': `default-src 'self'; connect-src 'self' ${gw}`,
      }).end(body);
    } catch (e) {
      res.writeHead(500).end(String(e));
    }
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({ server, minted, origin: `http://127.0.0.1:${server.address().port}` });
    });
  });
}

async function allowOrigins(origins) {
  const res = await fetch(`${gw}/v1/subscriptions/${sub}`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${env.TOLLGATE_TEST_OWNER_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ allowed_origins: origins }),
  });
  assert.equal(res.status, 200, await res.text());
}

async function openPage(browser, app) {
  const tab = await browser.newPage();
  const errors = [];
  tab.on('pageerror', (e) => errors.push(String(e)));
  await tab.goto(`${app.origin}/?gw=${encodeURIComponent(gw)}&sub=${encodeURIComponent(sub)}`);
  await tab.waitForFunction(() => document.body.dataset.result || document.body.dataset.error, null, { timeout: 20_000 });
  const [result, error] = await tab.evaluate(() => [document.body.dataset.result, document.body.dataset.error]);
  await tab.close();
  return { result: result && JSON.parse(result), error, errors };
}

let browser;
let allowed;
let other;

before(async () => {
  assert.ok(chromiumPath, 'Chromium is needed (apt install chromium), or set TOLLGATE_TEST_CHROMIUM');
  browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox'] });
  allowed = await webApp();
  other = await webApp();
  await allowOrigins([allowed.origin]);
});

after(async () => {
  await browser?.close();
  allowed?.server.close();
  other?.server.close();
  await allowOrigins([]).catch(() => {});
});

test('a page of an allowed origin streams a chat with an app JWT its backend minted', async () => {
  const { result, error, errors } = await openPage(browser, allowed);
  assert.equal(error, undefined, `the page failed: ${error} ${errors.join('; ')}`);
  assert.ok(result.text.length > 0, 'streamed some content');
  assert.ok(result.usage && result.usage.total_tokens > 0, 'the usage chunk arrived');
  assert.ok(result.models.includes('mock-chat'), `models: ${result.models}`);
  assert.deepEqual(allowed.minted, [{ '/model': 'mock-chat', '/max_tokens': 32 }]);
});

test('the same page on another origin is stopped by the browser at the preflight', async () => {
  const { result, error } = await openPage(browser, other);
  assert.equal(result, undefined);
  assert.match(error, /fetch/i, error);
  // The backend may have minted a token (the page asks before calling), but the gateway never
  // answered the page: its preflight was refused.
  const res = await fetch(`${gw}/v1/chat/completions`, {
    method: 'OPTIONS',
    headers: { origin: other.origin, 'access-control-request-method': 'POST' },
  });
  assert.equal(res.status, 403);
  assert.equal(res.headers.get('access-control-allow-origin'), null);
});
