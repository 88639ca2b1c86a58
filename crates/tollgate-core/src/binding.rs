//! Request binding for app JWTs (SPEC §2.4): a token can pin values in the request body by JSON
//! Pointer (`bind`), or pin their SHA-256 (`bind_sha256`, for large inputs). Checked by the
//! handler against the actual body; any miss is a [`BindingMismatch`] naming the pointer (the
//! gateway answers it with `403 AUTH_BINDING_MISMATCH`).
//!
//! The one place in this crate whose public API holds `serde_json::Value`: a binding *is* JSON
//! values at JSON Pointers, compared with the parsed body, and the canonical form `bind_sha256`
//! hashes is serde_json's compact serialisation of that value.

use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// Where and how a body missed a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingMismatch {
    /// The JSON Pointer that did not match.
    pub pointer: String,
    /// "the value is missing", "the value differs", "the value's SHA-256 differs".
    pub what: &'static str,
}

impl std::fmt::Display for BindingMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "The request does not match the token's binding at {:?}: {}",
            self.pointer, self.what
        )
    }
}

fn mismatch(pointer: &str, what: &'static str) -> BindingMismatch {
    BindingMismatch {
        pointer: pointer.to_string(),
        what,
    }
}

impl Binding {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.sha256.is_empty()
    }

    /// Checks the body against every bound pointer.
    pub fn check(&self, body: &Value) -> Result<(), BindingMismatch> {
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
