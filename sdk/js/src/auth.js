// The auth modes (SPEC §11, after the seeds' SDK). Where each puts its credential:
//
//   mode            required-auth calls (chat, ...)     optional-auth calls (models, operations, me)
//   apiKey          X-API-Key: <key> or Bearer          the same
//   jwt             Authorization: Bearer <getJwt()>    x-user-id: <subscription id>
//   subscriptionId  refused locally                     x-user-id: <subscription id>
//   oauth           Authorization: Bearer <access>      the same

import { canonicalJson, select } from './canonical.js';
import { TollgateClientError } from './errors.js';

const CACHE_ENTRIES = 16;

function unverifiedExp(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))));
    return typeof json.exp === 'number' && Number.isFinite(json.exp) ? Math.floor(json.exp) : null;
  } catch {
    return null;
  }
}

/** An API key: for servers only — never ship one in an app or a web page. */
export function apiKey(key, { header = 'x-api-key' } = {}) {
  if (!['x-api-key', 'bearer'].includes(header)) throw new TypeError("header must be 'x-api-key' or 'bearer'");
  return {
    kind: 'apiKey',
    async headers() {
      return header === 'bearer' ? { authorization: `Bearer ${key}` } : { 'x-api-key': key };
    },
    toJSON: () => ({ kind: 'apiKey', header }),
  };
}

/** Only the subscription id: lists models, polls operations, reads /v1/me; nothing else. */
export function subscriptionId(id) {
  return {
    kind: 'subscriptionId',
    subscriptionId: id,
    async headers(ctx) {
      if (!ctx.optional) {
        throw new TollgateClientError(
          'config',
          `${ctx.method} ${ctx.path} needs a secret credential: a subscription id alone only lists models, polls operations and reads /v1/me (use jwt or apiKey)`,
        );
      }
      return { 'x-user-id': id };
    },
  };
}

/**
 * App JWTs from your backend. `getJwt({method, path, params, body})` returns a token minted for
 * those parameters; it is called when there is no valid token for the request's parameters, and
 * once more after 401 AUTH_TOKEN_EXPIRED. `params` is 'body' (default) or a list of JSON Pointers
 * (`['/model', '/max_tokens']`): then only those fields are passed, and requests that agree on
 * them share a token.
 */
export function jwt({ subscriptionId: id, getJwt, params = 'body', refreshMarginSeconds = 5 }) {
  if (typeof getJwt !== 'function') throw new TypeError('jwt({getJwt}) needs a function');
  if (typeof id !== 'string' || !id) throw new TypeError('jwt({subscriptionId}) is required');
  const cache = [];
  let lock = Promise.resolve();
  const request = (ctx) => {
    const body = ctx.body ?? null;
    const p = ctx.jwtParams !== undefined ? ctx.jwtParams : params === 'body' ? body : select(body ?? {}, params);
    return { method: ctx.method, path: ctx.path, params: p, body };
  };
  const token = async (ctx, renew, now) => {
    const req = request(ctx);
    const key = `${req.method} ${req.path}\n${canonicalJson(req.params)}`;
    // One getJwt at a time, so concurrent calls with the same parameters ask once.
    const run = lock.then(async () => {
      for (let i = cache.length - 1; i >= 0; i--) {
        const c = cache[i];
        if ((c.exp !== null && c.exp - refreshMarginSeconds <= now) || (renew && c.key === key)) cache.splice(i, 1);
      }
      const hit = cache.find((c) => c.key === key);
      if (hit) return hit.token;
      let t;
      try {
        t = await getJwt(req);
      } catch (cause) {
        throw new TollgateClientError('token', `getJwt failed: ${cause?.message ?? cause}`, { cause });
      }
      t = typeof t === 'string' ? t.trim() : '';
      if (!t) throw new TollgateClientError('token', 'getJwt returned no token');
      if (cache.length >= CACHE_ENTRIES) cache.shift();
      cache.push({ key, token: t, exp: unverifiedExp(t) });
      return t;
    });
    lock = run.catch(() => {});
    return run;
  };
  return {
    kind: 'jwt',
    subscriptionId: id,
    renewable: true,
    async headers(ctx, { now, stale }) {
      if (ctx.optional) return { 'x-user-id': id };
      return { authorization: `Bearer ${await token(ctx, Boolean(stale), now)}` };
    },
    tokenOf(headers) {
      return headers.authorization?.slice(7) ?? null;
    },
    clear() {
      cache.length = 0;
    },
  };
}

/** Platform access tokens from an OAuthSession (see oauth.js). */
export function oauth(session) {
  return {
    kind: 'oauth',
    renewable: true,
    async headers(_ctx, { now, stale }) {
      const t = stale ? await session.renew(now, stale) : await session.accessToken(now);
      return { authorization: `Bearer ${t}` };
    },
    tokenOf(headers) {
      return headers.authorization?.slice(7) ?? null;
    },
  };
}

export const Auth = { apiKey, jwt, subscriptionId, oauth };
