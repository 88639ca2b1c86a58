//! Tollgate's integration tests: API scenarios against a real gateway on 127.0.0.1:0, a fake
//! OpenAI-compatible upstream on a real socket, and a fresh database per test (SQLite, and
//! PostgreSQL when `TOLLGATE_TEST_DATABASE_URL` is set).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::print_stdout
)]

#[allow(dead_code)]
mod helpers;

mod alerts;
mod app_jwt;
mod audit;
mod console;
mod console_admin;
mod console_support;
mod cors;
mod edges;
mod errors;
mod faults;
mod file_modes;
mod fuzz_replay;
mod keys;
mod layers;
mod limits;
mod operations;
mod ops;
mod proxy;
mod push;
mod quotas;
mod redis;
mod routes;
mod sdk_vectors;
mod signup;
mod ssrf;
#[allow(dead_code)]
mod subs;
mod subscriptions;
mod usage;
mod users;

// Privilege escalation: the credential ceiling, platform routes, owners.
mod escalation;

// Identity (issue 3).
mod forged_tokens;
mod identity;
mod oauth_flow;
#[allow(dead_code)]
mod oauth_support;
mod vectors;
