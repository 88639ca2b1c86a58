// OAuth helpers for platform tokens: authorization code + PKCE (S256) for web and native apps
// (the app receives the redirect itself), client credentials for services, and a session that
// refreshes before expiry and once after AUTH_TOKEN_EXPIRED. Refresh tokens rotate on every use
// and a replayed spent one revokes the whole family, so the session keeps only the newest and
// never refreshes twice at once; `onTokens` lets the app persist it.

import { OAuthError, TollgateClientError } from './errors.js';

const MARGIN_SECONDS = 30;

function b64url(bytes) {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function randomUrlsafe(n) {
  const b = new Uint8Array(n);
  globalThis.crypto.getRandomValues(b);
  return b64url(b);
}

function base(url) {
  return String(url).trim().replace(/\/+$/, '').replace(/\/v1$/, '');
}

async function tokenCall(fetchFn, url, form, basic) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (basic) headers.authorization = `Basic ${btoa(`${encodeURIComponent(basic[0])}:${encodeURIComponent(basic[1])}`)}`;
  const res = await fetchFn(url, { method: 'POST', headers, body: new URLSearchParams(form).toString() });
  const text = await res.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: handled below.
  }
  if (res.ok && body && typeof body.access_token === 'string') return body;
  if (body && typeof body.error === 'string') throw new OAuthError(body.error, body.error_description ?? null, res.status);
  throw new OAuthError('server_error', `HTTP ${res.status} from the token endpoint`, res.status);
}

/** Signed-in tokens, refreshed as needed. */
export class OAuthSession {
  constructor({ baseUrl, clientId, clientSecret = null, scope = null, clientCredentials = false,
    tokens, fetch: fetchFn, onTokens = null }) {
    this._tokenUrl = `${base(baseUrl)}/oauth/token`;
    this._clientId = clientId;
    this._secret = clientSecret;
    this._scope = scope;
    this._cc = clientCredentials;
    this._fetch = fetchFn ?? globalThis.fetch.bind(globalThis);
    this._tokens = tokens;
    this._onTokens = onTokens;
    this._lock = Promise.resolve();
  }

  /** A session restored from a stored refresh token; the first call refreshes. */
  static fromRefreshToken({ baseUrl, clientId, refreshToken, clientSecret = null, fetch, onTokens }) {
    return new OAuthSession({ baseUrl, clientId, clientSecret, fetch, onTokens,
      tokens: { accessToken: '', refreshToken, expiresAt: 0 } });
  }

  /** The newest refresh token (persist it; the previous one is spent). */
  get refreshToken() {
    return this._tokens.refreshToken ?? null;
  }

  get tokens() {
    return { ...this._tokens };
  }

  onTokens(f) {
    this._onTokens = f;
    return this;
  }

  _locked(f) {
    const run = this._lock.then(f);
    this._lock = run.catch(() => {});
    return run;
  }

  /** A valid access token, refreshed first if it is about to expire. */
  accessToken(now = Math.floor(Date.now() / 1000)) {
    return this._locked(async () => {
      const t = this._tokens;
      if (!t.accessToken || (t.expiresAt != null && t.expiresAt - MARGIN_SECONDS <= now)) await this._fetchTokens(now);
      return this._tokens.accessToken;
    });
  }

  /** After 401 AUTH_TOKEN_EXPIRED with `stale`: a new token unless another call replaced it. */
  renew(now, stale) {
    return this._locked(async () => {
      if (this._tokens.accessToken === stale) await this._fetchTokens(now);
      return this._tokens.accessToken;
    });
  }

  /** Refreshes now (rotating the refresh token). */
  refresh() {
    return this._locked(() => this._fetchTokens(Math.floor(Date.now() / 1000)));
  }

  async _request(form) {
    const f = { ...form };
    let basic = null;
    if (this._secret) basic = [this._clientId, this._secret];
    else f.client_id = this._clientId;
    return tokenCall(this._fetch, this._tokenUrl, f, basic);
  }

  async _fetchTokens(now) {
    let res;
    const rt = this._tokens.refreshToken;
    const cc = () => this._request({ grant_type: 'client_credentials', ...(this._scope ? { scope: this._scope } : {}) });
    if (rt) {
      try {
        res = await this._request({ grant_type: 'refresh_token', refresh_token: rt });
      } catch (e) {
        if (!(this._cc && e instanceof OAuthError && e.error === 'invalid_grant')) throw e;
        res = await cc();
      }
    } else if (this._cc) res = await cc();
    else throw new OAuthError('login_required', 'the session has no refresh token; sign in again');
    this._tokens = {
      accessToken: res.access_token,
      refreshToken: res.refresh_token ?? rt ?? null,
      expiresAt: typeof res.expires_in === 'number' ? now + res.expires_in : null,
      scope: res.scope ?? this._tokens.scope ?? null,
    };
    if (this._onTokens) this._onTokens(this.tokens);
  }
}

/** Client credentials (a service account): fetches the first token now. Servers only. */
export async function clientCredentials({ baseUrl, clientId, clientSecret, scope = null, fetch }) {
  const s = new OAuthSession({ baseUrl, clientId, clientSecret, scope, clientCredentials: true, fetch,
    tokens: { accessToken: '', refreshToken: null, expiresAt: 0 } });
  await s.refresh();
  return s;
}

/**
 * Authorization code + PKCE (S256) for a public client. Open `flow.authorizeUrl` (the gateway's
 * hosted login page); when the browser comes back to `redirectUri`, pass that URL to
 * `flow.complete(url)`. Keep `flow.state` and `flow.codeVerifier` (e.g. in sessionStorage) if the
 * page reloads in between; `PkceFlow.restore({...})` takes them back.
 */
export class PkceFlow {
  static async start({ baseUrl, clientId, redirectUri, scope = 'openid', expectedIssuer = null, fetch }) {
    return new PkceFlow({ baseUrl, clientId, redirectUri, scope, expectedIssuer, fetch,
      codeVerifier: randomUrlsafe(32), state: randomUrlsafe(16) });
  }

  static restore(saved) {
    return new PkceFlow(saved);
  }

  constructor({ baseUrl, clientId, redirectUri, scope = 'openid', expectedIssuer = null, fetch, codeVerifier, state }) {
    this.baseUrl = base(baseUrl);
    this.clientId = clientId;
    this.redirectUri = redirectUri;
    this.scope = scope;
    this.expectedIssuer = expectedIssuer;
    this.codeVerifier = codeVerifier;
    this.state = state;
    this._fetch = fetch ?? globalThis.fetch.bind(globalThis);
  }

  async codeChallenge() {
    const d = await globalThis.crypto.subtle.digest('SHA-256', new TextEncoder().encode(this.codeVerifier));
    return b64url(new Uint8Array(d));
  }

  /** The hosted login page's URL for this flow. */
  async authorizeUrl() {
    const u = new URL(`${this.baseUrl}/oauth/authorize`);
    u.search = new URLSearchParams({
      response_type: 'code', client_id: this.clientId, redirect_uri: this.redirectUri, scope: this.scope,
      state: this.state, code_challenge: await this.codeChallenge(), code_challenge_method: 'S256',
    }).toString();
    return u.toString();
  }

  /** Checks the redirect (state, error, iss) and exchanges its code. */
  async complete(callbackUrl, { onTokens } = {}) {
    const q = new URL(callbackUrl).searchParams;
    if (q.get('state') !== this.state) {
      throw new OAuthError('state_mismatch', "the redirect's state is not this flow's (a forged or stale redirect)");
    }
    if (q.get('error')) throw new OAuthError(q.get('error'), q.get('error_description'));
    const iss = q.get('iss');
    if (this.expectedIssuer && iss && iss.replace(/\/$/, '') !== this.expectedIssuer.replace(/\/$/, '')) {
      throw new OAuthError('issuer_mismatch', 'the redirect names another issuer (RFC 9207)');
    }
    const code = q.get('code');
    if (!code) throw new OAuthError('invalid_callback', 'the redirect carries no code');
    const now = Math.floor(Date.now() / 1000);
    const res = await tokenCall(this._fetch, `${this.baseUrl}/oauth/token`, {
      grant_type: 'authorization_code', code, redirect_uri: this.redirectUri, client_id: this.clientId,
      code_verifier: this.codeVerifier,
    });
    return new OAuthSession({
      baseUrl: this.baseUrl, clientId: this.clientId, fetch: this._fetch, onTokens,
      tokens: {
        accessToken: res.access_token,
        refreshToken: res.refresh_token ?? null,
        expiresAt: typeof res.expires_in === 'number' ? now + res.expires_in : null,
        scope: res.scope ?? null,
      },
    });
  }
}

export { OAuthError, TollgateClientError };
