import type { JsonInput } from './canonical.js';
export { RawJson, ExactNumber, JsonInput, bindSha256Digest, canonicalJson, parseExact, select } from './canonical.js';

export type Alg = 'HS256' | 'RS256' | 'ES256' | 'EdDSA';
export declare const ALGORITHMS: Alg[];

export interface AppJwtOptions {
  /** The subscription id (the token's iss). */
  subscriptionId: string;
  /** From the credentials response. */
  kid: string;
  /** The HS256 secret string (used as is), or a private key: PEM, private JWK or CryptoKey. */
  key: string | JsonWebKey | CryptoKey;
  alg?: Alg;
  /** The end user (accounting only). */
  sub: string;
  /** JSON Pointer → the exact value required in the request body. */
  bind?: Record<string, JsonInput>;
  /** JSON Pointer → a value whose SHA-256 (as the gateway hashes it) is required there. */
  bindSha256?: Record<string, JsonInput>;
  /** Lifetime in seconds (default 300; at most the subscription's maximum). */
  ttl?: number;
  /** Needed when the subscription requires single-use tokens (randomJti()). */
  jti?: string;
  /** If set, the gateway's public URL. */
  aud?: string;
  /** Issued-at in seconds (default now). */
  iat?: number;
}

export declare function mintAppJwt(options: AppJwtOptions): Promise<string>;
export declare function appJwtClaims(options: Omit<AppJwtOptions, 'kid' | 'key' | 'alg'>): Promise<Record<string, unknown>>;
export declare function importSigningKey(alg: Alg, key: string | JsonWebKey | CryptoKey): Promise<CryptoKey>;
export declare function randomJti(): string;
