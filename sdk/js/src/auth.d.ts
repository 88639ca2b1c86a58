import type { OAuthSession } from './oauth.js';

export interface CallContext {
  method: string;
  path: string;
  body?: unknown;
  optional: boolean;
  jwtParams?: unknown;
}
export interface AuthMode {
  kind: 'apiKey' | 'jwt' | 'subscriptionId' | 'oauth';
  renewable?: boolean;
  headers(ctx: CallContext, state: { now: number; stale: string | null }): Promise<Record<string, string>>;
  tokenOf?(headers: Record<string, string>): string | null;
}
export interface JwtRequest {
  method: string;
  path: string;
  /** The JSON body, the fields named by `params`, or the call's `jwtParams`. */
  params: unknown;
  body: unknown;
}
export declare function apiKey(key: string, options?: { header?: 'x-api-key' | 'bearer' }): AuthMode;
export declare function subscriptionId(id: string): AuthMode & { subscriptionId: string };
export declare function jwt(options: {
  subscriptionId: string;
  getJwt: (request: JwtRequest) => Promise<string> | string;
  /** 'body' (default) or JSON Pointers of the body. */
  params?: 'body' | string[];
  refreshMarginSeconds?: number;
}): AuthMode & { subscriptionId: string; clear(): void };
export declare function oauth(session: OAuthSession): AuthMode;
export declare const Auth: { apiKey: typeof apiKey; jwt: typeof jwt; subscriptionId: typeof subscriptionId; oauth: typeof oauth };
