//! Outgoing email (verification links, password resets): SMTP through lettre when
//! `email.smtp_url` is set, otherwise one `.eml` file per message in `<data_dir>/outbox/`
//! (mode 0600: the messages carry one-time tokens).

use std::path::PathBuf;

use lettre::message::Body;
use lettre::message::Mailbox;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::Config;
use crate::error::ApiError;

pub const DEFAULT_FROM: &str = "Tollgate <no-reply@tollgate.local>";

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(PathBuf),
}

pub struct Mailer {
    from: Mailbox,
    transport: Transport,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SMTP URL holds credentials: never printed.
        f.debug_struct("Mailer")
            .field(
                "transport",
                &match &self.transport {
                    Transport::Smtp(_) => "smtp",
                    Transport::Outbox(_) => "outbox",
                },
            )
            .finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let from: Mailbox = cfg
            .email
            .from
            .as_deref()
            .unwrap_or(DEFAULT_FROM)
            .parse()
            .map_err(|e| anyhow::anyhow!("email.from is not an address: {e}"))?;
        let transport = if cfg.email.smtp_url.is_empty() {
            Transport::Outbox(cfg.data_dir.join("outbox"))
        } else {
            Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(cfg.email.smtp_url.expose())
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "email.smtp_url is invalid: {}",
                            crate::store::redact_url(&e.to_string())
                        )
                    })?
                    .build(),
            )
        };
        Ok(Self { from, transport })
    }

    /// Sends a plain-text message.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), ApiError> {
        let to: Mailbox = to
            .parse()
            .map_err(|_| ApiError::validation("email", "email is not a valid address"))?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(plain_body(body))
            .map_err(ApiError::internal)?;
        match &self.transport {
            Transport::Smtp(t) => t.send(msg).await.map(|_| ()).map_err(|e| {
                ApiError::internal(format!(
                    "SMTP: {}",
                    crate::store::redact_url(&e.to_string())
                ))
            }),
            Transport::Outbox(dir) => write_eml(dir, &msg.formatted()).await,
        }
    }
}

/// A plain-text body, sent `7bit` when it is ASCII with lines of at most 998 characters (RFC 5322
/// §2.1.1), as every message of the gateway is: a link longer than quoted-printable's 76
/// columns then stays whole, and an `.eml` of the outbox can be read and its link followed as it
/// is. Anything else is left to lettre's choice of encoding.
fn plain_body(text: String) -> Body {
    let fits = text.is_ascii()
        && !text.bytes().any(|b| b == 0 || b == b'\r')
        && text.split('\n').all(|line| line.len() <= 998);
    if fits {
        Body::dangerous_pre_encoded(
            text.replace('\n', "\r\n").into_bytes(),
            ContentTransferEncoding::SevenBit,
        )
    } else {
        Body::new(text)
    }
}

async fn write_eml(dir: &std::path::Path, bytes: &[u8]) -> Result<(), ApiError> {
    use tokio::io::AsyncWriteExt;
    let owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || crate::util::create_private_dir(&owned))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let name = format!(
        "{}-{}.eml",
        crate::util::now_ms(),
        crate::util::random_base62(8)
    );
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp).await.map_err(ApiError::internal)?;
    f.write_all(bytes).await.map_err(ApiError::internal)?;
    f.sync_all().await.map_err(ApiError::internal)?;
    drop(f);
    tokio::fs::rename(&tmp, dir.join(&name))
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(file = %name, "email written to the outbox");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_link_stays_whole_in_a_7bit_body() {
        let link = format!(
            "https://gw.example.com/console/verify?token={}",
            "a".repeat(43)
        );
        let body = plain_body(format!("Open this link:\n\n{link}\n"));
        assert_eq!(body.encoding(), ContentTransferEncoding::SevenBit);
        let text = String::from_utf8(body.into_vec()).unwrap();
        assert!(text.contains(&link), "{text}");
        assert_eq!(text, format!("Open this link:\r\n\r\n{link}\r\n"));
        let other = plain_body("Grüße\n".into());
        assert_ne!(other.encoding(), ContentTransferEncoding::SevenBit);
    }
}
