// The web console in a real browser (Debian's Chromium, driven by playwright-core) against the
// real `tollgate` binary and the fake upstream, both on 127.0.0.1 port 0 (sdk/run-tests.sh builds
// them and passes TOLLGATE_TEST_BIN / TOLLGATE_TEST_UPSTREAM_BIN). The owner signs in with the
// one-time console link printed at first start and publishes a product; a consumer, in a browser
// context of their own (a private window), signs up, verifies through the link in the outbox,
// logs in, subscribes, takes an HS256 secret and an API key, calls the API and cancels. Every page
// on the way is checked by axe (WCAG 2.2 A/AA) in light and dark, and the journey is walked once
// more with the keyboard alone. With TOLLGATE_CONSOLE_SCREENSHOTS=docs/console the screenshots of
// the README are (re)written there; otherwise they go to a temporary folder.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { chromium } from 'playwright-core';
import { AxeBuilder } from '@axe-core/playwright';

import { mintAppJwt } from '../js/src/mint.js';
import { linkFromOutbox, startGateway, startUpstream } from './gateway.js';

const env = process.env;
for (const n of ['TOLLGATE_TEST_BIN', 'TOLLGATE_TEST_UPSTREAM_BIN']) {
  if (!env[n]) throw new Error(`${n} must be set (sdk/run-tests.sh builds the binaries and sets it)`);
}
const chromiumPath = env.TOLLGATE_TEST_CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find(existsSync);
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21aa', 'wcag22aa'];
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const PASSWORD = 'correct horse battery staple';
const MODEL = 'fake-chat';

let upstream;
let gw;
let browser;
let shotsDir;
let owner;
let plan;
/** The first consumer, kept between the tests: their browser context and subscription. */
const alice = { email: 'alice@example.com' };
/** Pages checked by axe, in both schemes. */
const checked = new Set();

// ---- helpers ---------------------------------------------------------------------------------

/** A fresh browser context (a private window) and its page; CSP violations and script errors fail the test. */
async function open({ viewport = DESKTOP, colorScheme = 'light' } = {}) {
  const context = await browser.newContext({ viewport, colorScheme });
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`page error: ${e}`));
  page.on('console', (m) => {
    // A page answered with an error status (a 404, a 410) is logged as a failed load: expected.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource: the server responded with a status of 4')) {
      page.problems.push(`console error: ${m.text()}`);
    }
  });
  return { context, page };
}

function noProblems(page) {
  assert.deepEqual(page.problems, [], `the page reported problems (CSP violations, script errors)`);
}

/** Zero axe violations (WCAG 2.2 A/AA) on the page as it is, in light and in dark. */
async function axe(page, name) {
  for (const colorScheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme });
    const { violations } = await new AxeBuilder({ page }).withTags(AXE_TAGS).analyze();
    const found = violations.map((v) => ({
      id: v.id,
      help: v.help,
      nodes: v.nodes.map((n) => `${n.target.join(' ')}: ${n.failureSummary}`),
    }));
    assert.deepEqual(found, [], `axe on "${name}" (${colorScheme}):\n${JSON.stringify(found, null, 2)}`);
  }
  await page.emulateMedia({ colorScheme: 'light' });
  checked.add(name);
}

/** A screenshot of the viewport (a handful, for the README), at a size and in a scheme; axe at a
 * phone's width too. */
async function shot(page, name, viewport, colorScheme) {
  await page.setViewportSize(viewport);
  if (viewport === PHONE) await axe(page, `${name} (phone width)`);
  await page.emulateMedia({ colorScheme });
  const path = join(shotsDir, `${name}.png`);
  await page.screenshot({ path });
  const { size } = await stat(path);
  assert.ok(size > 5_000 && size < 400_000, `${name}.png is ${size} bytes`);
  await page.setViewportSize(DESKTOP);
  await page.emulateMedia({ colorScheme: 'light' });
}

/** Waits for the page's h1 to be `text` (after a click, the next page may still be loading). */
async function heading(page, text, message) {
  const h1 = page.getByRole('heading', { level: 1, name: text, exact: true });
  await h1.waitFor({ timeout: 10_000 }).catch(() => {});
  const found = (await page.getByRole('heading', { level: 1 }).textContent()).trim();
  assert.equal(found, text, message);
}

async function api(path, { method = 'GET', token, apiKey, body } = {}) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (apiKey) headers['x-api-key'] = apiKey;
  const res = await fetch(`${gw.url}${path}`, { method, headers, body: body && JSON.stringify(body) });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text };
}

const chat = (auth) => api('/v1/chat/completions', {
  method: 'POST',
  ...auth,
  body: { model: MODEL, messages: [{ role: 'user', content: 'Hello from the portal test' }], max_tokens: 16 },
});

async function mint(subscriptionId, kid, secret) {
  return mintAppJwt({
    subscriptionId, kid, key: secret, alg: 'HS256', sub: 'portal-user', bind: { '/model': MODEL }, ttl: 60,
  });
}

/** Signs a consumer up in the dialog of the catalog, opens the verification link from the outbox. */
async function signUpAndVerify(page, email) {
  await page.goto(`${gw.url}/`);
  assert.match(page.url(), /\/console$/);
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Sign up' }).click();
  const dialog = page.getByRole('dialog', { name: 'Welcome to the developer portal' });
  await dialog.waitFor();
  assert.equal(await dialog.getByRole('tab', { name: 'Sign up' }).getAttribute('aria-selected'), 'true');
  await dialog.getByRole('textbox', { name: 'Email' }).fill(email);
  await dialog.locator('#signup-password').fill(PASSWORD);
  await dialog.getByRole('button', { name: 'Create account' }).click();
  await page.waitForURL(/\/console\/signup$/);
  await heading(page, 'Check your email');
  const link = await linkFromOutbox(gw.dataDir, email, '/console/verify');
  assert.ok(link.startsWith(`${gw.url}/console/verify?token=`), `the link names the bound port: ${link}`);
  await page.goto(link);
  await heading(page, 'Email verified');
}

/** Logs in on the page the verification left (its "Log in" button → the log-in form). */
async function logIn(page, email) {
  await page.getByRole('main').getByRole('link', { name: 'Log in' }).click();
  await page.waitForURL(/\/console\/auth\?tab=login$/);
  await page.getByRole('textbox', { name: 'Email' }).fill(email);
  await page.locator('#login-password').fill(PASSWORD);
  await page.getByRole('tabpanel', { name: 'Log in' }).getByRole('button', { name: 'Log in' }).click();
  await page.waitForURL(/\/console$/);
  await page.getByRole('link', { name: 'My subscriptions' }).waitFor();
}

// ---- the processes ---------------------------------------------------------------------------

before(async () => {
  assert.ok(chromiumPath, 'Chromium is needed (apt install chromium), or set TOLLGATE_TEST_CHROMIUM');
  shotsDir = env.TOLLGATE_CONSOLE_SCREENSHOTS
    ? resolve(env.TOLLGATE_CONSOLE_SCREENSHOTS)
    : await mkdtemp(join(tmpdir(), 'tollgate-console-shots-'));
  await mkdir(shotsDir, { recursive: true });
  upstream = await startUpstream(env.TOLLGATE_TEST_UPSTREAM_BIN);
  gw = await startGateway({ bin: env.TOLLGATE_TEST_BIN, upstream });
  // playwright-core gives every launch a fresh temporary profile (its own --user-data-dir).
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  // A product with a plan, made with the bootstrap owner key; the owner publishes it below.
  const product = await api('/v1/products', {
    method: 'POST', token: gw.ownerKey,
    body: { name: 'Chat API', description: 'Chat completions on the fake model.', models: [MODEL] },
  });
  assert.equal(product.status, 201, product.text);
  const created = await api('/v1/plans', {
    method: 'POST', token: gw.ownerKey,
    body: { product_id: product.json.id, name: 'Starter', limits: { requests_per_minute: 600, tokens_per_month: 1000000 } },
  });
  assert.equal(created.status, 201, created.text);
  plan = { product: product.json, plan: created.json };
});

after(async () => {
  await browser?.close();
  await gw?.remove();
  await upstream?.stop();
  if (!env.TOLLGATE_CONSOLE_SCREENSHOTS && shotsDir) await rm(shotsDir, { recursive: true, force: true });
  if (checked.size) console.log(`axe, light and dark, zero violations on: ${[...checked].join('; ')}`);
});

// ---- the tests -------------------------------------------------------------------------------

test('the one-time console link signs the owner in once; they set a password and publish a product', async () => {
  owner = await open();
  const { page } = owner;
  assert.ok(gw.consoleLink.startsWith(`${gw.url}/console/link?token=`), `the link names the bound port: ${gw.consoleLink}`);
  await page.goto(gw.consoleLink);
  await heading(page, 'Sign in to the console');
  await axe(page, 'one-time link');
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.waitForURL(/\/console\/password$/);
  await axe(page, 'set a password');
  await page.getByLabel('New password').fill(PASSWORD);
  await page.getByLabel('Repeat the password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Save password' }).click();
  await page.waitForURL(/\/console\?done=password$/);
  assert.equal((await page.getByRole('status').first().textContent()).trim(), 'Your password is set.');

  await page.goto(`${gw.url}/console/admin`);
  await axe(page, 'admin');
  await page.getByRole('button', { name: `Publish ${plan.product.name}` }).click();
  await page.getByRole('button', { name: `Unpublish ${plan.product.name}` }).waitFor();
  noProblems(page);

  // The link again, in another window: spent.
  const other = await open();
  await other.page.goto(gw.consoleLink);
  const [res] = await Promise.all([
    other.page.waitForResponse((r) => r.url().endsWith('/console/link') && r.request().method() === 'POST'),
    other.page.getByRole('button', { name: 'Continue' }).click(),
  ]);
  assert.equal(res.status(), 410);
  await heading(other.page, 'This link has expired');
  assert.match(await other.page.getByRole('alert').textContent(), /already used/);
  await axe(other.page, 'spent link');
  noProblems(other.page);
  await other.context.close();
});

test('a consumer signs up, verifies, subscribes, calls the API with an app JWT and an API key, and cancels', async () => {
  Object.assign(alice, await open());
  const { page } = alice;
  await page.goto(`${gw.url}/console`);
  await axe(page, 'catalog, signed out');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Sign up' }).click();
  await page.getByRole('dialog').waitFor();
  await axe(page, 'sign-up dialog');
  await shot(page, 'portal-signup-light', DESKTOP, 'light');
  await shot(page, 'portal-signup-phone-dark', PHONE, 'dark');

  // Bad input: kept (never the password), announced, nothing stored.
  await page.getByRole('dialog').getByRole('textbox', { name: 'Email' }).fill('not-an-address');
  await page.locator('#signup-password').fill('short');
  await page.getByRole('dialog').getByRole('button', { name: 'Create account' }).click();
  await page.waitForURL(/\/console\/signup$/);
  assert.equal(await page.getByRole('textbox', { name: 'Email' }).inputValue(), 'not-an-address');
  assert.equal(await page.locator('#signup-password').inputValue(), '');
  assert.ok((await page.getByRole('alert').count()) >= 2, 'the errors are announced');
  await axe(page, 'sign-up with errors');

  await signUpAndVerify(page, alice.email);
  await axe(page, 'email verified');
  await page.getByRole('main').getByRole('link', { name: 'Log in' }).click();
  await page.waitForURL(/\/console\/auth\?tab=login$/);
  await axe(page, 'log-in page');
  await page.goBack();
  await logIn(page, alice.email);
  await axe(page, 'catalog, signed in');

  await page.getByRole('link', { name: plan.product.name }).click();
  await page.waitForURL(/\/console\/portal\/products\//);
  await heading(page, plan.product.name);
  await axe(page, 'product');
  await shot(page, 'portal-product-phone-light', PHONE, 'light');
  await page.getByRole('button', { name: 'Subscribe' }).click();
  await page.waitForURL(/\/console\/portal\/subscriptions\/[0-9a-f]{24}$/);
  alice.subscription = page.url().split('/').pop();
  assert.equal((await page.locator('#sub-id').textContent()).trim(), alice.subscription);
  await axe(page, 'subscription');

  // An HS256 secret: shown once; the test mints an app JWT with it (bound to the model).
  await page.getByRole('button', { name: /Create an HS256 secret/ }).click();
  await page.getByRole('heading', { name: 'Your new HS256 secret' }).waitFor();
  await axe(page, 'subscription with a new secret');
  const secret = (await page.locator('#new-secret').textContent()).trim();
  const kid = (await page.getByText(/^kid:/).locator('code').textContent()).trim();
  assert.ok(secret.length >= 32 && kid.length > 0);
  const jwt = await mint(alice.subscription, kid, secret);
  const withJwt = await chat({ token: jwt });
  assert.equal(withJwt.status, 200, withJwt.text);
  assert.equal(withJwt.json.object, 'chat.completion');
  assert.ok((await page.locator('pre').first().textContent()).includes(`curl ${gw.url}/v1/chat/completions`),
    'the "call it" snippet names the gateway');

  // An API key: shown once, gone on reload.
  await page.getByLabel('API key name').fill('backend');
  await page.getByRole('button', { name: 'Create an API key' }).click();
  await page.getByRole('heading', { name: 'Your new API key' }).waitFor();
  const key = (await page.locator('#new-secret').textContent()).trim();
  assert.ok(!(await page.content()).includes(secret), 'the HS256 secret is not shown again');
  const withKey = await chat({ apiKey: key });
  assert.equal(withKey.status, 200, withKey.text);
  await page.reload();
  assert.equal(await page.locator('#new-secret').count(), 0);
  const html = await page.content();
  assert.ok(!html.includes(key) && !html.includes(secret), 'no secret after a reload');
  assert.equal(await page.getByRole('row', { name: /API key/ }).count(), 1);
  assert.equal(await page.getByRole('row', { name: /HS256 secret/ }).count(), 1);
  await page.setViewportSize(PHONE);
  assert.equal(await page.getByRole('row', { name: /API key/ }).count(), 1, 'stacked on a phone, rows stay rows');
  await page.setViewportSize(DESKTOP);
  await shot(page, 'portal-subscription-light', DESKTOP, 'light');
  await shot(page, 'portal-subscription-dark', DESKTOP, 'dark');
  await shot(page, 'portal-subscription-phone-dark', PHONE, 'dark');

  await page.getByRole('link', { name: 'My subscriptions' }).first().click();
  await page.waitForURL(/\/console\/portal\/subscriptions$/);
  await axe(page, 'my subscriptions');
  assert.match(await page.getByRole('row', { name: new RegExp(alice.subscription) }).textContent(), /active/);

  // Cancel: both credentials stop at once.
  await page.getByRole('link', { name: /Chat API · Starter/ }).click();
  await page.getByRole('button', { name: 'Cancel this subscription' }).click();
  await page.waitForURL(/\?done=cancelled$/);
  await page.getByRole('status').filter({ hasText: 'cancelled' }).waitFor();
  await axe(page, 'cancelled subscription');
  noProblems(page);
  for (const auth of [{ token: await mint(alice.subscription, kid, secret) }, { apiKey: key }]) {
    const r = await chat(auth);
    assert.ok([401, 403].includes(r.status), `after the cancel: ${r.status} ${r.text}`);
  }
});

test("another consumer cannot open the first one's subscription (404)", async () => {
  assert.ok(alice.subscription, 'the journey ran');
  const bob = await open();
  await signUpAndVerify(bob.page, 'bob@example.com');
  await logIn(bob.page, 'bob@example.com');
  const res = await bob.page.goto(`${gw.url}/console/portal/subscriptions/${alice.subscription}`);
  assert.equal(res.status(), 404);
  await heading(bob.page, 'Not found');
  await axe(bob.page, 'not found');
  await bob.page.goto(`${gw.url}/console/portal/subscriptions`);
  assert.equal(await bob.page.getByText(alice.subscription).count(), 0);
  noProblems(bob.page);
  await bob.context.close();
});

test('logging out ends the session on a second instance sharing the store', async () => {
  const { context, page } = alice;
  // A second gateway on the same SQLite file and data dir, behind the same public URL.
  const second = await startGateway({ bin: env.TOLLGATE_TEST_BIN, upstream, dataDir: gw.dataDir, publicUrl: gw.url });
  try {
    await page.goto(`${second.url}/console/portal/subscriptions`);
    await heading(page, 'My subscriptions', 'signed in on the second instance');
    const session = (await context.cookies(gw.url)).find((c) => c.name === 'tg_console');
    assert.ok(session?.httpOnly && session.sameSite === 'Lax');

    await page.goto(`${gw.url}/console/portal/subscriptions`);
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.waitForURL(/\/console\?done=logout$/);
    await axe(page, 'logged out');
    // The browser forgot the cookie; a copy of it is refused by the other instance too.
    assert.equal((await context.cookies(gw.url)).find((c) => c.name === 'tg_console'), undefined);
    await context.addCookies([session]);
    await page.goto(`${second.url}/console/portal/subscriptions`);
    assert.match(page.url(), /\/console\/auth\?tab=login$/);
    noProblems(page);
  } finally {
    await second.stop();
    await context.close();
  }
});

// ---- the keyboard alone ----------------------------------------------------------------------

/** Presses Tab until `locator` has the focus (at most `max` times); the focus must be visible. */
async function tabTo(page, locator, max = 60) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    if (await locator.evaluate((el) => el === document.activeElement).catch(() => false)) {
      const ring = await locator.evaluate((el) => {
        const s = getComputedStyle(el);
        return el.matches(':focus-visible') && s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2;
      });
      assert.ok(ring, `the focus on ${locator} is visible`);
      return;
    }
  }
  throw new Error(`Tab never reached ${locator}`);
}

const focusedIs = (locator) => locator.evaluate((el) => el === document.activeElement);

test('the whole journey works with the keyboard alone', async () => {
  const { context, page } = await open();
  const email = 'carol@example.com';
  const nav = page.getByRole('navigation', { name: 'Main' });
  await page.goto(`${gw.url}/console`);

  // The dialog's tabs follow the WAI-ARIA tabs pattern: arrows, Home/End, a roving tabindex.
  await tabTo(page, nav.getByRole('link', { name: 'Sign up' }));
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  const signupTab = dialog.getByRole('tab', { name: 'Sign up' });
  const loginTab = dialog.getByRole('tab', { name: 'Log in' });
  assert.ok(await focusedIs(signupTab), 'the dialog opens on the Sign up tab, focused');
  const selected = async () => [await signupTab.getAttribute('aria-selected'), await loginTab.getAttribute('aria-selected'),
    await signupTab.getAttribute('tabindex'), await loginTab.getAttribute('tabindex')];
  await page.keyboard.press('ArrowRight');
  assert.ok(await focusedIs(loginTab));
  assert.deepEqual(await selected(), ['false', 'true', '-1', '0']);
  assert.ok(await dialog.getByRole('tabpanel', { name: 'Log in' }).isVisible());
  await page.keyboard.press('ArrowLeft');
  assert.deepEqual(await selected(), ['true', 'false', '0', '-1']);
  await page.keyboard.press('End');
  assert.ok(await focusedIs(loginTab));
  await page.keyboard.press('Home');
  assert.ok(await focusedIs(signupTab));
  assert.ok(await dialog.getByRole('tabpanel', { name: 'Sign up' }).isVisible());
  await page.keyboard.press('Escape');
  assert.equal(await dialog.isVisible(), false, 'Escape closes the dialog');
  await page.keyboard.press('Shift+Tab');
  await tabTo(page, nav.getByRole('link', { name: 'Sign up' }));
  await page.keyboard.press('Enter');
  await dialog.waitFor();

  await tabTo(page, dialog.getByRole('textbox', { name: 'Email' }));
  await page.keyboard.type(email);
  await page.keyboard.press('Tab');
  assert.ok(await focusedIs(page.locator('#signup-password')));
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press('Enter');
  await page.waitForURL(/\/console\/signup$/);
  await heading(page, 'Check your email');
  // The email is read outside the browser; its link is opened as a person pastes it.
  await page.goto(await linkFromOutbox(gw.dataDir, email, '/console/verify'));
  await heading(page, 'Email verified');

  await tabTo(page, page.getByRole('main').getByRole('link', { name: 'Log in' }));
  await page.keyboard.press('Enter');
  await page.waitForURL(/\/console\/auth\?tab=login$/);
  await tabTo(page, page.getByRole('textbox', { name: 'Email' }));
  await page.keyboard.type(email);
  await page.keyboard.press('Tab');
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press('Enter');
  await page.waitForURL(/\/console$/);

  await tabTo(page, page.getByRole('link', { name: plan.product.name }));
  await page.keyboard.press('Enter');
  await page.waitForURL(/\/console\/portal\/products\//);
  await tabTo(page, page.getByRole('button', { name: 'Subscribe' }));
  await page.keyboard.press('Space');
  await page.waitForURL(/\/console\/portal\/subscriptions\/[0-9a-f]{24}$/);
  const subscription = page.url().split('/').pop();

  await tabTo(page, page.getByLabel('API key name'));
  await page.keyboard.type('keyboard');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Your new API key' }).waitFor();
  const key = (await page.locator('#new-secret').textContent()).trim();
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: gw.url });
  await tabTo(page, page.getByRole('button', { name: 'Copy' }).last());
  await page.keyboard.press('Enter');
  await page.locator('#new-secret-status').getByText('Copied').waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), key);
  assert.equal((await chat({ apiKey: key })).status, 200);

  await tabTo(page, page.getByRole('button', { name: 'Cancel this subscription' }), 120);
  await page.keyboard.press('Enter');
  await page.waitForURL(/\?done=cancelled$/);
  assert.ok([401, 403].includes((await chat({ apiKey: key })).status));
  assert.equal(page.url(), `${gw.url}/console/portal/subscriptions/${subscription}?done=cancelled`);

  await tabTo(page, page.getByRole('button', { name: 'Log out' }));
  await page.keyboard.press('Enter');
  await page.waitForURL(/\/console\?done=logout$/);
  noProblems(page);
  await context.close();
});

test('a password reset through the emailed link; the spent link shows the expired page', async () => {
  const { context, page } = await open();
  const fresh = 'a brand new passphrase';
  await page.goto(`${gw.url}/console/auth?tab=login`);
  await page.getByRole('link', { name: 'Forgot your password?' }).click();
  await page.waitForURL(/\/console\/reset$/);
  await axe(page, 'reset request');
  await page.getByLabel('Email').fill(alice.email);
  await page.getByRole('button', { name: 'Send the link' }).click();
  await heading(page, 'Check your email');
  const link = await linkFromOutbox(gw.dataDir, alice.email, '/console/reset/confirm');
  await page.goto(link);
  await heading(page, 'Choose a new password');
  await axe(page, 'choose a new password');
  // The two passwords differ: said next to the field, announced, nothing changed.
  await page.getByLabel('New password').fill(fresh);
  await page.getByLabel('Repeat the password').fill(`${fresh}!`);
  await page.getByRole('button', { name: 'Save password' }).click();
  assert.match(await page.getByRole('alert').textContent(), /differ/);
  assert.equal(await page.getByLabel('New password').inputValue(), '', 'a password is never sent back');
  await axe(page, 'new password with errors');
  await page.getByLabel('New password').fill(fresh);
  await page.getByLabel('Repeat the password').fill(fresh);
  await page.getByRole('button', { name: 'Save password' }).click();
  await heading(page, 'Password changed');

  await page.goto(link);
  await page.getByLabel('New password').fill(fresh);
  await page.getByLabel('Repeat the password').fill(fresh);
  const [res] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST'),
    page.getByRole('button', { name: 'Save password' }).click(),
  ]);
  assert.equal(res.status(), 410);
  await heading(page, 'This link has expired');
  await axe(page, 'spent reset link');

  // The new password logs in.
  await page.goto(`${gw.url}/console/auth?tab=login`);
  await page.getByRole('textbox', { name: 'Email' }).fill(alice.email);
  await page.locator('#login-password').fill(fresh);
  await page.getByRole('tabpanel', { name: 'Log in' }).getByRole('button', { name: 'Log in' }).click();
  await page.waitForURL(/\/console$/);
  await page.getByRole('link', { name: 'My subscriptions' }).waitFor();
  noProblems(page);
  await context.close();
});
