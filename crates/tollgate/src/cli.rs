//! The command line (SPEC §9). Every flag also reads `TOLLGATE_<NAME>` from the environment.
//! Machine-readable output (JSON) goes to stdout, logs go to stderr.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::app::{AppState, Application};
use crate::config::{Config, Overrides};
use crate::store::Store;
use crate::wire::ToApi;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Self-hosted AI API gateway centred on authentication and access control"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Common {
    /// TOML configuration file.
    #[arg(long, env = "TOLLGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Database URL (sqlite://... or postgres://...).
    #[arg(
        long = "database",
        env = "TOLLGATE_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on.
        #[arg(long, env = "TOLLGATE_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// Redis URL (optional).
        #[arg(long = "redis", env = "TOLLGATE_REDIS_URL", hide_env_values = true)]
        redis_url: Option<String>,
        /// Email of the owner created on the very first start.
        #[arg(
            long,
            env = "TOLLGATE_BOOTSTRAP_EMAIL",
            default_value = "admin@tollgate.local"
        )]
        bootstrap_email: String,
    },
    /// Create the tenant and its owner if missing, and issue a new owner API key (JSON on stdout).
    Init {
        #[command(flatten)]
        common: Common,
        #[arg(long, env = "TOLLGATE_EMAIL")]
        email: String,
        #[arg(long, env = "TOLLGATE_TENANT", default_value = "default")]
        tenant: String,
        /// Read the owner's password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Manage API keys directly in the store (operator access).
    Keys {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Platform JWT signing keys (public parts only are printed).
    SigningKeys {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: SigningKeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SigningKeysCommand {
    /// Create a new signing key; the previous one stops signing and stays in the JWKS until the
    /// tokens it signed have expired. Running instances switch within a minute.
    Rotate {
        /// RS256 or ES256 (default: `auth.signing_alg`).
        #[arg(long)]
        alg: Option<String>,
    },
    /// List the published keys (kid, alg, created, retired, leaves the JWKS at).
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key for a member of a tenant (the key is printed once).
    Create {
        /// Tenant name or id.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Email of the member who owns the key.
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// Comma-separated permissions the key is narrowed to.
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// RFC 3339 expiry.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List a tenant's keys (JSON lines, never the secrets).
    List {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every tenant's hash chain; exits non-zero at the first broken link.
    Verify,
    /// Write events as JSON Lines to stdout.
    Export {
        /// Tenant id (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn load_config(common: &Common, overrides: Overrides) -> anyhow::Result<Config> {
    let overrides = Overrides {
        database_url: common.database_url.clone().or(overrides.database_url),
        ..overrides
    };
    Config::load(common.config.as_deref(), &overrides)
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn out(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// Runs a parsed command. Returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve {
            common,
            listen,
            redis_url,
            bootstrap_email,
        } => {
            let config = load_config(
                &common,
                Overrides {
                    listen,
                    redis_url,
                    database_url: None,
                },
            )?;
            init_logging(config.log_json);
            serve(config, &bootstrap_email).await?;
            Ok(0)
        }
        Command::Init {
            common,
            email,
            tenant,
            password_stdin,
        } => {
            let config = load_config(&common, Overrides::default())?;
            init_logging(config.log_json);
            let password = if password_stdin {
                let mut s = String::new();
                std::io::stdin().read_line(&mut s)?;
                Some(s.trim_end_matches(['\r', '\n']).to_string())
            } else {
                None
            };
            let store = Store::connect(config.database_url.expose()).await?;
            let res =
                crate::bootstrap::init(&store, &config.key_prefix, &email, &tenant, password).await;
            store.close().await;
            let output = res.map_err(|e| anyhow::anyhow!("{}", e.message))?;
            out(&serde_json::to_string(&output)?)?;
            Ok(0)
        }
        Command::Migrate { common } => {
            let config = load_config(&common, Overrides::default())?;
            init_logging(config.log_json);
            let store = Store::connect(config.database_url.expose()).await?;
            store.close().await;
            tracing::info!("migrations are up to date");
            Ok(0)
        }
        Command::Keys { common, command } => {
            let config = load_config(&common, Overrides::default())?;
            init_logging(config.log_json);
            let store = Store::connect(config.database_url.expose()).await?;
            let res = keys_command(&store, &config, command).await;
            store.close().await;
            res
        }
        Command::SigningKeys { common, command } => {
            let config = load_config(&common, Overrides::default())?;
            init_logging(config.log_json);
            let store = Store::connect(config.database_url.expose()).await?;
            let res = signing_keys_command(&store, &config, command).await;
            store.close().await;
            res
        }
        Command::Audit { common, command } => {
            let config = load_config(&common, Overrides::default())?;
            init_logging(config.log_json);
            let store = Store::connect(config.database_url.expose()).await?;
            let res = audit_command(&store, command).await;
            store.close().await;
            res
        }
    }
}

async fn find_tenant(
    store: &Store,
    name_or_id: &str,
) -> anyhow::Result<crate::store::tenants::Tenant> {
    use crate::store::tenants;
    if let Some(t) = tenants::get_tenant(store.pool(), name_or_id).await? {
        return Ok(t);
    }
    let mut conn = store.pool().acquire().await?;
    tenants::find_tenant_by_name(&mut conn, name_or_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant {name_or_id:?}"))
}

async fn keys_command(store: &Store, config: &Config, command: KeysCommand) -> anyhow::Result<i32> {
    use crate::api::keys;
    use crate::service::Unit;
    use crate::service::keys as keys_service;
    use crate::store::audit::{Actor, RequestMeta};
    use crate::store::tenants;
    let api = |e: crate::error::ApiError| anyhow::anyhow!("{}", e.message);
    match command {
        KeysCommand::Create {
            tenant,
            email,
            name,
            scopes,
            expires_at,
        } => {
            let tenant = find_tenant(store, &tenant).await?;
            let meta = RequestMeta::default();
            let mut unit = Unit::begin(store, &meta).await.map_err(api)?;
            let user = tenants::find_user_by_email(unit.conn(), &email).await?;
            let Some(user) = user else {
                anyhow::bail!("no user with email {email:?}")
            };
            if tenants::get_member(unit.conn(), &tenant.id, &user.id)
                .await?
                .is_none()
            {
                anyhow::bail!("{email} is not a member of tenant {}", tenant.name);
            }
            let expires_at = match expires_at {
                Some(s) => Some(
                    crate::util::parse_rfc3339(&s)
                        .ok_or_else(|| anyhow::anyhow!("--expires-at must be RFC 3339"))?,
                ),
                None => None,
            };
            if let Some(s) = &scopes {
                crate::auth::PermSet::parse(s.iter().map(String::as_str))
                    .map_err(|bad| anyhow::anyhow!("unknown permission {bad:?}"))?;
            }
            let spec = keys_service::NewKeySpec {
                tenant_id: tenant.id.clone(),
                user_id: Some(user.id.clone()),
                subscription_id: None,
                name: keys_service::validate_name(&name).map_err(api)?,
                expires_at,
                scopes,
                rate_limit: None,
                created_by: None,
            };
            let (rec, secret) =
                keys_service::create(&mut unit, &config.key_prefix, spec, Actor::operator())
                    .await
                    .map_err(api)?;
            unit.commit_offline().await.map_err(api)?;
            out(&keys::created_json(&rec, secret).to_string())?;
            Ok(0)
        }
        KeysCommand::List { tenant } => {
            let tenant = find_tenant(store, &tenant).await?;
            for k in crate::store::keys::list(store.pool(), &tenant.id, None).await? {
                out(&k.to_api().to_string())?;
            }
            Ok(0)
        }
        KeysCommand::Revoke { id } => {
            let rec = keys_service::revoke_as_operator(store, &id)
                .await
                .map_err(api)?;
            out(&rec.to_api().to_string())?;
            Ok(0)
        }
    }
}

async fn signing_keys_command(
    store: &Store,
    config: &Config,
    command: SigningKeysCommand,
) -> anyhow::Result<i32> {
    use crate::identity::keys;
    match command {
        SigningKeysCommand::Rotate { alg } => {
            let alg = match alg.as_deref() {
                None => None,
                Some(a) => Some(
                    keys::SigAlg::parse(a)
                        .ok_or_else(|| anyhow::anyhow!("--alg must be RS256 or ES256"))?,
                ),
            };
            let kid = keys::rotate(store, config, alg).await?;
            out(&json!({"status": "rotated", "kid": kid}).to_string())?;
        }
        SigningKeysCommand::List => {
            for k in keys::list(store).await? {
                out(&k.to_string())?;
            }
        }
    }
    Ok(0)
}

async fn audit_command(store: &Store, command: AuditCommand) -> anyhow::Result<i32> {
    use crate::store::audit;
    match command {
        AuditCommand::Verify => {
            match audit::verify(store.pool()).await? {
                Ok(n) => {
                    out(&json!({"status": "ok", "events_checked": n}).to_string())?;
                    Ok(0)
                }
                Err(broken) => {
                    out(&json!({"status": "broken", "tenant_id": broken.tenant_id, "seq": broken.seq,
                    "event_id": broken.event_id, "reason": broken.reason}).to_string())?;
                    tracing::error!(%broken, "audit chain broken");
                    Ok(1)
                }
            }
        }
        AuditCommand::Export { tenant } => {
            let tenants: Vec<String> = match tenant {
                Some(t) => vec![t],
                None => audit::heads(store.pool())
                    .await?
                    .into_iter()
                    .map(|h| h.0)
                    .collect(),
            };
            for t in tenants {
                let mut after = 0;
                loop {
                    let page = audit::chain_page(store.pool(), &t, after, 1000).await?;
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    for rec in &page {
                        out(&rec.to_api().to_string())?;
                    }
                }
            }
            Ok(0)
        }
    }
}

/// `tollgate serve`: bootstrap on first start, then serve until SIGINT/SIGTERM.
pub async fn serve(mut config: Config, bootstrap_email: &str) -> anyhow::Result<()> {
    // Bound first: the printed console link and every link sent by email name the real port.
    let listener = Application::bind(&mut config).await?;
    let state = AppState::new(config).await?;
    if let Some(boot) =
        crate::bootstrap::first_start(&state.store, &state.config.key_prefix, bootstrap_email)
            .await
            .map_err(|e| anyhow::anyhow!("bootstrap failed: {}", e.message))?
    {
        let link = match crate::console::session::issue_link(
            &state.store,
            &state.config.public_url,
            &boot.user_id,
        )
        .await
        {
            Ok(l) => format!(
                "\nOne-time console link (works once, for 15 minutes; it signs you in and asks for a password):\n\n    {l}\n"
            ),
            Err(e) => {
                tracing::error!(error = %e.message, "could not issue the one-time console link");
                String::new()
            }
        };
        let banner = format!(
            "\nTollgate first start: created tenant \"default\" (id {}) with owner {bootstrap_email}.\n\
             Bootstrap API key (shown once — store it now):\n\n    {}\n{link}",
            boot.tenant_id, boot.api_key
        );
        if out(&banner).is_err() {
            tracing::error!(
                "could not print the bootstrap API key; issue another with `tollgate init`"
            );
        }
    }
    let app = Application::on(listener, state.clone())?;
    tracing::info!(addr = %app.addr, store = ?state.store.backend(), "tollgate listening");
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        shutdown.cancel();
    });
    app.run().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
