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
mod audit;
mod errors;
mod keys;
mod limits;
mod ops;
mod proxy;
mod quotas;
mod redis;
mod usage;
mod users;
