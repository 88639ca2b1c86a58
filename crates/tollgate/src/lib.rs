//! Tollgate: a self-hosted AI API gateway whose centre is authentication and access control.
//!
//! `main.rs` only parses the command line; everything else — building the app from a
//! [`config::Config`], serving it, the CLI commands — lives here so tests can drive it on port 0.

pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod console;
pub mod cors;
pub mod crypto;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod netguard;
pub mod ops;
pub mod passwords;
pub mod proxy;
pub mod push;
pub mod routes;
pub mod server;
pub mod service;
pub mod subscriptions;
pub mod usage;
pub mod util;
pub mod wire;

/// The store is its own crate; `crate::store` names it.
pub use tollgate_store as store;
