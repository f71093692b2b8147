//! Database access: the connection pool, the private PostgreSQL cluster used when no
//! `DATABASE_URL` is given, and migrations. Row types live beside the area that owns them.

pub mod cluster;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

pub use cluster::{ClusterOptions, LocalCluster, ProcessKind};

/// The data directory when none is given: `./.elite`, or `/var/lib/elite` for root, whose
/// home (and so a checkout under it) the postgres user usually cannot enter.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/elite")
    } else {
        PathBuf::from("./.elite")
    }
}

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("private PostgreSQL cluster: {0}")]
    Cluster(String),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Where the database comes from.
#[derive(Debug, Clone)]
pub enum DbSource {
    /// An existing server.
    Url(String),
    /// The private cluster under this data directory, used by a process of this kind (which
    /// decides whether it stops the cluster when it leaves; see [`cluster`]).
    Embedded {
        data_dir: PathBuf,
        process: ProcessKind,
    },
}

/// An open database: the pool plus, for the embedded default, this process's registration as
/// a user of the cluster (left when this value is shut down or dropped, which stops the cluster
/// if no other elite process uses it and this one may stop it; see [`cluster`]).
pub struct Database {
    pub pool: PgPool,
    pub url: String,
    cluster: Option<LocalCluster>,
}

impl Database {
    /// Close the pool and leave the private cluster (stopping it when we are its last user and
    /// may stop it).
    pub async fn shutdown(mut self) {
        self.pool.close().await;
        if let Some(mut cluster) = self.cluster.take() {
            let result = tokio::task::spawn_blocking(move || cluster.release()).await;
            if let Ok(Err(e)) = result {
                tracing::warn!("{e}");
            }
        }
    }
}

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Open the database (starting the private cluster when needed) without migrating.
pub async fn open(source: &DbSource, max_connections: u32) -> Result<Database, DbError> {
    let (url, cluster) = match source {
        DbSource::Url(url) => (url.clone(), None),
        DbSource::Embedded { data_dir, process } => {
            let options = ClusterOptions {
                data_dir: data_dir.clone(),
                ephemeral: false,
                process: *process,
            };
            let cluster =
                tokio::task::spawn_blocking(move || LocalCluster::ensure_running(options))
                    .await
                    .map_err(|e| DbError::Cluster(format!("launcher task failed: {e}")))??;
            create_database_if_missing(&cluster.url_for("postgres"), cluster::DB_NAME).await?;
            (cluster.url(), Some(cluster))
        }
    };
    let pool = pool(&url, max_connections).await?;
    Ok(Database { pool, url, cluster })
}

/// Open the database and bring its schema up to date.
pub async fn open_and_migrate(
    source: &DbSource,
    max_connections: u32,
) -> Result<Database, DbError> {
    let db = open(source, max_connections).await?;
    MIGRATOR.run(&db.pool).await?;
    Ok(db)
}

/// A connection pool with quiet statement logging.
pub async fn pool(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url)?
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await?)
}

/// `CREATE DATABASE name` through a maintenance connection unless it exists.
pub async fn create_database_if_missing(maintenance_url: &str, name: &str) -> Result<(), DbError> {
    create_database_with(&PgConnectOptions::from_str(maintenance_url)?, name).await
}

/// As [`create_database_if_missing`], with connection options.
pub async fn create_database_with(
    maintenance: &PgConnectOptions,
    name: &str,
) -> Result<(), DbError> {
    let mut conn = PgConnection::connect_with(maintenance).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&mut conn)
            .await
        {
            // A concurrent creator wins the race: that is fine.
            let duplicate = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|code| code == "42P04");
            if !duplicate {
                return Err(e.into());
            }
        }
    }
    conn.close().await?;
    Ok(())
}

/// One line per migration: version, description, applied or pending.
pub async fn migration_status(pool: &PgPool) -> Result<Vec<(i64, String, bool)>, DbError> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    Ok(MIGRATOR
        .iter()
        .map(|m| {
            (
                m.version,
                m.description.to_string(),
                applied.contains(&m.version),
            )
        })
        .collect())
}
