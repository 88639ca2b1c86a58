//! Request binding for app JWTs (SPEC §2.4): a token can pin values in the request body by JSON
//! Pointer (`bind`), or pin their SHA-256 (`bind_sha256`, for large inputs). Checked by the
//! handler against the actual body; any miss is `403 AUTH_BINDING_MISMATCH` naming the pointer.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorCode};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Binding {
    /// JSON Pointer → the exact JSON value required there.
    pub exact: Vec<(String, Value)>,
    /// JSON Pointer → lowercase hex SHA-256 of the value (UTF-8 bytes of a string, else the
    /// compact JSON serialisation).
    pub sha256: Vec<(String, String)>,
}

/// The hash `bind_sha256` compares against.
pub fn value_sha256(v: &Value) -> String {
    let digest = match v {
        Value::String(s) => Sha256::digest(s.as_bytes()),
        other => Sha256::digest(other.to_string().as_bytes()),
    };
    hex::encode(digest)
}

fn mismatch(pointer: &str, what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AuthBindingMismatch,
        format!("The request does not match the token's binding at {pointer:?}: {what}"),
    )
    .with_param(pointer.to_string())
}

impl Binding {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.sha256.is_empty()
    }

    /// Checks the body against every bound pointer.
    pub fn check(&self, body: &Value) -> Result<(), ApiError> {
        for (pointer, expected) in &self.exact {
            match body.pointer(pointer) {
                None => return Err(mismatch(pointer, "the value is missing")),
                Some(actual) if actual != expected => {
                    return Err(mismatch(pointer, "the value differs"));
                }
                Some(_) => {}
            }
        }
        for (pointer, expected) in &self.sha256 {
            match body.pointer(pointer) {
                None => return Err(mismatch(pointer, "the value is missing")),
                Some(actual) if !value_sha256(actual).eq_ignore_ascii_case(expected) => {
                    return Err(mismatch(pointer, "the value's SHA-256 differs"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exact_and_hashed_bindings() {
        let body = json!({"model": "gpt-4o-mini", "max_tokens": 256, "sku_id": "A-123", "image": "aGVsbG8="});
        let b = Binding {
            exact: vec![
                ("/model".into(), json!("gpt-4o-mini")),
                ("/max_tokens".into(), json!(256)),
            ],
            sha256: vec![("/image".into(), value_sha256(&json!("aGVsbG8=")))],
        };
        assert!(b.check(&body).is_ok());
        let mut other = body.clone();
        other["max_tokens"] = json!(4096);
        let e = b.check(&other).unwrap_err();
        assert_eq!(e.code, ErrorCode::AuthBindingMismatch);
        assert_eq!(e.param.as_deref(), Some("/max_tokens"));
        let mut other = body.clone();
        other["image"] = json!("b3RoZXI=");
        assert_eq!(
            b.check(&other).unwrap_err().param.as_deref(),
            Some("/image")
        );
        let missing = json!({"model": "gpt-4o-mini"});
        assert_eq!(
            b.check(&missing).unwrap_err().param.as_deref(),
            Some("/max_tokens")
        );
        // Hash of a non-string value is over its compact JSON.
        assert_eq!(
            value_sha256(&json!({"a": 1})),
            hex::encode(Sha256::digest(b"{\"a\":1}"))
        );
    }

    #[test]
    fn the_hashed_form_of_a_number_is_canonical() {
        // Found by fuzzing: without exact float parsing, 762537e033 read as a neighbour of
        // 7.62537e38 and serialised as 7.625369999999999e+38, whose text reads as yet another
        // number; the hash of the same value then depended on how often it was re-serialised.
        for text in [
            "762537e033",
            "7.62537e38",
            "0.1",
            "1e-320",
            "2.2250738585072011e-308",
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            let again: Value = serde_json::from_str(&v.to_string()).unwrap();
            assert_eq!(v, again, "{text}");
            assert_eq!(value_sha256(&v), value_sha256(&again), "{text}");
        }
        let v: Value = serde_json::from_str("762537e033").unwrap();
        assert_eq!(v.to_string(), "7.62537e+38");
        let b = Binding {
            exact: vec![],
            sha256: vec![("/x".into(), hex::encode(Sha256::digest(b"7.62537e+38")))],
        };
        assert!(
            b.check(&serde_json::from_str(r#"{"x": 762537e033}"#).unwrap())
                .is_ok()
        );
    }
}
