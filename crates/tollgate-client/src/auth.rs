//! The auth modes (SPEC §11, after the seeds' SDK): `ApiKey`, `Jwt { get_jwt, subscription_id }`,
//! `SubscriptionId`, and platform tokens from the OAuth helpers.
//!
//! Where each mode puts its credential:
//!
//! | mode | required-auth calls (chat, embeddings, images) | optional-auth calls (models, operations, me) |
//! |---|---|---|
//! | `ApiKey` | `X-API-Key: <key>` or `Authorization: Bearer <key>` | the same |
//! | `Jwt` | `Authorization: Bearer <get_jwt(params)>` | `x-user-id: <subscription id>` |
//! | `SubscriptionId` | refused locally (a subscription id is not a secret) | `x-user-id: <subscription id>` |
//! | `OAuth` | `Authorization: Bearer <access token>` | the same |

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::error::{BoxError, Error};
use crate::mint::{canonical_json, unverified_exp};
use crate::oauth::OAuthSession;
use crate::secret::Secret;

/// Where an API key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyHeader {
    /// `X-API-Key: <key>` (the seeds' `ApiKeyAuth`).
    #[default]
    XApiKey,
    /// `Authorization: Bearer <key>` (what OpenAI SDKs send).
    Bearer,
}

/// How the client authenticates. Cloning shares token caches and OAuth sessions.
#[derive(Clone)]
pub enum Auth {
    /// A long-lived key: for servers only (never ship one in an app or a web page).
    ApiKey { key: Secret, header: KeyHeader },
    /// App JWTs from the caller's backend, plus the subscription id for optional-auth calls.
    Jwt(JwtAuth),
    /// Only the subscription id: polls operations, lists models, reads `/v1/me`; nothing else.
    SubscriptionId(String),
    /// Platform access tokens from [`crate::oauth`], refreshed as needed.
    OAuth(OAuthSession),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::ApiKey { header, .. } => write!(f, "Auth::ApiKey({header:?}, ***)"),
            Auth::Jwt(j) => write!(f, "Auth::Jwt(subscription {})", j.subscription_id),
            Auth::SubscriptionId(id) => write!(f, "Auth::SubscriptionId({id})"),
            Auth::OAuth(_) => f.write_str("Auth::OAuth(***)"),
        }
    }
}

impl Auth {
    /// An API key sent as `X-API-Key`.
    pub fn api_key(key: impl Into<String>) -> Auth {
        Auth::ApiKey {
            key: Secret::new(key),
            header: KeyHeader::XApiKey,
        }
    }

    /// An API key sent as `Authorization: Bearer`.
    pub fn api_key_bearer(key: impl Into<String>) -> Auth {
        Auth::ApiKey {
            key: Secret::new(key),
            header: KeyHeader::Bearer,
        }
    }

    /// App JWTs from `get_jwt`, with the subscription id for optional-auth calls.
    pub fn jwt<F, Fut>(subscription_id: impl Into<String>, get_jwt: F) -> Auth
    where
        F: Fn(JwtRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        Auth::Jwt(JwtAuth::new(subscription_id, get_jwt))
    }

    pub fn subscription_id(id: impl Into<String>) -> Auth {
        Auth::SubscriptionId(id.into())
    }

    pub fn oauth(session: OAuthSession) -> Auth {
        Auth::OAuth(session)
    }
}

impl From<JwtAuth> for Auth {
    fn from(j: JwtAuth) -> Self {
        Auth::Jwt(j)
    }
}

impl From<OAuthSession> for Auth {
    fn from(s: OAuthSession) -> Self {
        Auth::OAuth(s)
    }
}

/// What `get_jwt` receives: the call and its parameters, so the backend can validate them and
/// bind them into the token.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtRequest {
    /// `POST`.
    pub method: String,
    /// `/v1/chat/completions`, `/v1/images/generations`, …
    pub path: String,
    /// The parameters to sign: the JSON body, the fields named by [`JwtParams::Fields`], or what
    /// the call's [`crate::RequestOptions::jwt_params`] gave.
    pub params: Value,
    /// The whole JSON body that will be sent.
    pub body: Value,
}

/// Which parameters `get_jwt` receives (and which requests may share a token: a cached token is
/// reused only for a request with equal parameters on the same route).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JwtParams {
    /// The whole JSON body.
    #[default]
    Body,
    /// Only these JSON Pointers of the body (e.g. `["/model", "/max_tokens"]`), as an object
    /// from pointer to value; pointers absent from the body are left out.
    Fields(Vec<String>),
}

type GetJwt = Arc<dyn Fn(JwtRequest) -> BoxFuture<'static, Result<String, BoxError>> + Send + Sync>;

/// The `Jwt` mode: a callback to the caller's backend, a small token cache, and the
/// subscription id sent as `x-user-id` on optional-auth calls.
#[derive(Clone)]
pub struct JwtAuth {
    subscription_id: String,
    get_jwt: GetJwt,
    params: JwtParams,
    refresh_margin: Duration,
    cache: Arc<tokio::sync::Mutex<VecDeque<Cached>>>,
}

struct Cached {
    key: String,
    token: Secret,
    exp: Option<i64>,
}

/// Tokens kept for reuse (per route and parameters).
const CACHE_ENTRIES: usize = 16;

impl JwtAuth {
    pub fn new<F, Fut>(subscription_id: impl Into<String>, get_jwt: F) -> JwtAuth
    where
        F: Fn(JwtRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        let get_jwt: GetJwt = Arc::new(move |req| Box::pin(get_jwt(req)));
        JwtAuth {
            subscription_id: subscription_id.into(),
            get_jwt,
            params: JwtParams::Body,
            refresh_margin: Duration::from_secs(5),
            cache: Arc::new(tokio::sync::Mutex::new(VecDeque::new())),
        }
    }

    /// Which parameters `get_jwt` receives (default: the whole body).
    pub fn params(mut self, params: JwtParams) -> Self {
        self.params = params;
        self
    }

    /// A token is treated as expired this long before its `exp` (default 5 s).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    pub fn subscription_id(&self) -> &str {
        &self.subscription_id
    }

    /// Forgets every cached token.
    pub async fn clear(&self) {
        self.cache.lock().await.clear();
    }

    fn request_for(&self, ctx: &CallCtx<'_>) -> JwtRequest {
        let body = ctx.body.cloned().unwrap_or(Value::Null);
        let params = match (ctx.jwt_params, &self.params) {
            (Some(p), _) => p.clone(),
            (None, JwtParams::Body) => body.clone(),
            (None, JwtParams::Fields(pointers)) => {
                let mut m = Map::new();
                for p in pointers {
                    if let Some(v) = body.pointer(p) {
                        m.insert(p.clone(), v.clone());
                    }
                }
                Value::Object(m)
            }
        };
        JwtRequest {
            method: ctx.method.to_string(),
            path: ctx.path.to_string(),
            params,
            body,
        }
    }

    /// A token for this call: a cached one that is not expired, else a new one from `get_jwt`
    /// (`renew` skips the cache: after `401 AUTH_TOKEN_EXPIRED`).
    async fn token(&self, ctx: &CallCtx<'_>, now: i64, renew: bool) -> Result<Secret, Error> {
        let req = self.request_for(ctx);
        let key = format!(
            "{} {}\n{}",
            req.method,
            req.path,
            canonical_json(&req.params)
        );
        let margin = i64::try_from(self.refresh_margin.as_secs()).unwrap_or(i64::MAX);
        // Held while calling get_jwt, so concurrent calls with the same parameters ask once.
        let mut cache = self.cache.lock().await;
        cache.retain(|c| c.exp.is_none_or(|e| e.saturating_sub(margin) > now));
        if renew {
            cache.retain(|c| c.key != key);
        } else if let Some(c) = cache.iter().find(|c| c.key == key) {
            return Ok(c.token.clone());
        }
        let token = (self.get_jwt)(req).await.map_err(Error::Token)?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(Error::Token("get_jwt returned an empty token".into()));
        }
        let exp = unverified_exp(&token);
        let secret = Secret::new(token);
        if cache.len() >= CACHE_ENTRIES {
            cache.pop_front();
        }
        cache.push_back(Cached {
            key,
            token: secret.clone(),
            exp,
        });
        Ok(secret)
    }
}

/// What the auth layer needs to know about a call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallCtx<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: Option<&'a Value>,
    pub jwt_params: Option<&'a Value>,
    pub optional: bool,
}

/// The credential headers for one attempt, and the token they carry (to renew it).
pub(crate) struct Credential {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub token: Option<Secret>,
}

fn header_value(v: &str) -> Result<HeaderValue, Error> {
    let mut h = HeaderValue::from_str(v).map_err(|_| {
        Error::Config("a credential contains characters not allowed in a header".into())
    })?;
    h.set_sensitive(true);
    Ok(h)
}

fn bearer(token: &Secret) -> Result<(HeaderName, HeaderValue), Error> {
    Ok((
        AUTHORIZATION,
        header_value(&format!("Bearer {}", token.expose()))?,
    ))
}

fn user_id(id: &str) -> Result<(HeaderName, HeaderValue), Error> {
    Ok((HeaderName::from_static("x-user-id"), header_value(id)?))
}

impl Auth {
    pub(crate) async fn credential(
        &self,
        ctx: &CallCtx<'_>,
        now: i64,
        stale: Option<&Secret>,
    ) -> Result<Credential, Error> {
        match self {
            Auth::ApiKey { key, header } => {
                let h = match header {
                    KeyHeader::XApiKey => (
                        HeaderName::from_static("x-api-key"),
                        header_value(key.expose())?,
                    ),
                    KeyHeader::Bearer => bearer(key)?,
                };
                Ok(Credential {
                    headers: vec![h],
                    token: None,
                })
            }
            Auth::Jwt(j) if ctx.optional => Ok(Credential {
                headers: vec![user_id(&j.subscription_id)?],
                token: None,
            }),
            Auth::Jwt(j) => {
                let token = j.token(ctx, now, stale.is_some()).await?;
                Ok(Credential {
                    headers: vec![bearer(&token)?],
                    token: Some(token),
                })
            }
            Auth::SubscriptionId(id) if ctx.optional => Ok(Credential {
                headers: vec![user_id(id)?],
                token: None,
            }),
            Auth::SubscriptionId(_) => Err(Error::Config(format!(
                "{} {} needs a secret credential: a subscription id alone only lists models, \
                 polls operations and reads /v1/me (use Auth::Jwt or Auth::ApiKey)",
                ctx.method, ctx.path
            ))),
            Auth::OAuth(session) => {
                let token = match stale {
                    Some(stale) => session.renew(now, stale).await?,
                    None => session.access_token_at(now).await?,
                };
                Ok(Credential {
                    headers: vec![bearer(&token)?],
                    token: Some(token),
                })
            }
        }
    }

    /// Whether a `401 AUTH_TOKEN_EXPIRED` for this credential can be cured by a new token.
    pub(crate) fn renewable(&self, cred: &Credential) -> bool {
        matches!(self, Auth::Jwt(_) | Auth::OAuth(_)) && cred.token.is_some()
    }
}
