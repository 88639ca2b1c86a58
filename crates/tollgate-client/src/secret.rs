//! A string that must not be printed: API keys, tokens, refresh tokens, client secrets, HS256
//! secrets and private keys are held in [`Secret`], whose `Debug` prints `***`.

use std::fmt;

/// A secret string. `Debug` never shows it; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The plaintext, for sending or storing it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("tgk_supersecret");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "tgk_supersecret");
    }
}
