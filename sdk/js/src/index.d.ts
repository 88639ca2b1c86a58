export * from './client.js';
export * from './auth.js';
export * from './errors.js';
export * from './sse.js';
export * from './oauth.js';
export * from './mint.js';
