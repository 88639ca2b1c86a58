//! Minting request-bound app JWTs on a customer's backend (SPEC §2.4), and the canonical hashing
//! the gateway applies to `bind_sha256`.
//!
//! ```no_run
//! use serde_json::json;
//! use tollgate_client::mint::{AppJwt, SigningKey, mint_app_jwt};
//!
//! let key = SigningKey::hs256("kV9…the secret from the credentials response");
//! let token = mint_app_jwt(
//!     &AppJwt::new("66ec1726e728c1405e5ebca2", "kid-from-the-response", "end-user-42")
//!         .bind("/model", json!("gpt-4o-mini"))
//!         .bind("/max_tokens", json!(256))
//!         .bind_sha256("/prompt", &json!("a lighthouse at dusk"))
//!         .ttl(300),
//!     &key,
//! )?;
//! # Ok::<(), tollgate_client::mint::MintError>(())
//! ```
//!
//! # What `bind_sha256` hashes
//!
//! The gateway parses the request body, takes the value at the pointer and hashes:
//! - for a string, its UTF-8 bytes (no quotes, escapes resolved);
//! - for anything else, its compact JSON as the gateway re-serialises the *parsed* value: no
//!   whitespace; object keys sorted by their UTF-8 bytes (= by code point; duplicates: the last
//!   wins); strings escaped only for `"`, `\` and control characters below U+0020 (`\b \f \n \r
//!   \t`, others `\u00XX` in lower case), everything else — `/`, DEL, U+2028, non-ASCII — written
//!   as is; integers in `-2^63 ..= 2^64-1` in decimal; every other number (a literal with a
//!   fraction or exponent, or an integer out of that range) as a double in its shortest
//!   round-trip form: `d.ddd` with at least one fractional digit (`1.0`, `1000.0`) when its
//!   decimal exponent is in `-5 ..= 15`, else `d[.ddd]e±X` (`1e+16`, `1.5e-7`); `-0.0` keeps its
//!   sign.
//!
//! [`canonical_json`] writes exactly that for a [`serde_json::Value`], so a value parsed from the
//! JSON text the client sends hashes like the gateway's. The rules are pinned by the shared
//! vectors in `sdk/test-vectors/app-jwt.json`, checked by the gateway's tests and by every helper.
//! One limit: for number literals with many significant digits or a large exponent (e.g.
//! `1.25e25`) the gateway's JSON parser may round to a neighbouring double; bind such numbers with
//! `bind` (exact) or send them as strings.

use std::fmt;

use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

use crate::secret::Secret;

/// A failure to mint: a bad key, or claims the gateway would refuse anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintError(pub String);

impl fmt::Display for MintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot mint the app JWT: {}", self.0)
    }
}

impl std::error::Error for MintError {}

fn err(m: impl Into<String>) -> MintError {
    MintError(m.into())
}

/// The signing algorithms a subscription credential can pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "HS256" => Alg::Hs256,
            "RS256" => Alg::Rs256,
            "ES256" => Alg::Es256,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }
}

/// The key an app JWT is signed with. `Debug` never prints key material.
pub enum SigningKey {
    /// The HS256 secret string from the credentials response, used as is (its UTF-8 bytes are
    /// the HMAC key; it is not base64-decoded).
    Hs256(Secret),
    Rs256(RsaKeyPair),
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, ***)", self.alg().as_str())
    }
}

impl SigningKey {
    pub fn hs256(secret: impl Into<String>) -> SigningKey {
        SigningKey::Hs256(Secret::new(secret))
    }

    /// The HS256 secret, or a private key in PEM: PKCS#8 (`PRIVATE KEY`) for every algorithm,
    /// also PKCS#1 (`RSA PRIVATE KEY`) for RS256 and SEC1 (`EC PRIVATE KEY`) for ES256.
    pub fn new(alg: Alg, secret_or_private_key: &str) -> Result<SigningKey, MintError> {
        match alg {
            Alg::Hs256 => {
                if secret_or_private_key.is_empty() {
                    return Err(err("the HS256 secret is empty"));
                }
                if secret_or_private_key.contains("-----BEGIN") {
                    return Err(err(
                        "HS256 takes the secret string, not a PEM key (use RS256, ES256 or EdDSA)",
                    ));
                }
                Ok(SigningKey::hs256(secret_or_private_key))
            }
            _ => SigningKey::from_pem(alg, secret_or_private_key),
        }
    }

    pub fn from_pem(alg: Alg, pem: &str) -> Result<SigningKey, MintError> {
        let (label, der) = pem_decode(pem)?;
        if label.contains("PUBLIC") || label.contains("CERTIFICATE") {
            return Err(err(
                "this is a public key or certificate: sign with the private key",
            ));
        }
        SigningKey::from_der(alg, &der)
    }

    /// A private key in DER (PKCS#8, or PKCS#1 / SEC1 as for [`SigningKey::from_pem`]).
    pub fn from_der(alg: Alg, der: &[u8]) -> Result<SigningKey, MintError> {
        match alg {
            Alg::Hs256 => Err(err("HS256 takes the secret string, not a DER key")),
            Alg::Rs256 => RsaKeyPair::from_pkcs8(der)
                .or_else(|_| RsaKeyPair::from_der(der))
                .map(SigningKey::Rs256)
                .map_err(|e| err(format!("not an RSA private key ({e})"))),
            Alg::Es256 => {
                EcdsaKeyPair::from_private_key_der(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map(SigningKey::Es256)
                    .map_err(|e| err(format!("not a P-256 private key ({e})")))
            }
            Alg::EdDsa => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map(SigningKey::EdDsa)
                .map_err(|e| err(format!("not an Ed25519 PKCS#8 private key ({e})"))),
        }
    }

    pub fn alg(&self) -> Alg {
        match self {
            SigningKey::Hs256(_) => Alg::Hs256,
            SigningKey::Rs256(_) => Alg::Rs256,
            SigningKey::Es256(_) => Alg::Es256,
            SigningKey::EdDsa(_) => Alg::EdDsa,
        }
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, MintError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match self {
            SigningKey::Hs256(secret) => {
                let key = aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA256,
                    secret.expose().as_bytes(),
                );
                Ok(aws_lc_rs::hmac::sign(&key, input).as_ref().to_vec())
            }
            SigningKey::Rs256(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut sig)
                    .map_err(|_| err("RSA signing failed"))?;
                Ok(sig)
            }
            SigningKey::Es256(kp) => kp
                .sign(&rng, input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| err("ECDSA signing failed")),
            SigningKey::EdDsa(kp) => Ok(kp.sign(input).as_ref().to_vec()),
        }
    }
}

fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), MintError> {
    let pem = pem.trim();
    let rest = pem
        .strip_prefix("-----BEGIN ")
        .ok_or_else(|| err("expected a PEM private key (-----BEGIN PRIVATE KEY-----)"))?;
    let (label, rest) = rest
        .split_once("-----")
        .ok_or_else(|| err("malformed PEM header"))?;
    let end = format!("-----END {label}-----");
    let body = rest
        .split_once(end.as_str())
        .map(|(b, _)| b)
        .ok_or_else(|| err("PEM without its END line"))?;
    if body.contains(':') {
        return Err(err(
            "encrypted PEM keys are not supported; decrypt it first",
        ));
    }
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|_| err("the PEM body is not base64"))?;
    Ok((label.to_string(), der))
}

/// The claims of one app JWT. `iss` is the subscription id; `iat` is now unless set.
#[derive(Debug, Clone, PartialEq)]
pub struct AppJwt {
    pub subscription_id: String,
    pub kid: String,
    /// The end user (accounting only; grants nothing).
    pub sub: String,
    /// Lifetime in seconds (`exp - iat`); at most the subscription's maximum (default 3600).
    pub ttl: u64,
    /// JSON Pointer → the exact value required in the request body.
    pub bind: Map<String, Value>,
    /// JSON Pointer → lowercase hex SHA-256 of the value there (see the module docs).
    pub bind_sha256: Map<String, Value>,
    /// Needed when the subscription requires single-use tokens ([`random_jti`]).
    pub jti: Option<String>,
    /// If set, it must be the gateway's public URL.
    pub aud: Option<String>,
    /// Issued-at (seconds since the epoch); `None` = now.
    pub iat: Option<i64>,
}

impl AppJwt {
    pub fn new(
        subscription_id: impl Into<String>,
        kid: impl Into<String>,
        sub: impl Into<String>,
    ) -> Self {
        AppJwt {
            subscription_id: subscription_id.into(),
            kid: kid.into(),
            sub: sub.into(),
            ttl: 300,
            bind: Map::new(),
            bind_sha256: Map::new(),
            jti: None,
            aud: None,
            iat: None,
        }
    }

    /// Requires exactly `value` at `pointer` in the request body.
    pub fn bind(mut self, pointer: impl Into<String>, value: Value) -> Self {
        self.bind.insert(pointer.into(), value);
        self
    }

    /// Requires a value at `pointer` whose canonical SHA-256 equals that of `value`.
    pub fn bind_sha256(mut self, pointer: impl Into<String>, value: &Value) -> Self {
        self.bind_sha256
            .insert(pointer.into(), Value::String(bind_sha256_hex(value)));
        self
    }

    /// Same as [`AppJwt::bind_sha256`] with a digest computed elsewhere (64 hex digits).
    pub fn bind_sha256_digest(
        mut self,
        pointer: impl Into<String>,
        hex: impl Into<String>,
    ) -> Self {
        self.bind_sha256.insert(
            pointer.into(),
            Value::String(hex.into().to_ascii_lowercase()),
        );
        self
    }

    pub fn ttl(mut self, seconds: u64) -> Self {
        self.ttl = seconds;
        self
    }

    pub fn jti(mut self, jti: impl Into<String>) -> Self {
        self.jti = Some(jti.into());
        self
    }

    pub fn aud(mut self, aud: impl Into<String>) -> Self {
        self.aud = Some(aud.into());
        self
    }

    pub fn issued_at(mut self, iat: i64) -> Self {
        self.iat = Some(iat);
        self
    }

    /// The payload as it will be signed.
    pub fn claims(&self) -> Result<Value, MintError> {
        if !is_subscription_id(&self.subscription_id) {
            return Err(err(
                "subscription_id must be the subscription's id (24 lowercase hex characters)",
            ));
        }
        if self.kid.is_empty() {
            return Err(err("kid is required (from the credentials response)"));
        }
        if self.sub.is_empty() || self.sub.len() > 256 {
            return Err(err("sub (the end user) must be 1 to 256 bytes"));
        }
        if !(1..=86_400).contains(&self.ttl) {
            return Err(err(
                "ttl must be 1 to 86400 seconds (and at most the subscription's maximum)",
            ));
        }
        for p in self.bind.keys().chain(self.bind_sha256.keys()) {
            if !valid_pointer(p) {
                return Err(err(format!(
                    "{p:?} is not a JSON Pointer (\"\" or starting with \"/\", at most 512 bytes)"
                )));
            }
        }
        for (p, d) in &self.bind_sha256 {
            let ok = d
                .as_str()
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err(err(format!("bind_sha256 {p:?} is not a hex SHA-256")));
            }
        }
        let iat = self.iat.unwrap_or_else(crate::util::unix_now);
        let mut c = json!({
            "iss": self.subscription_id,
            "sub": self.sub,
            "iat": iat,
            "exp": iat.saturating_add(self.ttl as i64),
        });
        if let Some(m) = c.as_object_mut() {
            if !self.bind.is_empty() {
                m.insert("bind".into(), Value::Object(self.bind.clone()));
            }
            if !self.bind_sha256.is_empty() {
                m.insert(
                    "bind_sha256".into(),
                    Value::Object(self.bind_sha256.clone()),
                );
            }
            if let Some(j) = &self.jti {
                m.insert("jti".into(), Value::String(j.clone()));
            }
            if let Some(a) = &self.aud {
                m.insert("aud".into(), Value::String(a.clone()));
            }
        }
        Ok(c)
    }
}

fn is_subscription_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_pointer(p: &str) -> bool {
    p.is_empty() || (p.starts_with('/') && p.len() <= 512)
}

/// Signs the app JWT: header `{"alg", "kid", "typ": "JWT"}`, the claims of [`AppJwt::claims`].
pub fn mint_app_jwt(claims: &AppJwt, key: &SigningKey) -> Result<String, MintError> {
    let payload = claims.claims()?;
    let header = json!({"alg": key.alg().as_str(), "kid": claims.kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let sig = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// A random `jti` (128 bits, base64url).
pub fn random_jti() -> Result<String, MintError> {
    crate::util::random_urlsafe(16).ok_or_else(|| err("the system random generator failed"))
}

/// The value `bind_sha256` maps a pointer to: lowercase hex SHA-256 of a string's UTF-8 bytes,
/// or of [`canonical_json`] for any other value.
pub fn bind_sha256_hex(value: &Value) -> String {
    match value {
        Value::String(s) => crate::util::sha256_hex(s.as_bytes()),
        other => crate::util::sha256_hex(canonical_json(other).as_bytes()),
    }
}

/// The compact JSON the gateway hashes (see the module docs). Independent of serde_json's
/// `preserve_order` feature: keys are always sorted here.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The payload of a JWT, without verifying anything (to read `exp`).
pub fn unverified_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `exp` of a JWT (seconds since the epoch), without verifying anything.
pub fn unverified_exp(token: &str) -> Option<i64> {
    let c = unverified_claims(token)?;
    let exp = c.get("exp")?;
    exp.as_i64()
        .or_else(|| exp.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_matches_serde_json_for_parsed_values() {
        for text in [
            r#"{"b":1,"a":[1.0,-0,2e0,"x\u0001\n\"\\/é😀\u2028"],"é":null,"😀":true,"\uffff":false}"#,
            "1e16",
            "1E3",
            "-9223372036854775809",
            "18446744073709551616",
            "0.00001",
            "1e-6",
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(canonical_json(&v), v.to_string(), "{text}");
        }
    }

    #[test]
    fn claims_are_checked_before_signing() {
        let key = SigningKey::hs256("secret");
        let ok = AppJwt::new("66ec1726e728c1405e5ebca2", "k1", "u1");
        assert!(mint_app_jwt(&ok, &key).is_ok());
        assert!(
            mint_app_jwt(
                &AppJwt {
                    subscription_id: "nope".into(),
                    ..ok.clone()
                },
                &key
            )
            .is_err()
        );
        assert!(mint_app_jwt(&ok.clone().ttl(0), &key).is_err());
        assert!(mint_app_jwt(&ok.clone().bind("model", json!("m")), &key).is_err());
        assert!(mint_app_jwt(&ok.clone().bind_sha256_digest("/p", "xyz"), &key).is_err());
        assert!(SigningKey::new(Alg::Hs256, "-----BEGIN PRIVATE KEY-----").is_err());
        assert!(
            SigningKey::new(
                Alg::EdDsa,
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
            )
            .is_err()
        );
        assert_eq!(format!("{key:?}"), "SigningKey(HS256, ***)");
    }

    #[test]
    fn exp_is_read_without_verifying() {
        let t = mint_app_jwt(
            &AppJwt::new("66ec1726e728c1405e5ebca2", "k1", "u1")
                .issued_at(1000)
                .ttl(60),
            &SigningKey::hs256("s"),
        )
        .unwrap();
        assert_eq!(unverified_exp(&t), Some(1060));
        assert_eq!(unverified_exp("not-a-jwt"), None);
    }
}
