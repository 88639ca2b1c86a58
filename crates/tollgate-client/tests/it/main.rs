//! The client against a real gateway (built from a `Config` on 127.0.0.1:0, a fake upstream on a
//! real socket, a fresh SQLite file per test), for every call and auth mode.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::print_stdout
)]

#[allow(dead_code)]
mod helpers;

mod calls;
mod jwt;
mod layering;
mod limits;
mod oauth;
mod stream;
mod vectors;
