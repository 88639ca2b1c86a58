// Typed errors: what the gateway said, or what went wrong on the client's side.

const STATUS = {
  INVALID_REQUEST: 400, AUTH_AMBIGUOUS: 400, AUTH_MISSING: 401, AUTH_INVALID: 401,
  AUTH_TOKEN_EXPIRED: 401, AUTH_REVOKED: 401, AUTH_REPLAYED: 401, PERMISSION_DENIED: 403,
  AUTH_BINDING_MISMATCH: 403, SUBSCRIPTION_INACTIVE: 403, NOT_FOUND: 404, CONFLICT: 409,
  PAYLOAD_TOO_LARGE: 413, VALIDATION_FAILED: 422, RATE_LIMITED: 429, QUOTA_EXCEEDED: 429,
  UPSTREAM_ERROR: 502, UNAVAILABLE: 503, UPSTREAM_TIMEOUT: 504,
};

/** An error the gateway returned (a response, or an SSE `error` event that ended a stream). */
export class TollgateError extends Error {
  constructor({ status, code = '', type = '', message = '', param = null, requestId = null,
    retryAfter = null, shouldRetry = null, inStream = false }) {
    super(`${status} ${code}: ${message}${param ? ` (param ${param})` : ''}`);
    this.name = 'TollgateError';
    this.status = status;
    this.code = code;
    this.type = type;
    this.detail = message;
    this.param = param;
    this.requestId = requestId;
    /** Seconds, from `Retry-After`. */
    this.retryAfter = retryAfter;
    this.shouldRetry = shouldRetry;
    this.inStream = inStream;
  }

  /** Builds the error from the OpenAI-shaped body and the response headers. */
  static fromBody(status, body, headers) {
    const e = body && typeof body === 'object' && body.error && typeof body.error === 'object' ? body.error : null;
    const h = (n) => (headers ? headers.get(n) : null);
    const retry = h('retry-after');
    const should = h('x-should-retry');
    const code = e && e.code != null ? String(e.code) : '';
    return new TollgateError({
      status: status || STATUS[code] || 0,
      code,
      type: e?.type ?? '',
      message: e?.message ?? (typeof body === 'string' ? body.slice(0, 200) : `HTTP ${status}`),
      param: e?.param ?? null,
      requestId: h('x-request-id'),
      retryAfter: retry != null && /^\s*\d+\s*$/.test(retry) ? Number(retry) : null,
      shouldRetry: should == null ? null : should.trim() === 'true',
    });
  }

  static statusOf(code) {
    return STATUS[code] ?? 0;
  }
}

/** An OAuth error (RFC 6749 §5.2), or a failure of the authorization flow (state_mismatch …). */
export class OAuthError extends Error {
  constructor(error, description = null, status = null) {
    super(`OAuth error ${error}${description ? `: ${description}` : ''}`);
    this.name = 'OAuthError';
    this.error = error;
    this.description = description;
    this.status = status;
  }
}

/**
 * A failure on the client's side. `kind`: 'config' (bad input), 'token' (getJwt failed; see
 * `cause`), 'decode' (an answer that is not what the API promises), 'timeout', 'operation'
 * (an operation failed or was cancelled; `operation` and `apiError` say more).
 */
export class TollgateClientError extends Error {
  constructor(kind, message, extra = {}) {
    super(message, extra.cause ? { cause: extra.cause } : undefined);
    this.name = 'TollgateClientError';
    this.kind = kind;
    Object.assign(this, extra);
  }
}
