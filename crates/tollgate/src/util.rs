//! Small shared helpers, re-exported from the lower crates: ids, clocks and time formatting
//! (`tollgate_core`), owner-only folders and files (`tollgate_store::files`).

pub use tollgate_core::ids::{Fx, FxHasher, new_id, random_base62, request_id};
pub use tollgate_core::time::{RFC3339_MAX_MS, RFC3339_MIN_MS, now_ms, parse_rfc3339, rfc3339};
pub use tollgate_store::files::{
    create_private_dir, create_private_file, mode_wider_than, warn_if_wider,
};

/// Serialises an optional epoch-ms timestamp as RFC 3339 or null.
pub fn opt_rfc3339(ms: Option<i64>) -> serde_json::Value {
    ms.map(|m| serde_json::Value::String(rfc3339(m)))
        .unwrap_or(serde_json::Value::Null)
}
