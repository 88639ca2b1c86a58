//! A client for the Tollgate AI gateway, and app-JWT minting for customers' backends.
//!
//! ```no_run
//! # async fn run() -> Result<(), tollgate_client::Error> {
//! use futures_util::StreamExt;
//! use tollgate_client::{Auth, ChatRequest, Client, Message};
//!
//! let client = Client::new("http://127.0.0.1:8080", Auth::api_key("tgk_…"))?;
//! let answer = client
//!     .chat(&ChatRequest::new("mock-chat", vec![Message::user("Hello")]))
//!     .await?;
//! println!("{}", answer.text().unwrap_or_default());
//!
//! let mut stream = client
//!     .chat_stream(&ChatRequest::new("mock-chat", vec![Message::user("Hi")]).include_usage())
//!     .await?;
//! while let Some(chunk) = stream.next().await {
//!     let chunk = chunk?; // a cut stream (AUTH_REVOKED, …) ends with a typed error
//!     print!("{}", chunk.delta_text().unwrap_or_default());
//! }
//! # Ok(()) }
//! ```
//!
//! Auth modes ([`Auth`]): an API key (`X-API-Key` or Bearer), app JWTs from an async `get_jwt`
//! callback plus the subscription id for optional-auth calls, the subscription id alone, and
//! platform tokens from the OAuth helpers ([`oauth`]). `429 RATE_LIMITED` is retried after its
//! `Retry-After` within a [`RetryPolicy`]; `429 QUOTA_EXCEEDED` never is. Errors carry the
//! gateway's code, param, message, status and request id ([`ApiError`]).
//!
//! This crate depends on no server framework and no database driver.

pub mod auth;
mod client;
pub mod error;
pub mod mint;
pub mod oauth;
mod secret;
pub mod sse;
pub mod types;
mod util;

pub use auth::{Auth, JwtAuth, JwtParams, JwtRequest, KeyHeader};
pub use client::{Client, ClientBuilder, RequestOptions, RetryEvent, RetryPolicy, WaitOptions};
pub use error::{ApiError, BoxError, Code, Error, OAuthError};
pub use secret::Secret;
pub use sse::ChatStream;
pub use types::*;
