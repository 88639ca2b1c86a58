// The client (fetch-based: browsers, Node >= 20, workers): one place that sends every call with
// its credential, the single renewal after AUTH_TOKEN_EXPIRED and the RATE_LIMITED retries.

import { ChatStream } from './sse.js';
import { TollgateClientError, TollgateError } from './errors.js';

const DEFAULT_RETRY = { maxRetries: 2, maxWaitMs: 10_000, maxTotalWaitMs: 30_000 };

const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      reject(signal.reason ?? new Error('aborted'));
    }, { once: true });
  });

function normaliseBase(url) {
  const b = String(url).trim().replace(/\/+$/, '').replace(/\/v1$/, '');
  let u;
  try {
    u = new URL(b);
  } catch {
    throw new TollgateClientError('config', `${JSON.stringify(url)} is not an absolute URL`);
  }
  if (!['http:', 'https:'].includes(u.protocol) || u.search) {
    throw new TollgateClientError('config', `${JSON.stringify(url)}: the base URL must be http(s) without a query`);
  }
  return b;
}

/** The wait before retrying `err`, or null. Never a quota. */
export function retryWait(policy, err, retries, waitedMs) {
  if (err.status !== 429 || err.code !== 'RATE_LIMITED' || err.type === 'insufficient_quota'
    || err.shouldRetry === false || retries >= policy.maxRetries) return null;
  const ms = (err.retryAfter ?? 1) * 1000;
  return ms <= policy.maxWaitMs && waitedMs + ms <= policy.maxTotalWaitMs ? ms : null;
}

/**
 * A Tollgate client.
 *
 *   const client = new TollgateClient({ baseUrl: 'https://gw.example.com', auth: Auth.apiKey(key) });
 *
 * Options: `auth` (see auth.js), `fetch` (a custom fetch), `headers` (sent on every call),
 * `retry` ({maxRetries, maxWaitMs, maxTotalWaitMs}), `onRetry(event)`, `clock()` (seconds since
 * the epoch; for devices whose clock is known to be off, and for tests).
 * Every call takes `{headers, signal, jwtParams}` as its last argument.
 */
export class TollgateClient {
  constructor({ baseUrl, auth, fetch: fetchFn, headers = {}, retry = {}, onRetry = null, clock = null }) {
    if (!auth || typeof auth.headers !== 'function') {
      throw new TollgateClientError('config', 'auth is required: Auth.apiKey(...), Auth.jwt(...), ...');
    }
    this.baseUrl = normaliseBase(baseUrl);
    this.auth = auth;
    this._fetch = fetchFn ?? globalThis.fetch.bind(globalThis);
    this._headers = headers;
    this._retry = { ...DEFAULT_RETRY, ...retry };
    this._onRetry = onRetry;
    this._clock = clock ?? (() => Math.floor(Date.now() / 1000));
  }

  /** GET /v1/models (optional auth). */
  models(opts) {
    return this._json('GET', '/v1/models', undefined, true, opts);
  }

  /** GET /v1/me: who the gateway thinks the caller is (optional auth). */
  me(opts) {
    return this._json('GET', '/v1/me', undefined, true, opts);
  }

  /** POST /v1/chat/completions without streaming. */
  chat(req, opts) {
    const { stream: _ignored, ...body } = req;
    return this._json('POST', '/v1/chat/completions', body, false, opts);
  }

  /**
   * POST /v1/chat/completions with "stream": true: `for await (const chunk of await
   * client.chatStream(req))`. Set `stream_options: {include_usage: true}` for the usage chunk.
   */
  async chatStream(req, opts = {}) {
    const res = await this._send('POST', '/v1/chat/completions', { ...req, stream: true }, false, {
      ...opts,
      headers: { accept: 'text/event-stream', ...(opts.headers ?? {}) },
    });
    return new ChatStream(res);
  }

  /** POST /v1/embeddings. */
  embeddings(req, opts) {
    return this._json('POST', '/v1/embeddings', req, false, opts);
  }

  /** POST /v1/images/generations, synchronously. */
  images(req, opts) {
    return this._json('POST', '/v1/images/generations', req, false, opts);
  }

  /** POST /v1/images/generations with Prefer: respond-async: the queued operation. */
  async imagesAsync(req, opts = {}) {
    const res = await this._send('POST', '/v1/images/generations', req, false, {
      ...opts,
      headers: { prefer: 'respond-async', ...(opts.headers ?? {}) },
    });
    const body = await this._decode(res);
    if (res.status === 202) return body;
    // A gateway that answered synchronously: the same result, as a finished operation.
    return { id: '', object: 'operation', status: 'succeeded', result: body };
  }

  /** GET /v1/operations/{id} (optional auth). */
  operation(id, opts) {
    if (typeof id !== 'string' || !/^[A-Za-z0-9_-]+$/.test(id)) {
      return Promise.reject(new TollgateClientError('config', `${JSON.stringify(id)} is not an operation id`));
    }
    return this._json('GET', `/v1/operations/${id}`, undefined, true, opts);
  }

  /**
   * Polls an operation until it is finished; resolves with its images response, rejects with a
   * TollgateClientError of kind 'operation' (with `.apiError`) if it failed or was cancelled.
   */
  async waitOperation(op, { intervalMs = 250, maxIntervalMs = 2000, timeoutMs = 300_000, ...opts } = {}) {
    const deadline = Date.now() + timeoutMs;
    let pause = intervalMs;
    let current = op;
    for (;;) {
      if (['succeeded', 'failed', 'cancelled'].includes(current.status)) {
        if (current.status === 'succeeded') return current.result;
        const apiError = current.error ? TollgateError.fromBody(0, { error: current.error }, null) : null;
        throw new TollgateClientError('operation', `operation ${current.id} ${current.status}`, { operation: current, apiError });
      }
      if (Date.now() + pause > deadline) {
        throw new TollgateClientError('timeout', `operation ${current.id} is still ${current.status}`);
      }
      await sleep(pause, opts.signal);
      pause = Math.min(pause * 2, maxIntervalMs);
      current = await this.operation(current.id, opts);
    }
  }

  /** imagesAsync then waitOperation. */
  async imagesAndWait(req, opts = {}) {
    return this.waitOperation(await this.imagesAsync(req, opts), opts);
  }

  // ---- machinery ------------------------------------------------------------------------

  async _json(method, path, body, optional, opts) {
    return this._decode(await this._send(method, path, body, optional, opts));
  }

  async _decode(res) {
    const text = await res.text();
    try {
      return JSON.parse(text);
    } catch (cause) {
      throw new TollgateClientError('decode', `the gateway's answer is not JSON (HTTP ${res.status})`, {
        cause, requestId: res.headers.get('x-request-id'),
      });
    }
  }

  async _send(method, path, body, optional, opts = {}) {
    const ctx = { method, path, body, optional, jwtParams: opts.jwtParams };
    const payload = body === undefined ? undefined : JSON.stringify(body);
    let stale = null;
    let renewed = false;
    let retries = 0;
    let waited = 0;
    for (;;) {
      const cred = await this.auth.headers(ctx, { now: this._clock(), stale });
      const headers = { ...this._headers, ...cred, ...(opts.headers ?? {}) };
      if (payload !== undefined) headers['content-type'] = 'application/json';
      const res = await this._fetch(`${this.baseUrl}${path}`, { method, headers, body: payload, signal: opts.signal });
      if (res.ok) return res;
      const text = await res.text();
      let parsed = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // Not JSON: the message keeps the text.
      }
      const err = TollgateError.fromBody(res.status, parsed, res.headers);
      if (res.status === 401 && err.code === 'AUTH_TOKEN_EXPIRED' && !renewed && this.auth.renewable) {
        renewed = true;
        stale = this.auth.tokenOf(cred);
        if (stale) continue;
      }
      stale = null;
      const wait = retryWait(this._retry, err, retries, waited);
      if (wait === null) throw err;
      retries += 1;
      waited += wait;
      this._onRetry?.({ attempt: retries, waitMs: wait, error: err });
      await sleep(wait, opts.signal);
    }
  }
}
