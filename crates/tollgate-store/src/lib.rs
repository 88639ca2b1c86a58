//! The store: the only module that writes SQL. One code path for SQLite and PostgreSQL through
//! sqlx's `Any` driver. Times are `i64` epoch milliseconds, ids and JSON are TEXT, placeholders are
//! `$1..$N` (valid on both).

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};

pub mod audit;
pub mod console;
pub mod files;
pub mod identity;
pub mod invalidations;
pub mod keys;
pub mod migrate;
pub mod quotas;
pub mod subscriptions;
pub mod tenants;
pub mod usage;

pub use audit::{AuditEvent, AuditRecord};

/// The ids and clocks the store writes (core's), and the file helpers.
mod util {
    pub use crate::files::{create_private_dir, create_private_file, warn_if_wider};
    pub use tollgate_core::ids::new_id;
    pub use tollgate_core::time::now_ms;
}

/// A write transaction: every mutation and its audit event share one. On SQLite it also holds
/// this process's writer turn (see [`Store::begin`]), released after the commit or rollback.
/// It dereferences to its connection, so everything that takes a `&mut Conn` takes it.
pub struct Tx {
    // Declared first, so dropped first: the transaction ends before the turn passes on.
    inner: Transaction<'static, Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let Self { inner, _turn } = self;
        inner.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        let Self { inner, _turn } = self;
        inner.rollback().await
    }
}

impl std::ops::Deref for Tx {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.inner
    }
}

pub type Conn = sqlx::AnyConnection;

/// How long a write waits for its turn (SQLite) before it is `503 UNAVAILABLE`.
const WRITER_TURN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum StoreError {
    /// A uniqueness rule was violated; the text names what clashed.
    Conflict(String),
    NotFound(&'static str),
    /// The database could not be reached (pool timeout, I/O).
    Unavailable(String),
    Other(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict(w) => write!(f, "conflict: {w}"),
            Self::NotFound(w) => write!(f, "not found: {w}"),
            Self::Unavailable(w) => write!(f, "store unavailable: {w}"),
            Self::Other(w) => write!(f, "store error: {w}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict("An object with that name already exists".into())
            }
            sqlx::Error::Database(db) if db.code().is_some_and(|c| connection_level(&c)) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Other(e.to_string()),
        }
    }
}

/// Whether a database error code means the connection or the server failed, not the statement:
/// PostgreSQL's class 08 (connection exception), 57P01-57P05 (the server shutting down or
/// restarting, e.g. "terminating connection due to administrator command"), 53300 (too many
/// connections); SQLite's BUSY and LOCKED (5, 6 and their extended codes, the lock was not had
/// within the busy timeout). These are `503 UNAVAILABLE` with `Retry-After`, never a 500.
fn connection_level(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57P")
        || code == "53300"
        // SQLite's (extended) result codes are numbers of at most four digits; PostgreSQL's
        // SQLSTATEs are five characters.
        || (code.len() < 5 && code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6)))
}

impl StoreError {
    /// The store could not be reached (worth one retry on a fresh connection for a read).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Runs an idempotent read, and once more (on a fresh pooled connection) if the first attempt
/// failed at the connection level: a database restart costs a read nothing but a reconnect.
pub async fn read_retry<T, F, Fut>(mut read: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    match read().await {
        Err(e) if e.is_unavailable() => {
            tracing::debug!(error = %e, "store read failed at the connection level; retrying once");
            read().await
        }
        r => r,
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Dialect,
    /// SQLite only: the usage writer's own connection, through the typed driver rather than
    /// `Any` (see `usage::write_batch`).
    usage_sqlite: Option<sqlx::SqlitePool>,
    /// SQLite only: the writer turn. SQLite takes one writer at a time; a write transaction
    /// that waited for the file's lock while holding a pooled connection would starve the
    /// pool (the writer, needing nothing else, still waits behind the queue for its busy
    /// timeout). Writers of this process queue here instead, holding no connection.
    writer: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// The usage writer's SQLite connection: the typed driver binds the records' shared strings
/// by reference count, where `Any` copies each one twice. One connection (there is one writer),
/// the same settings as the main pool's.
fn usage_connection(url: &str) -> anyhow::Result<sqlx::SqlitePool> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("invalid database_url: {}", redact_url(&e.to_string())))?
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
        .synchronous(SqliteSynchronous::Normal)
        .pragma("cache_size", "-1024");
    Ok(sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(60))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts))
}

impl Store {
    /// Connects (creating the SQLite file and its folder when needed) and applies migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            anyhow::bail!("database_url must start with sqlite:// or postgres://");
        };
        let mut url = url.to_string();
        // SQLite: the database file (and so its -wal and -shm files, which SQLite creates with
        // the database file's mode) is created 0600 in a 0700 folder; wider ones are reported.
        let mut sqlite_file = None;
        if backend == Dialect::Sqlite {
            let rest = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let path = path.to_string();
            if path != ":memory:" && !path.is_empty() {
                let file = std::path::PathBuf::from(&path);
                if let Some(dir) = file.parent()
                    && !dir.as_os_str().is_empty()
                {
                    crate::util::create_private_dir(dir)
                        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
                }
                let read_only = query.split('&').any(|kv| kv == "mode=ro");
                if !read_only {
                    crate::util::create_private_file(&file)
                        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", file.display()))?;
                }
                sqlite_file = Some(file);
            }
            if !url.contains('?') {
                url.push_str("?mode=rwc");
            }
        }
        let opts = AnyConnectOptions::from_str(&url)
            .map_err(|e| anyhow::anyhow!("invalid database_url: {}", redact_url(&e.to_string())))?;
        // SQLite takes one writer at a time; a few connections serve the readers. Each SQLite
        // connection has its own worker thread and page cache, so the pool stays small, spare
        // connections close after a minute idle, and each cache is capped at 1 MiB (the
        // operating system caches the file as well).
        let (max, idle) = match backend {
            Dialect::Sqlite => (4, Duration::from_secs(60)),
            Dialect::Postgres => (16, Duration::from_secs(600)),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .idle_timeout(idle)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Dialect::Sqlite {
                        sqlx::raw_sql(
                            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000; \
                             PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL; \
                             PRAGMA cache_size=-1024;",
                        )
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot open the store: {}", redact_url(&e.to_string()))
            })?;
        // (An in-memory database is private to its connection: its usage goes through the pool.)
        let usage_sqlite = match backend {
            Dialect::Sqlite if !url.contains(":memory:") => Some(usage_connection(&url)?),
            _ => None,
        };
        let store = Self {
            pool,
            backend,
            usage_sqlite,
            writer: (backend == Dialect::Sqlite)
                .then(|| std::sync::Arc::new(tokio::sync::Mutex::new(()))),
        };
        migrate::run(&store).await?;
        if let Some(file) = &sqlite_file {
            for f in sqlite_files(file) {
                crate::util::warn_if_wider(&f, 0o600);
            }
        }
        Ok(store)
    }

    /// SQLite only: the usage writer's connection.
    pub fn usage_sqlite(&self) -> Option<&sqlx::SqlitePool> {
        self.usage_sqlite.as_ref()
    }

    pub fn backend(&self) -> Dialect {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write transaction. On SQLite it first waits for this process's writer turn
    /// (holding no connection while it waits), then takes the write lock up front (`BEGIN
    /// IMMEDIATE`) so a read-then-write transaction cannot fail half-way with `SQLITE_BUSY`.
    /// A transaction never needs a second connection: everything it reads goes through it.
    pub async fn begin(&self) -> StoreResult<Tx> {
        let turn = match &self.writer {
            Some(writer) => Some(
                tokio::time::timeout(WRITER_TURN_TIMEOUT, writer.clone().lock_owned())
                    .await
                    .map_err(|_| StoreError::Unavailable("no write turn within 10 s".into()))?,
            ),
            None => None,
        };
        let inner = match self.backend {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        };
        Ok(Tx { inner, _turn: turn })
    }

    /// Is the store reachable? (for `/ready`)
    pub async fn ping(&self) -> bool {
        tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&self.pool),
        )
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false)
    }

    pub async fn close(&self) {
        if let Some(p) = &self.usage_sqlite {
            p.close().await;
        }
        self.pool.close().await;
    }

    pub async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE key = $1")
            .bind(key.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.0))
    }

    /// Inserts a setting unless it exists; returns whether this call created it.
    pub async fn insert_setting_if_absent(
        conn: &mut Conn,
        key: &str,
        value: &str,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key.to_string())
        .bind(value.to_string())
        .execute(conn)
        .await?;
        Ok(res.rows_affected() == 1)
    }
}

/// A SQLite database file and its write-ahead log and shared-memory files.
pub fn sqlite_files(db: &std::path::Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        std::path::PathBuf::from(s)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// At start: warns about a `data_dir` (and the folders and key files Tollgate keeps in it) that
/// other local users can read. Existing modes are reported, never changed.
pub fn warn_loose_data_dir(data_dir: &std::path::Path) {
    crate::util::warn_if_wider(data_dir, 0o700);
    crate::util::warn_if_wider(&data_dir.join("outbox"), 0o700);
    for key in ["signing.key", "credentials.key"] {
        crate::util::warn_if_wider(&data_dir.join(key), 0o600);
    }
}

/// Removes a password from anything that looks like a URL in an error message.
pub fn redact_url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Reads a JSON TEXT column.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(s: Option<String>) -> Option<T> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn connection_failures_are_told_from_statement_failures() {
        for code in [
            "57P01", "57P02", "57P03", "08006", "08003", "53300", "5", "517", "6", "262",
        ] {
            assert!(super::connection_level(code), "{code}");
        }
        for code in ["23505", "22021", "42P01", "40001", "19", "2067", "1555"] {
            assert!(!super::connection_level(code), "{code}");
        }
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            super::redact_url("error connecting to postgres://u:secret@db:5432/x failed"),
            "error connecting to postgres://***@db:5432/x failed"
        );
        assert_eq!(super::redact_url("sqlite://./a.db"), "sqlite://./a.db");
    }
}
