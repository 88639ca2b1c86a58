//! Secrets at rest: AES-256-GCM (aws-lc-rs) with one deployment key.
//!
//! Some secrets must be recoverable (an HS256 app-JWT secret is needed to verify tokens), so they
//! cannot be hashed like API keys. They are sealed with a 256-bit key that comes from
//! `secret_key` / `TOLLGATE_SECRET_KEY` (43 base64url characters or 64 hex digits), or, when that is
//! not set, from a random key kept in a `0600` file under `data_dir` (created on first use). Every
//! instance of a deployment must see the same key (same setting, or a shared `data_dir`).
//!
//! Sealed format: `v1.` + base64url(nonce ‖ ciphertext ‖ tag). The associated data binds a sealed
//! value to its purpose and row (e.g. the credential id), so ciphertexts cannot be swapped.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "v1.";

/// Fills `buf` from the system CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> anyhow::Result<()> {
    aws_lc_rs::rand::fill(buf).map_err(|_| anyhow::anyhow!("the system random generator failed"))
}

/// Parses a 256-bit key given as 64 hex digits or 43 base64url characters.
pub fn parse_key(s: &str) -> anyhow::Result<[u8; 32]> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s).map_err(|_| anyhow::anyhow!("invalid hex"))?
    } else {
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| anyhow::anyhow!("the secret key must be 64 hex digits or base64url"))?
    };
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| anyhow::anyhow!("the secret key must be exactly 256 bits"))
}

/// Seals and opens secrets with the deployment key.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> anyhow::Result<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| anyhow::anyhow!("invalid AES-256-GCM key"))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Loads the key file, creating it (random, mode 0600) when it does not exist.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::new(
                &parse_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                random_bytes(&mut key)?;
                write_private(path, &URL_SAFE_NO_PAD.encode(key))?;
                // Another instance sharing the directory may have won the race: use whatever is
                // on disk now.
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                Self::new(&parse_key(&text)?)
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Encrypts `plaintext`; `aad` must be given again to open it.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&in_out);
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Decrypts a value made by [`SecretBox::seal`] with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> anyhow::Result<Vec<u8>> {
        let body = sealed
            .strip_prefix(PREFIX)
            .ok_or_else(|| anyhow::anyhow!("unknown sealed-secret format"))?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| anyhow::anyhow!("sealed secret is not base64url"))?;
        if raw.len() < NONCE_LEN + 16 {
            anyhow::bail!("sealed secret is truncated");
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut in_out = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut in_out)
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot decrypt a sealed secret (wrong secret key for this store, or tampered data)"
                )
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        crate::util::create_private_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => f
            .write_all(contents.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot create {}: {e}", path.display())),
    }
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// A [`SecretBox`] resolved on first use from a configured key or a key file.
pub struct LazySecretBox {
    configured: Option<[u8; 32]>,
    file: PathBuf,
    cell: OnceLock<SecretBox>,
}

impl std::fmt::Debug for LazySecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySecretBox")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl LazySecretBox {
    /// `configured` (if any) is parsed now, so a malformed key fails at start-up.
    pub fn new(configured: Option<&str>, file: PathBuf) -> anyhow::Result<Self> {
        let configured = configured
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_key(s).map_err(|e| anyhow::anyhow!("secret_key: {e}")))
            .transpose()?;
        Ok(Self {
            configured,
            file,
            cell: OnceLock::new(),
        })
    }

    pub fn get(&self) -> anyhow::Result<&SecretBox> {
        if let Some(b) = self.cell.get() {
            return Ok(b);
        }
        let b = match &self.configured {
            Some(k) => SecretBox::new(k)?,
            None => SecretBox::from_file(&self.file)?,
        };
        Ok(self.cell.get_or_init(|| b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let b = SecretBox::new(&[7u8; 32]).unwrap();
        let s = b.seal(b"top secret", "cred_1").unwrap();
        assert!(s.starts_with("v1.") && !s.contains("top secret"));
        assert_eq!(b.open(&s, "cred_1").unwrap(), b"top secret");
        assert!(b.open(&s, "cred_2").is_err());
        let other = SecretBox::new(&[8u8; 32]).unwrap();
        assert!(other.open(&s, "cred_1").is_err());
        // Two seals of one value differ (random nonce).
        assert_ne!(s, b.seal(b"top secret", "cred_1").unwrap());
    }

    #[test]
    fn key_parsing() {
        assert!(parse_key(&"ab".repeat(32)).is_ok());
        assert!(parse_key(&URL_SAFE_NO_PAD.encode([1u8; 32])).is_ok());
        assert!(parse_key("short").is_err());
        assert!(parse_key(&URL_SAFE_NO_PAD.encode([1u8; 16])).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("credentials.key");
        let a = SecretBox::from_file(&path).unwrap();
        let sealed = a.seal(b"x", "y").unwrap();
        let b = SecretBox::from_file(&path).unwrap();
        assert_eq!(b.open(&sealed, "y").unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
