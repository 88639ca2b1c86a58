export interface Tokens {
  accessToken: string;
  refreshToken: string | null;
  /** Seconds since the epoch. */
  expiresAt: number | null;
  scope?: string | null;
}
export declare class OAuthSession {
  static fromRefreshToken(o: { baseUrl: string; clientId: string; refreshToken: string; clientSecret?: string | null; fetch?: typeof fetch; onTokens?: (t: Tokens) => void }): OAuthSession;
  readonly refreshToken: string | null;
  readonly tokens: Tokens;
  onTokens(f: (t: Tokens) => void): this;
  accessToken(now?: number): Promise<string>;
  renew(now: number, stale: string): Promise<string>;
  refresh(): Promise<void>;
}
export declare function clientCredentials(o: { baseUrl: string; clientId: string; clientSecret: string; scope?: string | null; fetch?: typeof fetch }): Promise<OAuthSession>;
export declare class PkceFlow {
  static start(o: { baseUrl: string; clientId: string; redirectUri: string; scope?: string; expectedIssuer?: string | null; fetch?: typeof fetch }): Promise<PkceFlow>;
  static restore(saved: { baseUrl: string; clientId: string; redirectUri: string; scope?: string; expectedIssuer?: string | null; codeVerifier: string; state: string }): PkceFlow;
  readonly baseUrl: string;
  readonly clientId: string;
  readonly redirectUri: string;
  readonly scope: string;
  readonly codeVerifier: string;
  readonly state: string;
  codeChallenge(): Promise<string>;
  authorizeUrl(): Promise<string>;
  complete(callbackUrl: string, options?: { onTokens?: (t: Tokens) => void }): Promise<OAuthSession>;
}
