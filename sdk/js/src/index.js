// @tollgate/sdk: a client for the Tollgate AI gateway (browsers and Node >= 20, fetch-based, no
// dependencies) and app-JWT minting for customers' backends ('@tollgate/sdk/mint').

export { TollgateClient, retryWait } from './client.js';
export { Auth, apiKey, jwt, oauth, subscriptionId } from './auth.js';
export { TollgateError, OAuthError, TollgateClientError } from './errors.js';
export { ChatStream, sseEvents } from './sse.js';
export { OAuthSession, PkceFlow, clientCredentials } from './oauth.js';
export {
  ALGORITHMS, appJwtClaims, importSigningKey, mintAppJwt, randomJti,
  RawJson, ExactNumber, bindSha256Digest, canonicalJson, parseExact, select,
} from './mint.js';
