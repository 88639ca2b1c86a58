//! Fuzz harness bodies: one `pub fn(&[u8])` per target of `fuzz/` (cargo-fuzz), each a thin
//! wrapper around the gateway's own parser for untrusted input. The same functions replay the
//! checked-in corpus and crash inputs in `cargo test` (`tests/it/fuzz_replay.rs`), so CI guards
//! them without a fuzzer.
//!
//! A harness panics — the fuzzer's "crash" — when the parser panics, or when a cheap invariant
//! does not hold (round trips, chunking independence, idempotent normalisation). Inputs are
//! decoded from plain bytes (no `arbitrary`), so a corpus file is also a readable test case.
//! Nothing here does I/O, and every loop is bounded by the input's length.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

/// The gateway's issuer in the harnesses (what `public_url` is in a test app).
const PUBLIC_URL: &str = "http://127.0.0.1:8080";

/// A harness body: panics on a finding.
pub type Target = fn(&[u8]);

/// Every target: its name (the `fuzz/fuzz_targets/<name>.rs` binary, and the folder of its
/// corpus and crash inputs) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("auth_extract", auth_extract),
    ("apikey", apikey),
    ("jwt_classify", jwt_classify),
    ("jws_claims", jws_claims),
    ("binding", binding),
    ("sse", sse),
    ("admission", admission),
    ("upstream_http", upstream_http),
    ("config_toml", config_toml),
    ("public_key", public_key),
    ("redirect_uri", redirect_uri),
    ("oauth_form", oauth_form),
    ("scopes", scopes),
    ("rfc3339", rfc3339),
];

// ---- input decoding ----------------------------------------------------------------------------

fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// `a \0 b` → `(a, b)`; no NUL → `(data, [])`.
fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(0, data) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The first byte as flags, and the rest.
fn flags(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((f, rest)) => (*f, rest),
        None => (0, &[]),
    }
}

/// Cuts `stream` into chunks whose lengths come from `plan` (cycled; each 1..=64, or the
/// whole rest for a 0 byte). No plan: one chunk.
fn chunks<'a>(plan: &[u8], stream: &'a [u8]) -> Vec<&'a [u8]> {
    if plan.is_empty() {
        return vec![stream];
    }
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let len = match plan[i % plan.len()] {
            0 => rest.len(),
            b => usize::from(b % 64) + 1,
        }
        .min(rest.len());
        let (head, tail) = rest.split_at(len);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// The input as a chunk plan (its first byte says how many of the following bytes form the
/// plan, up to 15) and the rest.
fn plan_and_rest(data: &[u8]) -> (&[u8], &[u8]) {
    let (n, rest) = flags(data);
    rest.split_at(usize::from(n % 16).min(rest.len()))
}

/// JSON Pointer (RFC 6901) escaping of one reference token.
fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Up to `limit` (pointer, value) pairs of `v`, the root included.
fn walk<'a>(v: &'a Value, prefix: String, limit: usize, out: &mut Vec<(String, &'a Value)>) {
    if out.len() >= limit {
        return;
    }
    out.push((prefix.clone(), v));
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                walk(child, format!("{prefix}/{}", pointer_token(k)), limit, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                walk(child, format!("{prefix}/{i}"), limit, out);
            }
        }
        _ => {}
    }
}

// ---- credentials -------------------------------------------------------------------------------

/// `auth::extract` over an arbitrary header map. Flags: bit 0 = optional route, bits 1–2 = key
/// prefix. Then one header per line: its first byte picks the name (`authorization`,
/// `x-api-key`, `x-user-id`, `prefer`, or `name:value` from the line), the rest is the value;
/// a name may repeat.
pub fn auth_extract(data: &[u8]) {
    use crate::auth::{AuthLevel, RawCredential, extract, jwt};
    use tollgate_core::apikey;
    let (f, rest) = flags(data);
    let level = if f & 1 == 0 {
        AuthLevel::Required
    } else {
        AuthLevel::Optional
    };
    let prefix = ["tgk", "sgk", "a1", "tollgate"][usize::from(f >> 1) % 4];
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n').take(64) {
        let Some((&sel, line)) = line.split_first() else {
            continue;
        };
        let (name, value) = match sel % 5 {
            0 => (HeaderName::from_static("authorization"), line),
            1 => (HeaderName::from_static("x-api-key"), line),
            2 => (HeaderName::from_static("x-user-id"), line),
            3 => (HeaderName::from_static("prefer"), line),
            _ => {
                let (n, v) = match memchr::memchr(b':', line) {
                    Some(i) => (&line[..i], &line[i + 1..]),
                    None => (line, &[][..]),
                };
                let Ok(n) = HeaderName::from_bytes(n) else {
                    continue;
                };
                (n, v)
            }
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let _ = crate::subscriptions::operations::wants_async(&headers);
    let values = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    };
    let first = extract(&headers, level, prefix);
    let again = extract(&headers, level, prefix);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "extract is not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.code, b.code, "extract is not deterministic"),
        _ => panic!("extract is not deterministic"),
    }
    let has_credential_header = ["authorization", "x-api-key", "x-user-id"]
        .iter()
        .any(|n| headers.contains_key(*n));
    match first {
        Ok(None) => {}
        Ok(Some(cred)) => {
            assert!(has_credential_header, "a credential out of nothing");
            match cred {
                RawCredential::ApiKey(k) => {
                    assert!(!k.is_empty() && k == k.trim(), "untrimmed key {k:?}");
                    let from_bearer = values("authorization").iter().any(|v| v.contains(k));
                    let from_header = values("x-api-key").iter().any(|v| v.trim() == k);
                    assert!(from_bearer || from_header, "a key from nowhere: {k:?}");
                    if !from_header {
                        assert!(apikey::has_prefix(k, prefix), "{k:?} lacks {prefix}_");
                    }
                    if let Some(hash) = apikey::verify_format(k, prefix) {
                        assert_eq!(hash, apikey::KeyHash::of(k));
                    }
                }
                RawCredential::Jwt(t) => {
                    let segments: Vec<&str> = t.split('.').collect();
                    assert_eq!(segments.len(), 3, "{t:?}");
                    assert!(segments.iter().all(|s| {
                        !s.is_empty()
                            && s.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    }));
                    let _ = jwt::classify(t, PUBLIC_URL);
                }
                RawCredential::SubscriptionId(s) => {
                    assert_eq!(level, AuthLevel::Optional, "x-user-id on a required route");
                    assert!(!s.is_empty());
                }
            }
        }
        Err(e) => assert!(
            matches!(e.code, ErrorCode::AuthInvalid | ErrorCode::AuthAmbiguous),
            "unexpected {:?}",
            e.code
        ),
    }
}

/// API-key shape and checksum (`auth::apikey`). The input is `prefix \0 candidate` (no NUL:
/// the candidate alone, checked against the usual prefixes). Also builds a key from the input's
/// bytes: it must verify, and every single-character change of it must not.
pub fn apikey(data: &[u8]) {
    use tollgate_core::apikey::{CHECKSUM_LEN, KeyHash, RANDOM_LEN, checksum, has_prefix};
    use tollgate_core::apikey::{generate, verify_format};
    let (a, b) = split_nul(data);
    let (prefixes, candidate): (Vec<Cow<'_, str>>, Cow<'_, str>) =
        if memchr::memchr(0, data).is_some() {
            (vec![text(a)], text(b))
        } else {
            (vec!["tgk".into(), "sgk".into(), "".into()], text(a))
        };
    for prefix in &prefixes {
        let verified = verify_format(&candidate, prefix);
        let shaped = has_prefix(&candidate, prefix);
        if let Some(hash) = verified {
            assert!(shaped);
            assert_eq!(hash, KeyHash::of(&candidate));
            assert_eq!(
                candidate.len(),
                prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN
            );
        }
    }
    // A key assembled from the input verifies; any single changed character does not.
    const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut random = [b'0'; RANDOM_LEN];
    for (slot, byte) in random.iter_mut().zip(data.iter()) {
        *slot = BASE62[usize::from(*byte) % 62];
    }
    let mut key = b"tgk_".to_vec();
    key.extend_from_slice(&random);
    key.extend_from_slice(&checksum(&random));
    let Ok(key) = String::from_utf8(key) else {
        panic!("a base62 key is not UTF-8");
    };
    assert_eq!(verify_format(&key, "tgk"), Some(KeyHash::of(&key)), "{key}");
    if let (Some(&at), Some(&by)) = (data.get(RANDOM_LEN), data.get(RANDOM_LEN + 1)) {
        let i = 4 + usize::from(at) % (RANDOM_LEN + CHECKSUM_LEN);
        let mut typo = key.clone().into_bytes();
        let old = typo[i];
        typo[i] = BASE62
            [(BASE62.iter().position(|&c| c == old).unwrap_or(0) + 1 + usize::from(by) % 61) % 62];
        let typo = String::from_utf8_lossy(&typo).into_owned();
        assert_eq!(verify_format(&typo, "tgk"), None, "{key} → {typo}");
    }
    if data.is_empty() {
        let k = generate("tgk");
        assert_eq!(verify_format(&k.plaintext, "tgk"), Some(k.hash));
    }
}

/// JWT segment decoding and classification: `auth::jwt::{classify, peek_claims}`, the header
/// rules of `identity::jws` and of the app-JWT verifier. Flags bit 0 set: the rest is
/// `header JSON \0 claims JSON \0 signature` and is base64url-encoded into a token (so the
/// fuzzer reaches the JSON); clear: the rest is the token text itself.
pub fn jwt_classify(data: &[u8]) {
    use crate::auth::jwt::{JwtKind, classify, is_subscription_id, peek_claims};
    use crate::identity::jws;
    let (f, rest) = flags(data);
    let token: Cow<'_, str> = if f & 1 == 1 {
        let (header, rest) = split_nul(rest);
        let (claims, sig) = split_nul(rest);
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(sig)
        )
        .into()
    } else {
        text(rest)
    };
    match classify(&token, PUBLIC_URL) {
        Ok(JwtKind::Platform) => {}
        Ok(JwtKind::App { subscription_id }) => assert!(is_subscription_id(&subscription_id)),
        Ok(JwtKind::External { issuer }) => {
            assert!(issuer != PUBLIC_URL && !is_subscription_id(&issuer));
        }
        Err(e) => assert_eq!(e.code, ErrorCode::AuthInvalid),
    }
    if let Ok(claims) = peek_claims(&token) {
        assert!(claims.is_object());
    }
    let checked = jws::check_header(&token);
    if let Ok(header) = &checked {
        let Some(obj) = header.as_object() else {
            panic!("a checked header that is not an object");
        };
        // Any `alg` string but `none` passes here; an unknown one fails at `header_alg`.
        let alg = obj.get("alg").and_then(Value::as_str);
        assert!(alg.is_some_and(|a| !a.eq_ignore_ascii_case("none")));
        assert!(!jws::FORBIDDEN_HEADERS.iter().any(|k| obj.contains_key(*k)));
        let _ = jws::header_alg(header);
    }
    // The app-JWT verifier's own header rules: what it accepts never carries a key or a key
    // location, and always names a `kid`.
    if let Ok((header, kid)) = crate::subscriptions::appjwt::check_header(&token) {
        assert!(!kid.is_empty());
        assert!(header.jku.is_none() && header.jwk.is_none() && header.x5u.is_none());
        assert!(header.x5c.is_none() && header.crit.is_none());
    }
}

/// The JWS core over validly signed tokens: `header JSON \0 claims JSON` is signed with a
/// fixed HS256 key, so the fuzzer reaches claim validation (`exp`/`nbf`/`iat` NumericDates,
/// `iss`, `aud`). Flags: bits 0–1 pin the issuer / audience, bits 2–3 the leeway.
pub fn jws_claims(data: &[u8]) {
    use crate::identity::jws;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
    const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";
    let (f, rest) = flags(data);
    let (header, claims) = split_nul(rest);
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let Ok(sig) = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    ) else {
        return;
    };
    let token = format!("{message}.{sig}");
    let key = DecodingKey::from_secret(SECRET);
    let issuer = (f & 1 == 1).then_some(PUBLIC_URL);
    let audience = (f & 2 == 2).then_some(PUBLIC_URL);
    let leeway = [0, 1, 60, 3600][usize::from(f >> 2) % 4];
    let validation = jws::validation(Algorithm::HS256, issuer, audience, leeway);
    // The signature is good, so verify_signature fails only on the header rules, and then
    // returns exactly the signed payload.
    let header_ok = jws::check_header(&token)
        .and_then(|h| jws::header_alg(&h))
        .is_ok_and(|alg| alg == Algorithm::HS256);
    match jws::verify_signature(&token, Algorithm::HS256, &key) {
        Ok(payload) => {
            assert!(header_ok);
            assert_eq!(payload, claims, "verify_signature changed the payload");
        }
        Err(e) => {
            assert!(!header_ok, "a correctly signed token failed: {}", e.message);
        }
    }
    // No algorithm confusion: the same token never passes as another algorithm.
    for other in [Algorithm::HS384, Algorithm::RS256, Algorithm::ES256] {
        assert!(jws::verify_signature(&token, other, &key).is_err());
        let v = jws::validation(other, issuer, audience, leeway);
        assert!(jws::verify(&token, other, &key, &v).is_err());
    }
    match jws::verify(&token, Algorithm::HS256, &key, &validation) {
        Ok(claims) => {
            assert!(header_ok);
            let Some(obj) = claims.as_object() else {
                panic!("verified claims that are not an object");
            };
            assert!(obj.get("exp").is_some_and(Value::is_number), "exp missing");
            for c in ["nbf", "iat"] {
                assert!(obj.get(c).is_none_or(Value::is_number), "{c} not a number");
            }
            if let Some(iss) = issuer {
                assert_eq!(obj.get("iss").and_then(Value::as_str), Some(iss));
            }
        }
        Err(e) => assert!(
            matches!(e.code, ErrorCode::AuthInvalid | ErrorCode::AuthTokenExpired),
            "unexpected {:?}",
            e.code
        ),
    }
    // The app-JWT verifier reads NumericDates itself.
    if let Ok(v) = serde_json::from_slice::<Value>(claims) {
        for c in ["exp", "nbf", "iat"] {
            let _ = crate::subscriptions::appjwt::numeric(&v, c);
        }
    }
}

/// App-JWT request binding: `claims JSON \0 body JSON`. The claims' `bind`/`bind_sha256` are
/// parsed (`subscriptions::appjwt::parse_binding`) and checked against the body
/// (`auth::binding`); and a binding of the body's own values (every pointer, exact and hashed)
/// must accept the body — JSON Pointer escaping and canonical hashing agree with themselves.
pub fn binding(data: &[u8]) {
    use tollgate_core::binding::{Binding, value_sha256};
    let (claims, body) = split_nul(data);
    let body: Option<Value> = serde_json::from_slice(body).ok();
    if let Ok(claims) = serde_json::from_slice::<Value>(claims) {
        match crate::subscriptions::appjwt::parse_binding(&claims) {
            Ok(Some(b)) => {
                assert!(!b.is_empty());
                for (p, _) in &b.exact {
                    assert!(p.is_empty() || p.starts_with('/'));
                }
                for (p, h) in &b.sha256 {
                    assert!(p.is_empty() || p.starts_with('/'));
                    assert!(h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()));
                    assert_eq!(h, &h.to_ascii_lowercase());
                }
                if let Some(body) = &body
                    && let Err(e) = b.check(body).map_err(ApiError::from)
                {
                    assert_eq!(e.code, ErrorCode::AuthBindingMismatch);
                    assert!(e.param.is_some());
                }
            }
            Ok(None) => {}
            Err(e) => assert_eq!(e.code, ErrorCode::AuthInvalid),
        }
    }
    let Some(body) = body else {
        return;
    };
    let mut nodes = Vec::new();
    walk(&body, String::new(), 64, &mut nodes);
    let mut all = Binding::default();
    for (pointer, value) in nodes {
        assert_eq!(body.pointer(&pointer), Some(value), "pointer {pointer:?}");
        let hash = value_sha256(value);
        // The compact serialisation the hash is over is canonical: parsed again, the value
        // serialises (and so hashes) the same.
        match serde_json::from_str::<Value>(&value.to_string()) {
            Ok(again) => assert_eq!(value_sha256(&again), hash, "{pointer:?}: {value}"),
            Err(e) => panic!("{pointer:?}: the serialised value does not parse: {e}"),
        }
        all.exact.push((pointer.clone(), value.clone()));
        all.sha256.push((pointer, hash));
    }
    if let Err(e) = all.check(&body) {
        panic!("the body's own binding fails: {e}");
    }
}

// ---- the proxy ---------------------------------------------------------------------------------

/// Splits `stream` the simplest way: an event ends at `\n\n` or `\n\r\n`.
fn reference_events(stream: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut events = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < stream.len() {
        if stream[i] == b'\n' {
            let end = match stream.get(i + 1) {
                Some(b'\n') => Some(i + 2),
                Some(b'\r') if stream.get(i + 2) == Some(&b'\n') => Some(i + 3),
                _ => None,
            };
            if let Some(end) = end {
                events.push(&stream[start..end]);
                start = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    (events, &stream[start..])
}

/// A stream that plays frames, answering `Pending` once before each frame whose plan byte is
/// odd (and waking itself, as a real stream would).
struct Script {
    frames: std::collections::VecDeque<(bool, Bytes)>,
}

impl Stream for Script {
    type Item = Result<Bytes, ()>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.frames.front_mut() {
            None => Poll::Ready(None),
            Some((pending @ true, _)) => {
                *pending = false;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some((false, _)) => Poll::Ready(self.frames.pop_front().map(|(_, f)| Ok(f))),
        }
    }
}

/// The SSE splitter and usage extraction (`tollgate_upstream::sse`) over arbitrary bytes in arbitrary
/// chunks (see [`plan_and_rest`]). Events must concatenate to the input, match a one-shot
/// reference split whatever the chunking, and classify without panicking; reported usage must
/// be summable; `coalesce` must pass every byte once, in order.
pub fn sse(data: &[u8]) {
    use tollgate_upstream::sse::{
        EventKind, EventSplitter, ResponseEvent, TokenUsage, classify, classify_response, coalesce,
    };
    let (plan, stream) = plan_and_rest(data);
    let mut splitter = EventSplitter::default();
    let mut events: Vec<Bytes> = Vec::new();
    for (i, chunk) in chunks(plan, stream).into_iter().enumerate() {
        // Both ways in: borrowed (copied) and owned (kept without copying).
        if plan
            .get(i % plan.len().max(1))
            .is_some_and(|b| b & 0x80 != 0)
        {
            splitter.push(chunk);
        } else {
            splitter.push_bytes(Bytes::copy_from_slice(chunk));
        }
        while let Some(ev) = splitter.next_event() {
            events.push(ev);
        }
    }
    let remainder = splitter.remainder();
    assert!(splitter.remainder().is_none(), "remainder given twice");
    let (reference, rest) = reference_events(stream);
    assert_eq!(
        events.iter().map(|e| &e[..]).collect::<Vec<_>>(),
        reference,
        "events depend on the chunking"
    );
    assert_eq!(remainder.as_deref().unwrap_or_default(), rest);
    let checked = |u: TokenUsage| {
        let total = u.prompt_tokens.checked_add(u.completion_tokens);
        assert!(
            total.is_some_and(|t| i64::try_from(t).is_ok()),
            "usage that cannot be summed or stored: {u:?}"
        );
    };
    for ev in &events {
        match classify(ev) {
            EventKind::UsageOnly(u) | EventKind::Data(Some(u)) => checked(u),
            EventKind::Done | EventKind::Data(None) => {}
        }
        match classify_response(ev) {
            ResponseEvent::End(Some(u)) => checked(u),
            ResponseEvent::End(None) | ResponseEvent::Other => {}
        }
    }
    if let Ok(Some(u)) = TokenUsage::from_body(stream) {
        checked(u);
    }
    if let Some(u) = serde_json::from_slice::<Value>(stream)
        .ok()
        .and_then(|v| TokenUsage::from_json(&v))
    {
        checked(u);
    }
    // Coalescing the events (with Pending between some) keeps every byte, in order.
    let script = Script {
        frames: events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let pending = plan.get(i % plan.len().max(1)).is_some_and(|b| b & 1 == 1);
                (pending, e.clone())
            })
            .collect(),
    };
    let max = 1 + usize::from(plan.first().copied().unwrap_or(0));
    let mut joined = coalesce(script, max);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    for _ in 0..=2 * events.len() + 2 {
        match Pin::new(&mut joined).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                assert!(!frame.is_empty() || events.iter().any(Bytes::is_empty));
                out.extend_from_slice(&frame);
            }
            Poll::Ready(Some(Err(()))) => panic!("an error out of nothing"),
            Poll::Ready(None) => break,
            Poll::Pending => {}
        }
    }
    assert_eq!(out, events.concat(), "coalesce lost or reordered bytes");
}

/// The endpoint (flag bits 1–2) and `default_max_tokens` (bits 3–4) of an admission input.
fn admission_settings(f: u8) -> (crate::proxy::Endpoint, u64) {
    use crate::proxy::Endpoint;
    let endpoint =
        [Endpoint::Chat, Endpoint::Embeddings, Endpoint::Images][usize::from(f >> 1) % 3];
    (endpoint, [0, 1, 256, u64::MAX][usize::from(f >> 3) % 4])
}

/// What admission runs on a client's JSON body: parsing as the `RawJson` extractor does, the
/// model and `stream` fields, the upstream rewrite (`proxy::prepare`: model renaming,
/// `stream_options` spliced in or re-serialised), and the token estimate
/// (`limits::meter::estimate_tokens`). Flags: bit 0 renames the model upstream, bits 1–2 the endpoint,
/// bits 3–4 `default_max_tokens`. The bytes sent upstream must parse to the value the gateway
/// checked, and the estimate must cover the prompt and the completion budget.
pub fn admission(data: &[u8]) {
    use crate::proxy::{
        Endpoint, ModelRoute, Provider, ProviderBackend, prepare, request_model, request_stream,
    };
    let (f, body) = flags(data);
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    if !value.is_object() {
        return;
    }
    let (endpoint, default_max_tokens) = admission_settings(f);
    let Ok(model) = request_model(&value) else {
        return;
    };
    let route = ModelRoute {
        name: model.to_string(),
        provider: std::sync::Arc::new(Provider {
            name: "fuzz",
            backend: ProviderBackend::Mock,
        }),
        upstream_model: if f & 1 == 1 {
            format!("{model}-upstream")
        } else {
            model.to_string()
        },
    };
    let Ok(stream) = request_stream(&value, endpoint) else {
        return;
    };
    let raw = crate::http::RawJson {
        bytes: Bytes::copy_from_slice(body),
        value,
    };
    let (value, bytes, _client_wants_usage) = match prepare(raw, &route, stream) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::ValidationFailed);
            return;
        }
    };
    let Ok(sent) = serde_json::from_slice::<Value>(&bytes) else {
        panic!(
            "the upstream body is not JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    };
    assert_eq!(
        sent, value,
        "the upstream gets another body than was checked"
    );
    assert_eq!(
        value.get("model").and_then(Value::as_str),
        Some(route.upstream_model.as_str())
    );
    if stream {
        assert_eq!(value["stream_options"]["include_usage"], Value::Bool(true));
    }
    let chat = endpoint == Endpoint::Chat;
    let estimate = match crate::limits::meter::estimate_tokens(&value, chat, default_max_tokens) {
        Ok(e) => e,
        Err(e) => {
            // Out-of-range budgets are refused by name, never wrapped around.
            assert_eq!(e.code, ErrorCode::ValidationFailed);
            assert!(e.param.is_some());
            return;
        }
    };
    let (prompt, total) = (estimate.prompt, estimate.total);
    assert!(prompt >= 1 && total >= prompt, "{prompt} {total}");
    let budget = ["max_completion_tokens", "max_tokens"]
        .iter()
        .filter_map(|f| value.get(*f).and_then(Value::as_u64))
        .max()
        // A configured default above the ceiling counts as the ceiling.
        .unwrap_or(if chat {
            default_max_tokens.min(crate::limits::meter::MAX_TOKENS)
        } else {
            0
        });
    assert!(
        total >= budget,
        "estimate {total} below the budget {budget}"
    );
}

/// The upstream client's HTTP/1.1 response parsing (`tollgate_upstream::client`): the head (`parse_head`,
/// interim `1xx` answers skipped as `read_head` does) and the body framing (`decode`:
/// Content-Length, chunked, until close), fed in arbitrary chunks. The decoded body must not
/// depend on the chunking, and never exceed a Content-Length.
pub fn upstream_http(data: &[u8]) {
    use tollgate_upstream::client::{Framing, MAX_HEAD_BYTES, decode, parse_head};
    let (plan, wire) = plan_and_rest(data);

    /// Reads one answer; `None` on a protocol error, else (status, framing at the start, body,
    /// whether the body completed).
    fn read(parts: &[&[u8]]) -> Option<(u16, Framing, Vec<u8>, bool)> {
        let mut buf = BytesMut::new();
        let mut parts = parts.iter();
        let head = loop {
            let mut got = None;
            while !buf.is_empty() {
                match parse_head(&buf).ok()? {
                    Some((len, head)) => {
                        assert!(len <= buf.len());
                        bytes::Buf::advance(&mut buf, len);
                        if let Some(h) = head {
                            got = Some(h);
                            break;
                        }
                    }
                    None if buf.len() > MAX_HEAD_BYTES => return None,
                    None => break,
                }
            }
            if let Some(h) = got {
                break h;
            }
            buf.extend_from_slice(parts.next()?);
        };
        let _ = (head.content_type, head.retry_after, head.keep_alive);
        let start = head.framing;
        let mut framing = head.framing;
        let mut body = Vec::new();
        loop {
            while let Some(piece) = decode(&mut buf, &mut framing).ok()? {
                assert!(!piece.is_empty() || framing == Framing::Done);
                body.extend_from_slice(&piece);
            }
            if framing == Framing::Done {
                return Some((head.status.as_u16(), start, body, true));
            }
            match parts.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return Some((head.status.as_u16(), start, body, false)),
            }
        }
    }

    let whole = read(&[wire]);
    let cut = read(&chunks(plan, wire));
    if let Some((_, Framing::Length(n), body, _)) = &whole {
        assert!(body.len() as u64 <= *n);
    }
    if let (Some(a), Some(b)) = (&whole, &cut) {
        assert_eq!((a.0, a.1), (b.0, b.1), "the head depends on the chunking");
        if a.3 && b.3 {
            assert_eq!(a.2, b.2, "the body depends on the chunking");
        } else {
            let n = a.2.len().min(b.2.len());
            assert_eq!(a.2[..n], b.2[..n], "the body depends on the chunking");
        }
    }
}

// ---- configuration and uploaded keys ------------------------------------------------------------

/// The TOML configuration: `Config::from_toml`, then `finish` (defaults, validation), which must
/// be idempotent; then what is built from it without I/O: the deployment key and each plain-HTTP
/// provider's upstream client.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut cfg) = crate::config::Config::from_toml(text) else {
        return;
    };
    if cfg.finish().is_err() {
        return;
    }
    let once = format!("{cfg:?}");
    if let Err(e) = cfg.finish() {
        panic!("finish accepted a config it then refuses: {e}");
    }
    assert_eq!(once, format!("{cfg:?}"), "finish is not idempotent");
    assert!(!cfg.public_url.ends_with('/'));
    if let Some(key) = &cfg.secret_key {
        let _ = crate::crypto::parse_key(key.expose());
    }
    let settings = tollgate_upstream::client::Settings {
        connect_timeout: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(1),
        max_idle: 1,
        tls: None,
    };
    for p in cfg.providers.iter().take(8) {
        if p.base_url.starts_with("http:") {
            let bearer = p.api_key.as_ref().map(crate::config::Secret::expose);
            if let Ok(u) = tollgate_upstream::client::Upstream::new(&p.base_url, bearer, &settings)
            {
                assert!(u.request_target("chat/completions").starts_with('/'));
            }
        }
    }
}

/// Uploaded public keys (`subscriptions::keys::parse_public_key`, PEM or JWK). The first byte
/// picks the algorithm. An accepted key's normalised material, wrapped again as a PEM public
/// key, must parse to the same material.
pub fn public_key(data: &[u8]) {
    use crate::subscriptions::keys::{Alg, decoding_key, parse_public_key};
    let (f, rest) = flags(data);
    let alg = [Alg::Rs256, Alg::Es256, Alg::EdDsa, Alg::Hs256][usize::from(f) % 4];
    let Ok(key) = parse_public_key(alg, &text(rest)) else {
        return;
    };
    assert_ne!(alg, Alg::Hs256, "an uploaded HS256 key");
    assert!(key.format == "pem" || key.format == "jwk");
    let _ = decoding_key(alg, &key.material);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(&key.material)
    );
    match parse_public_key(alg, &pem) {
        Ok(again) => assert_eq!(again.material, key.material, "normalisation is not stable"),
        Err(e) => panic!("a normalised key no longer parses: {e}"),
    }
}

// ---- identity ----------------------------------------------------------------------------------

/// Redirect-URI validation (`identity::clients::validate_redirect_uri`) and the redirect built
/// from an accepted one (`identity::login::with_params`). The input is `uri \0 code \0 state`.
/// An accepted URI keeps its scheme and host, the parameters read back exactly, and the result
/// is always a valid `Location` header value.
pub fn redirect_uri(data: &[u8]) {
    let (uri, rest) = split_nul(data);
    let (code, state) = split_nul(rest);
    let uri = text(uri);
    let Ok(()) = crate::identity::clients::validate_redirect_uri(&uri) else {
        return;
    };
    let Ok(parsed) = url::Url::parse(&uri) else {
        panic!("an accepted redirect URI does not parse: {uri:?}");
    };
    assert!(parsed.fragment().is_none());
    let (code, state) = (text(code), text(state));
    let params = [("code", &*code), ("state", &*state), ("iss", PUBLIC_URL)];
    let location = crate::identity::login::with_params(&uri, &params);
    let Ok(out) = url::Url::parse(&location) else {
        panic!("the redirect does not parse: {location:?}");
    };
    assert_eq!(out.scheme(), parsed.scheme());
    assert_eq!(out.host_str(), parsed.host_str());
    assert_eq!(out.port(), parsed.port());
    let pairs: Vec<(String, String)> = out.query_pairs().into_owned().collect();
    let tail: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    assert!(pairs.ends_with(&tail), "{location:?} lost its parameters");
    assert!(
        HeaderValue::from_str(&location).is_ok(),
        "the redirect is not a valid Location: {location:?}"
    );
}

/// Token-endpoint request parsing (`identity::oauth`): the form body (a repeated parameter is
/// an error; an accepted form round-trips through re-encoding), HTTP Basic client credentials,
/// the PKCE helpers, and the login page's cookie reading. The input is `form \0 authorization
/// \0 cookie`.
pub fn oauth_form(data: &[u8]) {
    use crate::identity::oauth::{
        basic_credentials, parse_form, s256_challenge, valid_challenge, valid_verifier,
    };
    let (form, rest) = split_nul(data);
    let (authorization, cookie) = split_nul(rest);
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    if let Ok(v) = HeaderValue::from_bytes(authorization) {
        headers.insert(axum::http::header::AUTHORIZATION, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(cookie) {
        headers.insert(axum::http::header::COOKIE, v);
    }
    if let Ok(map) = parse_form(&headers, form) {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &map {
            ser.append_pair(k, v);
        }
        let again = ser.finish();
        match parse_form(&headers, again.as_bytes()) {
            Ok(m) => assert_eq!(m, map, "the form does not round-trip"),
            Err(e) => panic!("a re-encoded form is refused: {}", e.description),
        }
        for v in map.values() {
            if valid_verifier(v) {
                assert!(valid_challenge(&s256_challenge(v)));
            }
        }
    }
    if let Err(e) = basic_credentials(&headers) {
        assert!(e.basic);
    }
    let _ = crate::identity::login::cookie_value(&headers, "tg_csrf");
    let mut plain = HeaderMap::new();
    plain.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    assert!(parse_form(&plain, form).is_err());
}

/// Permission names (`auth::permissions`) and OAuth scopes (`identity::tokens::
/// scope_permissions`): what parses names itself back, and a scope narrows to a subset.
pub fn scopes(data: &[u8]) {
    use tollgate_core::permissions::{PermSet, Permission, builtin_role};
    let s = text(data);
    if let Ok(set) = PermSet::parse(s.split_whitespace()) {
        assert_eq!(PermSet::parse(set.names()), Ok(set));
        assert!(set.is_subset_of(PermSet::all()));
    }
    for name in s.split_whitespace().take(32) {
        if let Some(p) = Permission::parse(name) {
            assert_eq!(p.as_str(), name);
        }
        if let Some(role) = builtin_role(name) {
            assert!(role.is_subset_of(PermSet::all()));
        }
    }
    if let Ok(Some(set)) = crate::identity::tokens::scope_permissions(&s) {
        assert!(set.is_subset_of(PermSet::all()));
        assert!(!set.names().is_empty() || set == PermSet::EMPTY);
    }
}

/// RFC 3339 (`util::parse_rfc3339`, `util::rfc3339`): what parses formats back to the same
/// instant; and any epoch-millisecond value (the first 8 bytes) formats to text that parses
/// back to it, or to nothing.
pub fn rfc3339(data: &[u8]) {
    use crate::util::{parse_rfc3339, rfc3339};
    if let Some(ms) = parse_rfc3339(&text(data)) {
        let s = rfc3339(ms);
        assert!(!s.is_empty(), "{ms} does not format");
        assert_eq!(parse_rfc3339(&s), Some(ms), "{s}");
    }
    let mut raw = [0u8; 8];
    for (slot, b) in raw.iter_mut().zip(data) {
        *slot = *b;
    }
    let ms = i64::from_le_bytes(raw);
    let s = rfc3339(ms);
    if !s.is_empty() {
        assert_eq!(parse_rfc3339(&s), Some(ms), "{ms} → {s}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_runs_on_empty_and_tiny_inputs() {
        for (name, run) in TARGETS {
            for input in [&b""[..], b"\0", b"\x01", b"{}", b"\xff\xff\0\0"] {
                let _ = name;
                run(input);
            }
        }
    }

    #[test]
    fn chunk_plans_cover_the_input() {
        let stream = b"0123456789abcdef";
        for plan in [&b""[..], b"\x00", b"\x01", b"\x03\x05", b"\x80\xff"] {
            assert_eq!(chunks(plan, stream).concat(), stream.to_vec());
        }
        assert_eq!(chunks(b"\x01", b"abcd"), vec![&b"ab"[..], b"cd"]);
    }

    #[test]
    fn the_reference_splitter_cuts_at_blank_lines() {
        let (events, rest) = reference_events(b"a\n\nb\r\n\r\nc\n\r\nd");
        assert_eq!(events, vec![&b"a\n\n"[..], b"b\r\n\r\n", b"c\n\r\n"]);
        assert_eq!(rest, b"d");
    }
}
