//! Tollgate's shared vocabulary: the types and pure functions every other layer speaks, with no
//! I/O and no async runtime (no axum, hyper, sqlx, tokio or redis in this crate's graph).
//!
//! - [`permissions`] — `Permission`, `PermSet`, built-in roles, `Authority` and its ceilings;
//! - [`apikey`] — the API-key format, its CRC32 checksum and the SHA-256 `KeyHash`;
//! - [`limits`] — `LimitSet`, `Dim`, scopes, checks, and the GCRA/period arithmetic;
//! - [`credential`] — `CredentialType`;
//! - [`audit`] — who did it (`Actor`) and what (`Action`);
//! - [`usage`] — the metered `UsageRecord`;
//! - [`binding`] — app-JWT request binding by JSON Pointer and the canonical `bind_sha256`;
//! - [`ids`], [`time`] — object and request ids, epoch milliseconds and RFC 3339.

pub mod apikey;
pub mod audit;
pub mod binding;
pub mod credential;
pub mod ids;
pub mod limits;
pub mod permissions;
pub mod time;
pub mod usage;
