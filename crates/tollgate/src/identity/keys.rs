//! Platform JWT signing keys (SPEC §2.2): generated on first start (RS256 by default, ES256
//! selectable), private keys stored only AES-256-GCM encrypted, public keys served as a JWKS.
//!
//! The key-encryption key comes from `auth.signing_key_secret` / `TOLLGATE_SIGNING_KEY_SECRET`
//! (SHA-256 of the configured string) or, when none is configured, from a random 256-bit key kept
//! in `<data_dir>/signing.key` (mode 0600; single-instance deployments only — several instances
//! sharing a database must share the configured secret).
//!
//! Rotation (`tollgate signing-keys rotate`) adds a new signing key and retires the previous one:
//! a retired key signs nothing more but stays in the JWKS until every token it signed has
//! expired (`retired_at + access_token_ttl + leeway`). Instances pick up a new signing key within
//! a minute and reload public keys on an unknown `kid` (at most once a second).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::ApiError;
use crate::store::audit::{Actor, RequestMeta};
use crate::store::identity::{self as idstore, SigningKeyRow};
use crate::store::{Store, StoreError};
use crate::util::now_ms;
use tollgate_core::audit::Action;

/// Audit chain for events that belong to no tenant (signing keys).
pub const PLATFORM_CHAIN: &str = "platform";

/// Extra seconds a retired key stays published after its last token expired (clock skew).
const RETIRE_MARGIN_SECONDS: u64 = 300;
/// How long an instance keeps its signing key before re-reading the current one.
const SIGNER_REFRESH: Duration = Duration::from_secs(60);
/// Minimum time between two public-key reloads triggered by an unknown `kid`.
const VERIFIER_RELOAD_MIN: Duration = Duration::from_secs(1);

/// The 256-bit key that encrypts signing keys at rest. `Debug` prints nothing secret.
pub struct KeyEncryptionKey([u8; 32]);

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryptionKey(***)")
    }
}

impl KeyEncryptionKey {
    /// From the configured secret, or the `<data_dir>/signing.key` file (created if missing).
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        if let Some(secret) = cfg
            .auth
            .signing_key_secret
            .as_ref()
            .filter(|s| !s.is_empty())
        {
            let digest = Sha256::digest(secret.expose().as_bytes());
            let mut k = [0u8; 32];
            k.copy_from_slice(&digest);
            return Ok(Self(k));
        }
        Self::from_file(&cfg.data_dir.join("signing.key"))
    }

    fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        use std::io::Write;
        if let Some(dir) = path.parent() {
            crate::util::create_private_dir(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut f) => {
                let mut k = [0u8; 32];
                aws_lc_rs::rand::fill(&mut k)
                    .map_err(|_| anyhow::anyhow!("no randomness for the signing key"))?;
                f.write_all(hex::encode(k).as_bytes())?;
                f.sync_all()?;
                tracing::info!(path = %path.display(), "created the signing-key encryption key");
                Ok(Self(k))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(path)?.permissions().mode();
                    if mode & 0o077 != 0 {
                        tracing::warn!(path = %path.display(), "signing.key was readable by others; setting mode 0600");
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                    }
                }
                let text = std::fs::read_to_string(path)?;
                let bytes = hex::decode(text.trim())
                    .map_err(|_| anyhow::anyhow!("{} is not a hex key", path.display()))?;
                let k: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("{} must hold 32 bytes", path.display()))?;
                Ok(Self(k))
            }
            Err(e) => Err(anyhow::anyhow!("cannot create {}: {e}", path.display())),
        }
    }

    /// Seals a private key with `crypto::SecretBox` (AES-256-GCM), bound to `kid` as associated
    /// data.
    pub fn seal(&self, kid: &str, plaintext: &[u8]) -> anyhow::Result<String> {
        crate::crypto::SecretBox::new(&self.0)?.seal(plaintext, kid)
    }

    pub fn open(&self, kid: &str, sealed: &str) -> anyhow::Result<Vec<u8>> {
        crate::crypto::SecretBox::new(&self.0)?
            .open(sealed, kid)
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot decrypt signing key {kid}: wrong signing_key_secret or signing.key"
                )
            })
    }
}

/// The signing algorithm of platform JWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigAlg {
    Rs256,
    Es256,
}

impl SigAlg {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
    pub fn jwt_alg(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }
}

enum SignerKey {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(sig::EcdsaKeyPair),
}

/// The current signing key, decrypted in memory only. `Debug` shows the kid.
pub struct Signer {
    pub kid: String,
    pub alg: SigAlg,
    key: SignerKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Signer {
    fn from_pkcs8(kid: String, alg: SigAlg, pkcs8: &[u8]) -> anyhow::Result<Self> {
        let key = match alg {
            SigAlg::Rs256 => SignerKey::Rsa(
                aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8)
                    .map_err(|e| anyhow::anyhow!("bad RSA signing key: {e}"))?,
            ),
            SigAlg::Es256 => SignerKey::Ec(
                sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(|e| anyhow::anyhow!("bad EC signing key: {e}"))?,
            ),
        };
        Ok(Self { kid, alg, key })
    }

    /// Signs `claims` as a compact JWS with header `{alg, typ: "at+jwt", kid}`.
    pub fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let header = json!({"alg": self.alg.as_str(), "typ": "at+jwt", "kid": self.kid});
        let mut msg = URL_SAFE_NO_PAD.encode(header.to_string());
        msg.push('.');
        msg.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let rng = SystemRandom::new();
        let signature = match &self.key {
            SignerKey::Rsa(kp) => {
                let mut out = vec![0u8; kp.public_modulus_len()];
                kp.sign(&sig::RSA_PKCS1_SHA256, &rng, msg.as_bytes(), &mut out)
                    .map_err(|_| ApiError::internal("RSA signing failed"))?;
                out
            }
            SignerKey::Ec(kp) => kp
                .sign(&rng, msg.as_bytes())
                .map_err(|_| ApiError::internal("ECDSA signing failed"))?
                .as_ref()
                .to_vec(),
        };
        msg.push('.');
        msg.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(msg)
    }

    /// The public JWK of this key.
    fn public_jwk(&self) -> Value {
        match &self.key {
            SignerKey::Rsa(kp) => {
                let pk = kp.public_key();
                json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                    "n": URL_SAFE_NO_PAD.encode(pk.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(pk.exponent().big_endian_without_leading_zero()),
                })
            }
            SignerKey::Ec(kp) => {
                let point = kp.public_key().as_ref();
                let (x, y) = point
                    .get(1..)
                    .unwrap_or_default()
                    .split_at(32.min(point.len().saturating_sub(1)));
                json!({
                    "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
                })
            }
        }
    }
}

/// A generated key: the signer and its encrypted row.
fn generate(alg: SigAlg, kek: &KeyEncryptionKey) -> anyhow::Result<(Signer, SigningKeyRow)> {
    let kid = format!(
        "{}-{}",
        alg.as_str().to_lowercase(),
        crate::util::random_base62(16)
    );
    let pkcs8 = match alg {
        SigAlg::Rs256 => aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?
            .as_der()
            .map_err(|_| anyhow::anyhow!("RSA key encoding failed"))?
            .as_ref()
            .to_vec(),
        SigAlg::Es256 => sig::EcdsaKeyPair::generate_pkcs8(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .map_err(|_| anyhow::anyhow!("EC key generation failed"))?
        .as_ref()
        .to_vec(),
    };
    let signer = Signer::from_pkcs8(kid.clone(), alg, &pkcs8)?;
    let row = SigningKeyRow {
        kid: kid.clone(),
        alg: alg.as_str().to_string(),
        public_jwk: signer.public_jwk().to_string(),
        private_enc: kek.seal(&kid, &pkcs8)?,
        created_at: now_ms(),
        retired_at: None,
        expires_at: None,
    };
    Ok((signer, row))
}

/// A public key that verifies platform JWTs: one key, one algorithm.
pub struct VerifyKey {
    pub kid: String,
    pub alg: Algorithm,
    pub key: DecodingKey,
    pub jwk: Value,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Builds a verifying key from a public JWK (ours, or an external IdP's). The algorithm is the
/// JWK's `alg`, or inferred from its type; it is the only algorithm this key ever accepts.
pub fn verify_key_from_jwk(jwk: &Value) -> Option<VerifyKey> {
    let kid = jwk.get("kid")?.as_str()?.to_string();
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    if s("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let (alg, key) = match s("kty")? {
        "RSA" => {
            let alg = match s("alg").unwrap_or("RS256") {
                "RS256" => Algorithm::RS256,
                "RS384" => Algorithm::RS384,
                "RS512" => Algorithm::RS512,
                "PS256" => Algorithm::PS256,
                "PS384" => Algorithm::PS384,
                "PS512" => Algorithm::PS512,
                _ => return None,
            };
            (
                alg,
                DecodingKey::from_rsa_components(s("n")?, s("e")?).ok()?,
            )
        }
        "EC" => {
            let alg = match (s("crv")?, s("alg")) {
                ("P-256", None | Some("ES256")) => Algorithm::ES256,
                ("P-384", None | Some("ES384")) => Algorithm::ES384,
                _ => return None,
            };
            (alg, DecodingKey::from_ec_components(s("x")?, s("y")?).ok()?)
        }
        "OKP" => {
            if s("crv")? != "Ed25519" || s("alg").is_some_and(|a| a != "EdDSA") {
                return None;
            }
            (
                Algorithm::EdDSA,
                DecodingKey::from_ed_components(s("x")?).ok()?,
            )
        }
        _ => return None,
    };
    Some(VerifyKey {
        kid,
        alg,
        key,
        jwk: jwk.clone(),
    })
}

#[derive(Default)]
struct VerifierSet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    loaded_at: Option<Instant>,
}

/// Signing and verification keys of this instance.
#[derive(Default)]
pub struct KeyRing {
    kek: OnceLock<KeyEncryptionKey>,
    verifiers: RwLock<VerifierSet>,
    signer: tokio::sync::Mutex<Option<(Arc<Signer>, Instant)>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

impl KeyRing {
    fn kek(&self, cfg: &Config) -> Result<&KeyEncryptionKey, ApiError> {
        if let Some(k) = self.kek.get() {
            return Ok(k);
        }
        let k = KeyEncryptionKey::from_config(cfg).map_err(ApiError::internal)?;
        Ok(self.kek.get_or_init(|| k))
    }

    /// Makes sure a signing key exists (first start) and loads it. Called when the app starts.
    /// Never fatal: an instance that cannot decrypt the current key (another instance's
    /// `signing.key`, a changed `signing_key_secret`) still verifies tokens with the published
    /// public keys, logs the problem loudly, and answers `server_error` when asked to issue one.
    pub async fn ensure(&self, store: &Store, cfg: &Config) -> anyhow::Result<()> {
        if let Err(e) = self.signer(store, cfg).await {
            tracing::error!(
                error = %e.message,
                "cannot load the platform signing key: this instance verifies tokens but cannot \
                 issue them; configure the same auth.signing_key_secret on every instance, or \
                 run `tollgate signing-keys rotate`"
            );
        }
        self.reload_verifiers(store.pool()).await?;
        Ok(())
    }

    /// The current signing key (generated if the store has none).
    pub async fn signer(&self, store: &Store, cfg: &Config) -> Result<Arc<Signer>, ApiError> {
        let mut slot = self.signer.lock().await;
        if let Some((s, at)) = slot.as_ref()
            && at.elapsed() < SIGNER_REFRESH
        {
            return Ok(s.clone());
        }
        let kek = self.kek(cfg)?;
        let current = {
            let mut conn = store.pool().acquire().await.map_err(StoreError::from)?;
            idstore::current_signing_key(&mut conn).await?
        };
        let signer = match current {
            Some(row) => Arc::new(open_row(&row, kek).map_err(ApiError::internal)?),
            None => {
                let alg = SigAlg::parse(&cfg.auth.signing_alg).unwrap_or(SigAlg::Rs256);
                Arc::new(create_key(store, kek, alg, Actor::system(), None).await?)
            }
        };
        *slot = Some((signer.clone(), Instant::now()));
        drop(slot);
        self.reload_verifiers(store.pool()).await?;
        Ok(signer)
    }

    /// The verifying key for `kid`, reloading the published keys once if it is unknown.
    pub async fn verifier(
        &self,
        pool: &sqlx::AnyPool,
        kid: &str,
    ) -> Result<Option<Arc<VerifyKey>>, StoreError> {
        let stale = {
            let set = self.verifiers.read().map_err(|_| poisoned())?;
            if let Some(k) = set.by_kid.get(kid) {
                return Ok(Some(k.clone()));
            }
            set.loaded_at
                .is_none_or(|t| t.elapsed() >= VERIFIER_RELOAD_MIN)
        };
        if !stale {
            return Ok(None);
        }
        self.reload_verifiers(pool).await?;
        let set = self.verifiers.read().map_err(|_| poisoned())?;
        Ok(set.by_kid.get(kid).cloned())
    }

    async fn reload_verifiers(&self, pool: &sqlx::AnyPool) -> Result<(), StoreError> {
        let rows = idstore::live_signing_keys(pool, now_ms()).await?;
        let mut by_kid = HashMap::new();
        for row in rows {
            let jwk: Value = serde_json::from_str(&row.public_jwk).unwrap_or(Value::Null);
            if let Some(k) = verify_key_from_jwk(&jwk) {
                by_kid.insert(row.kid.clone(), Arc::new(k));
            }
        }
        let mut set = self.verifiers.write().map_err(|_| poisoned())?;
        set.by_kid = by_kid;
        set.loaded_at = Some(Instant::now());
        Ok(())
    }

    /// The JWKS document: every published public key (current and retired-but-live).
    pub async fn jwks(&self, pool: &sqlx::AnyPool) -> Result<Value, StoreError> {
        let rows = idstore::live_signing_keys(pool, now_ms()).await?;
        let keys: Vec<Value> = rows
            .iter()
            .filter_map(|r| serde_json::from_str(&r.public_jwk).ok())
            .collect();
        Ok(json!({ "keys": keys }))
    }

    /// Forgets the cached signer (after a rotation on this instance).
    pub async fn forget_signer(&self) {
        *self.signer.lock().await = None;
    }
}

fn poisoned() -> StoreError {
    StoreError::Other("key ring lock poisoned".into())
}

fn open_row(row: &SigningKeyRow, kek: &KeyEncryptionKey) -> anyhow::Result<Signer> {
    let alg = SigAlg::parse(&row.alg).ok_or_else(|| anyhow::anyhow!("unknown alg {}", row.alg))?;
    let pkcs8 = kek.open(&row.kid, &row.private_enc)?;
    Signer::from_pkcs8(row.kid.clone(), alg, &pkcs8)
}

/// Generates and stores a new signing key; with `retire_after`, retires the others (rotation)
/// so that they leave the JWKS `retire_after` from now. Audited on the platform chain.
async fn create_key(
    store: &Store,
    kek: &KeyEncryptionKey,
    alg: SigAlg,
    actor: Actor,
    retire_after: Option<Duration>,
) -> Result<Signer, ApiError> {
    let (signer, row) = tokio::task::spawn_blocking({
        let kek = KeyEncryptionKey(kek.0);
        move || generate(alg, &kek)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let meta = RequestMeta::default();
    let mut unit = crate::service::Unit::begin(store, &meta).await?;
    if retire_after.is_none()
        && let Some(existing) = idstore::current_signing_key(unit.conn()).await?
    {
        // Another instance generated the first key meanwhile: use it.
        drop(unit);
        return open_row(&existing, kek).map_err(ApiError::internal);
    }
    idstore::insert_signing_key(unit.conn(), &row).await?;
    let mut retired = Vec::new();
    if let Some(after) = retire_after {
        let now = now_ms();
        let until = now.saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 2));
        retired = idstore::retire_signing_keys(unit.conn(), &row.kid, now, until).await?;
    }
    let action = if retire_after.is_some() {
        Action::SigningKeyRotated
    } else {
        Action::SigningKeyCreated
    };
    let event = unit
        .event(PLATFORM_CHAIN, actor, action)
        .target("signing_key", row.kid.clone())
        .details(json!({"alg": row.alg, "retired": retired}));
    unit.audit(event).await?;
    unit.commit_offline().await?;
    tracing::info!(kid = %row.kid, alg = %row.alg, "new platform signing key");
    Ok(signer)
}

/// `tollgate signing-keys rotate`: a new current key; the previous ones stay published until
/// the tokens they signed have expired. Returns the new kid.
pub async fn rotate(store: &Store, cfg: &Config, alg: Option<SigAlg>) -> anyhow::Result<String> {
    let kek = KeyEncryptionKey::from_config(cfg)?;
    let alg = alg
        .or_else(|| SigAlg::parse(&cfg.auth.signing_alg))
        .unwrap_or(SigAlg::Rs256);
    let overlap = Duration::from_secs(cfg.auth.access_token_ttl_seconds + RETIRE_MARGIN_SECONDS);
    let signer = create_key(store, &kek, alg, Actor::operator(), Some(overlap))
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(signer.kid.clone())
}

/// Lists the published keys (CLI): kid, alg, created, retired, expires. No key material.
pub async fn list(store: &Store) -> anyhow::Result<Vec<Value>> {
    let rows = idstore::live_signing_keys(store.pool(), now_ms()).await?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({"kid": r.kid, "alg": r.alg, "created_at": crate::util::rfc3339(r.created_at),
                "retired_at": r.retired_at.map(crate::util::rfc3339),
                "expires_at": r.expires_at.map(crate::util::rfc3339)})
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_round_trip_and_bind_the_kid() {
        let kek = KeyEncryptionKey([7u8; 32]);
        let sealed = kek.seal("kid-1", b"private bytes").unwrap();
        assert!(!sealed.contains("private"));
        assert_eq!(kek.open("kid-1", &sealed).unwrap(), b"private bytes");
        assert!(kek.open("kid-2", &sealed).is_err(), "aad binds the kid");
        assert!(KeyEncryptionKey([8u8; 32]).open("kid-1", &sealed).is_err());
        assert!(!format!("{kek:?}").contains('7'));
    }

    #[test]
    fn generated_keys_sign_tokens_their_jwk_verifies() {
        for alg in [SigAlg::Rs256, SigAlg::Es256] {
            let kek = KeyEncryptionKey([1u8; 32]);
            let (signer, row) = generate(alg, &kek).unwrap();
            assert!(!row.private_enc.is_empty());
            let reopened = open_row(&row, &kek).unwrap();
            let token = reopened
                .sign(&json!({"sub": "x", "exp": 4_000_000_000u64}))
                .unwrap();
            let jwk: Value = serde_json::from_str(&row.public_jwk).unwrap();
            assert!(jwk.get("d").is_none(), "no private part in the JWK");
            let vk = verify_key_from_jwk(&jwk).unwrap();
            assert_eq!(vk.alg, alg.jwt_alg());
            let mut v = jsonwebtoken::Validation::new(vk.alg);
            v.validate_aud = false;
            let data = jsonwebtoken::decode::<Value>(&token, &vk.key, &v).unwrap();
            assert_eq!(data.claims["sub"], "x");
            assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(data.header.kid.as_deref(), Some(signer.kid.as_str()));
        }
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("signing.key");
        let a = KeyEncryptionKey::from_file(&path).unwrap();
        let b = KeyEncryptionKey::from_file(&path).unwrap();
        assert_eq!(a.0, b.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
