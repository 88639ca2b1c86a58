//! OAuth helpers for platform tokens (SPEC §2.2, §4.3):
//!
//! - [`PkceFlow`]: authorization code + PKCE for native apps (RFC 8252): a loopback redirect
//!   listener on `127.0.0.1`, `S256` only, `state` checked (and `iss`, RFC 9207, when the
//!   expected issuer is given), then the code exchanged at `/oauth/token`;
//! - [`OAuthSession::client_credentials`] for services (confidential clients);
//! - [`OAuthSession`]: the tokens, refreshed before they expire and once more after a
//!   `401 AUTH_TOKEN_EXPIRED`. Refresh tokens rotate on every use and the gateway revokes the whole
//!   family when a spent one is replayed, so the session always keeps the newest one and never
//!   refreshes twice at once; [`OAuthSession::on_tokens`] lets an app persist it.

use std::fmt;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::normalise_base;
use crate::error::{Error, OAuthError};
use crate::secret::Secret;
use crate::util::{random_urlsafe, sha256, unix_now};

/// Tokens of a session. `Debug` hides them.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: Secret,
    /// The newest refresh token (the previous one is spent once this one is issued).
    pub refresh_token: Option<Secret>,
    /// When the access token expires (seconds since the epoch), from `expires_in`.
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"***")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

type TokensHook = Arc<dyn Fn(&Tokens) + Send + Sync>;

/// Renew this long before `expires_at`.
const MARGIN_SECONDS: i64 = 30;

/// A signed-in session (a person through PKCE, or a service through client credentials).
/// Cloning shares it.
#[derive(Clone)]
pub struct OAuthSession {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: Option<Secret>,
    scope: Option<String>,
    client_credentials: bool,
    tokens: tokio::sync::Mutex<Tokens>,
    on_tokens: StdMutex<Option<TokensHook>>,
}

impl fmt::Debug for OAuthSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthSession")
            .field("client_id", &self.inner.client_id)
            .field("token_url", &self.inner.token_url)
            .finish_non_exhaustive()
    }
}

fn http_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(Error::Transport)
}

impl OAuthSession {
    fn new(
        http: reqwest::Client,
        base: &str,
        client_id: &str,
        client_secret: Option<Secret>,
        scope: Option<String>,
        client_credentials: bool,
        tokens: Tokens,
    ) -> Result<OAuthSession, Error> {
        let base = normalise_base(base)?;
        Ok(OAuthSession {
            inner: Arc::new(SessionInner {
                http,
                token_url: format!("{base}/oauth/token"),
                client_id: client_id.to_string(),
                client_secret,
                scope,
                client_credentials,
                tokens: tokio::sync::Mutex::new(tokens),
                on_tokens: StdMutex::new(None),
            }),
        })
    }

    /// Client credentials (a service account): fetches the first token now.
    pub async fn client_credentials(
        base_url: &str,
        client_id: &str,
        client_secret: &str,
        scope: Option<&str>,
    ) -> Result<OAuthSession, Error> {
        let empty = Tokens {
            access_token: Secret::new(""),
            refresh_token: None,
            expires_at: Some(0),
            scope: None,
        };
        let s = OAuthSession::new(
            http_client()?,
            base_url,
            client_id,
            Some(Secret::new(client_secret)),
            scope.map(str::to_string),
            true,
            empty,
        )?;
        let mut t = s.inner.tokens.lock().await;
        s.fetch(&mut t, unix_now()).await?;
        drop(t);
        Ok(s)
    }

    /// A session restored from a stored refresh token (of a public client; pass the secret for
    /// a confidential one). The first call refreshes.
    pub fn from_refresh_token(
        base_url: &str,
        client_id: &str,
        refresh_token: &str,
        client_secret: Option<&str>,
    ) -> Result<OAuthSession, Error> {
        OAuthSession::new(
            http_client()?,
            base_url,
            client_id,
            client_secret.map(Secret::new),
            None,
            false,
            Tokens {
                access_token: Secret::new(""),
                refresh_token: Some(Secret::new(refresh_token)),
                expires_at: Some(0),
                scope: None,
            },
        )
    }

    /// Called with the new tokens after every grant and refresh (to persist the newest refresh
    /// token). Runs while the session is locked: keep it short and do not call the session.
    pub fn on_tokens(self, f: impl Fn(&Tokens) + Send + Sync + 'static) -> Self {
        *self
            .inner
            .on_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(f));
        self
    }

    /// A copy of the current tokens.
    pub async fn tokens(&self) -> Tokens {
        self.inner.tokens.lock().await.clone()
    }

    /// The newest refresh token.
    pub async fn refresh_token(&self) -> Option<Secret> {
        self.inner.tokens.lock().await.refresh_token.clone()
    }

    /// A valid access token, refreshed first if it is about to expire.
    pub async fn access_token(&self) -> Result<Secret, Error> {
        self.access_token_at(unix_now()).await
    }

    /// Refreshes now (rotating the refresh token), whatever the expiry says.
    pub async fn refresh(&self) -> Result<(), Error> {
        let mut t = self.inner.tokens.lock().await;
        self.fetch(&mut t, unix_now()).await
    }

    pub(crate) async fn access_token_at(&self, now: i64) -> Result<Secret, Error> {
        let mut t = self.inner.tokens.lock().await;
        let fresh = !t.access_token.expose().is_empty()
            && t.expires_at.is_none_or(|e| e - MARGIN_SECONDS > now);
        if !fresh {
            self.fetch(&mut t, now).await?;
        }
        Ok(t.access_token.clone())
    }

    /// After `401 AUTH_TOKEN_EXPIRED` with `stale`: a new token, unless another call already
    /// replaced it.
    pub(crate) async fn renew(&self, now: i64, stale: &Secret) -> Result<Secret, Error> {
        let mut t = self.inner.tokens.lock().await;
        if t.access_token == *stale {
            self.fetch(&mut t, now).await?;
        }
        Ok(t.access_token.clone())
    }

    /// Refreshes (or, for client credentials without a refresh token, asks again) under the
    /// session lock.
    async fn fetch(&self, t: &mut Tokens, now: i64) -> Result<(), Error> {
        let s = &self.inner;
        let result = match &t.refresh_token {
            Some(rt) => {
                let form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", rt.expose().to_string()),
                ];
                match self.token_request(form).await {
                    Err(Error::OAuth(e)) if e.error == "invalid_grant" && s.client_credentials => {
                        self.client_credentials_request().await
                    }
                    other => other,
                }
            }
            None if s.client_credentials => self.client_credentials_request().await,
            None => Err(Error::OAuth(OAuthError::local(
                "login_required",
                "the session has no refresh token; sign in again",
            ))),
        };
        let res = result?;
        t.access_token = Secret::new(res.access_token);
        if let Some(rt) = res.refresh_token {
            t.refresh_token = Some(Secret::new(rt));
        }
        t.expires_at = res
            .expires_in
            .map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)));
        if res.scope.is_some() {
            t.scope = res.scope;
        }
        let hook = s
            .on_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(h) = hook {
            h(t);
        }
        Ok(())
    }

    async fn client_credentials_request(&self) -> Result<TokenResponse, Error> {
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        if let Some(scope) = &self.inner.scope {
            form.push(("scope", scope.clone()));
        }
        self.token_request(form).await
    }

    async fn token_request(
        &self,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<TokenResponse, Error> {
        let s = &self.inner;
        let mut req = s.http.post(&s.token_url);
        match &s.client_secret {
            Some(secret) => req = req.basic_auth(&s.client_id, Some(secret.expose())),
            None => form.push(("client_id", s.client_id.clone())),
        }
        token_call(req.form(&form)).await
    }
}

/// Sends a token request and reads the token or the RFC 6749 error.
async fn token_call(req: reqwest::RequestBuilder) -> Result<TokenResponse, Error> {
    let res = req.send().await?;
    let status = res.status().as_u16();
    let body = res.bytes().await?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body)
            .map_err(|e| Error::decode(format!("token response: {e}"), None));
    }
    match serde_json::from_slice::<ErrorResponse>(&body) {
        Ok(e) => Err(Error::OAuth(OAuthError {
            error: e.error,
            description: e.error_description,
            status: Some(status),
        })),
        Err(_) => Err(Error::OAuth(OAuthError {
            error: "server_error".into(),
            description: Some(format!("HTTP {status} from the token endpoint")),
            status: Some(status),
        })),
    }
}

// ---- authorization code + PKCE -------------------------------------------------------------

/// A redirect listener on the loopback interface (RFC 8252 §7.3). Bind it before registering or
/// choosing the redirect URI: [`LoopbackRedirect::uri`] is `http://127.0.0.1:<port>/callback`.
#[derive(Debug)]
pub struct LoopbackRedirect {
    listener: TcpListener,
    uri: String,
}

impl LoopbackRedirect {
    /// Listens on `127.0.0.1` on a free port.
    pub async fn bind() -> Result<LoopbackRedirect, Error> {
        Self::bind_port(0).await
    }

    /// Listens on `127.0.0.1:port` (for a client registered with a fixed loopback port).
    pub async fn bind_port(port: u16) -> Result<LoopbackRedirect, Error> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| Error::Config(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Config(format!("loopback listener: {e}")))?
            .port();
        Ok(LoopbackRedirect {
            listener,
            uri: format!("http://127.0.0.1:{port}/callback"),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Waits for the browser's request to `/callback` and answers it with `page`; other paths
    /// get `404`. Returns the callback URL.
    async fn wait(&self, page: impl Fn(&Url) -> (u16, String)) -> Result<Url, Error> {
        loop {
            let (mut sock, _) = self
                .listener
                .accept()
                .await
                .map_err(|e| Error::Config(format!("loopback listener: {e}")))?;
            let Ok(Some(target)) =
                tokio::time::timeout(Duration::from_secs(10), read_target(&mut sock)).await
            else {
                continue;
            };
            let Ok(url) = Url::parse(&format!("http://127.0.0.1{target}")) else {
                respond(&mut sock, 400, "Bad request").await;
                continue;
            };
            if url.path() != "/callback" {
                respond(&mut sock, 404, "Not found").await;
                continue;
            }
            let (status, text) = page(&url);
            respond(&mut sock, status, &text).await;
            return Ok(url);
        }
    }
}

/// Reads an HTTP request head; returns the request target of a `GET`.
async fn read_target(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next()?.split(' ');
    let (method, target) = (first.next()?, first.next()?);
    (method == "GET" && target.starts_with('/')).then(|| target.to_string())
}

async fn respond(sock: &mut TcpStream, status: u16, text: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Tollgate sign-in</title></head>\
         <body><p>{}</p></body></html>",
        text.replace('&', "&amp;").replace('<', "&lt;")
    );
    let res = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{html}",
        html.len()
    );
    let _ = sock.write_all(res.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// Authorization code + PKCE (`S256`) for a public client.
///
/// ```no_run
/// # async fn run() -> Result<(), tollgate_client::Error> {
/// use tollgate_client::oauth::{LoopbackRedirect, PkceFlow};
/// let redirect = LoopbackRedirect::bind().await?;
/// // The client must be registered with redirect.uri() as a redirect URI.
/// let flow = PkceFlow::new("http://127.0.0.1:8080", "cli_…", "openid")?.with_listener(redirect);
/// println!("Open {}", flow.authorize_url());
/// let session = flow.finish(std::time::Duration::from_secs(300)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PkceFlow {
    http: reqwest::Client,
    base: String,
    client_id: String,
    redirect_uri: String,
    listener: Option<LoopbackRedirect>,
    scope: String,
    verifier: Secret,
    state: String,
    expected_issuer: Option<String>,
}

impl PkceFlow {
    /// A flow whose redirect URI is set by [`PkceFlow::with_listener`] or
    /// [`PkceFlow::redirect_uri`].
    pub fn new(base_url: &str, client_id: &str, scope: &str) -> Result<PkceFlow, Error> {
        let rng = || Error::Config("the system random generator failed".into());
        Ok(PkceFlow {
            http: http_client()?,
            base: normalise_base(base_url)?,
            client_id: client_id.to_string(),
            redirect_uri: String::new(),
            listener: None,
            scope: scope.to_string(),
            // 32 random bytes: a 43-character verifier (RFC 7636 §4.1).
            verifier: Secret::new(random_urlsafe(32).ok_or_else(rng)?),
            state: random_urlsafe(16).ok_or_else(rng)?,
            expected_issuer: None,
        })
    }

    /// Receive the redirect on this loopback listener.
    pub fn with_listener(mut self, listener: LoopbackRedirect) -> Self {
        self.redirect_uri = listener.uri().to_string();
        self.listener = Some(listener);
        self
    }

    /// A redirect URI the app receives itself (e.g. a private-use scheme); finish with
    /// [`PkceFlow::complete`].
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uri = uri.into();
        self.listener = None;
        self
    }

    /// Check the redirect's `iss` (RFC 9207) against this issuer (the gateway's `public_url`).
    pub fn expect_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.expected_issuer = Some(issuer.into());
        self
    }

    /// The S256 challenge of this flow's verifier.
    pub fn code_challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(sha256(self.verifier.expose().as_bytes()))
    }

    pub fn state(&self) -> &str {
        &self.state
    }

    /// The URL to open in the user's browser (the gateway's hosted login page).
    pub fn authorize_url(&self) -> String {
        let mut u = match Url::parse(&format!("{}/oauth/authorize", self.base)) {
            Ok(u) => u,
            Err(_) => return String::new(),
        };
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.scope)
            .append_pair("state", &self.state)
            .append_pair("code_challenge", &self.code_challenge())
            .append_pair("code_challenge_method", "S256");
        u.to_string()
    }

    /// Waits (at most `timeout`) for the browser to come back to the loopback listener, then
    /// checks and exchanges the code.
    pub async fn finish(self, timeout: Duration) -> Result<OAuthSession, Error> {
        let Some(listener) = &self.listener else {
            return Err(Error::Config(
                "no loopback listener: use with_listener, or complete() with the callback URL"
                    .into(),
            ));
        };
        let check = |u: &Url| match self.check_callback(u) {
            Ok(_) => (
                200,
                "Signed in. You can close this window and return to the app.".to_string(),
            ),
            Err(e) => (400, format!("Sign-in failed: {e}")),
        };
        let url = tokio::time::timeout(timeout, listener.wait(check))
            .await
            .map_err(|_| Error::Timeout("waiting for the sign-in redirect".into()))??;
        self.complete(url.as_str()).await
    }

    /// Checks the callback URL (`state`, `iss`, `error`) and exchanges its code.
    pub async fn complete(&self, callback_url: &str) -> Result<OAuthSession, Error> {
        let url = Url::parse(callback_url)
            .map_err(|_| Error::OAuth(OAuthError::local("invalid_callback", "not a URL")))?;
        let code = self.check_callback(&url)?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("client_id", self.client_id.as_str()),
            ("code_verifier", self.verifier.expose()),
        ];
        let now = unix_now();
        let res = token_call(
            self.http
                .post(format!("{}/oauth/token", self.base))
                .form(&form),
        )
        .await?;
        let tokens = Tokens {
            access_token: Secret::new(res.access_token),
            refresh_token: res.refresh_token.map(Secret::new),
            expires_at: res
                .expires_in
                .map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX))),
            scope: res.scope,
        };
        OAuthSession::new(
            self.http.clone(),
            &self.base,
            &self.client_id,
            None,
            None,
            false,
            tokens,
        )
    }

    fn check_callback(&self, url: &Url) -> Result<String, Error> {
        let get = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let fail = |e: &str, d: &str| Err(Error::OAuth(OAuthError::local(e, d)));
        if get("state").as_deref() != Some(self.state.as_str()) {
            return fail(
                "state_mismatch",
                "the redirect's state is not this flow's (a forged or stale redirect)",
            );
        }
        if let Some(err) = get("error") {
            return Err(Error::OAuth(OAuthError {
                error: err,
                description: get("error_description"),
                status: None,
            }));
        }
        if let (Some(expected), Some(iss)) = (&self.expected_issuer, get("iss"))
            && expected.trim_end_matches('/') != iss.trim_end_matches('/')
        {
            return fail(
                "issuer_mismatch",
                "the redirect names another issuer (RFC 9207)",
            );
        }
        match get("code") {
            Some(c) if !c.is_empty() => Ok(c),
            _ => fail("invalid_callback", "the redirect carries no code"),
        }
    }
}
