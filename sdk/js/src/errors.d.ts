/** An error the gateway returned (a response, or an SSE `error` event that ended a stream). */
export declare class TollgateError extends Error {
  status: number;
  /** e.g. 'AUTH_TOKEN_EXPIRED', 'RATE_LIMITED', 'QUOTA_EXCEEDED', 'AUTH_BINDING_MISMATCH'. */
  code: string;
  /** e.g. 'authentication_error'. */
  type: string;
  /** The gateway's message. */
  detail: string;
  /** The field or JSON Pointer the error is about. */
  param: string | null;
  /** x-request-id (readable cross-origin only if the gateway exposes it). */
  requestId: string | null;
  /** Seconds, from Retry-After. */
  retryAfter: number | null;
  shouldRetry: boolean | null;
  inStream: boolean;
  static fromBody(status: number, body: unknown, headers: Headers | null): TollgateError;
  static statusOf(code: string): number;
}
export declare class OAuthError extends Error {
  error: string;
  description: string | null;
  status: number | null;
}
export declare class TollgateClientError extends Error {
  kind: 'config' | 'token' | 'decode' | 'timeout' | 'operation';
  requestId?: string | null;
  operation?: import('./client.js').Operation;
  apiError?: TollgateError | null;
}
