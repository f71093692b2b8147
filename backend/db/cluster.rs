//! The private PostgreSQL cluster `elite` runs when no `DATABASE_URL` is given.
//!
//! Layout under the data directory:
//!
//! ```text
//! {data_dir}/pgdata        the cluster (initdb'ed once)
//! {data_dir}/run           the Unix socket directory (TCP is off)
//! {data_dir}/postgres.log  the server log
//! {data_dir}/owner.pid     the pid of the elite process that started the server
//! ```
//!
//! A process that starts the server owns it and stops it on shutdown. A process that finds the
//! server already running leaves it alone, unless the recorded owner is dead (a crashed run), in
//! which case it adopts the server and becomes its owner. As root, the PostgreSQL binaries run
//! as the `postgres` user through `runuser`, since PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::DbError;

/// Name of the superuser and of the application database inside the private cluster.
const DB_USER: &str = "elite";
pub(crate) const DB_NAME: &str = "elite";

/// Settings of a private cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Root directory; everything the cluster needs lives beneath it.
    pub data_dir: PathBuf,
    /// Trade durability for speed (fsync off): for throwaway test clusters only.
    pub ephemeral: bool,
}

/// A private cluster that this process may own.
#[derive(Debug)]
pub struct LocalCluster {
    options: ClusterOptions,
    bin_dir: PathBuf,
    owned: bool,
}

impl LocalCluster {
    /// Initialise the cluster if needed and start it if it is not running. The application
    /// database is created by [`super::connect`].
    pub fn ensure_running(options: ClusterOptions) -> Result<Self, DbError> {
        let mut cluster = Self::locate(options)?;
        // Serialise concurrent launchers (serve + worker, parallel test processes).
        let _lock = DirLock::acquire(&cluster.options.data_dir.join("launcher.lock"))?;
        cluster.prepare_directories()?;
        if !cluster.pgdata().join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        if cluster.is_running()? {
            if cluster.owner_is_dead() {
                tracing::info!("adopting a PostgreSQL server left running by a stopped process");
                cluster.owned = true;
                cluster.write_owner()?;
            } else {
                tracing::info!(
                    "using the PostgreSQL server already running under the data directory"
                );
            }
        } else {
            cluster.start()?;
            cluster.owned = true;
            cluster.write_owner()?;
        }
        Ok(cluster)
    }

    /// Stop the cluster under `options.data_dir` if it runs, whoever started it (for
    /// `elite db stop` and test clean-up). Returns whether a server was stopped.
    pub fn stop_existing(options: ClusterOptions) -> Result<bool, DbError> {
        let mut cluster = Self::locate(options)?;
        let _lock = DirLock::acquire(&cluster.options.data_dir.join("launcher.lock"))?;
        if !cluster.pgdata().join("PG_VERSION").exists() || !cluster.is_running()? {
            return Ok(false);
        }
        cluster.owned = true;
        cluster.stop()?;
        Ok(true)
    }

    /// Resolve the binaries and the data directory without touching the server.
    fn locate(options: ClusterOptions) -> Result<Self, DbError> {
        let bin_dir = find_postgres_bin_dir()?;
        std::fs::create_dir_all(&options.data_dir).map_err(|e| {
            DbError::Cluster(format!(
                "cannot create data directory {}: {e}",
                options.data_dir.display()
            ))
        })?;
        let data_dir = std::fs::canonicalize(&options.data_dir).map_err(|e| {
            DbError::Cluster(format!(
                "cannot resolve {}: {e}",
                options.data_dir.display()
            ))
        })?;
        let cluster = LocalCluster {
            options: ClusterOptions {
                data_dir,
                ..options
            },
            bin_dir,
            owned: false,
        };
        cluster.check_socket_path_length()?;
        Ok(cluster)
    }

    /// Connection string for the application database, usable by sqlx and by `psql`.
    pub fn url(&self) -> String {
        self.url_for(DB_NAME)
    }

    /// Connection string for another database of the cluster (tests create many).
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgresql://{DB_USER}@localhost/{database}?host={}",
            self.socket_dir().display()
        )
    }

    /// Whether this process started (or adopted) the server and must stop it.
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// Stop the server if this process owns it. Idempotent.
    pub fn stop(&mut self) -> Result<(), DbError> {
        if !self.owned {
            return Ok(());
        }
        self.owned = false;
        let pgdata = self.pgdata();
        let output = self.pg_command(
            "pg_ctl",
            &["-D", path_str(&pgdata)?, "-m", "fast", "-w", "stop"],
        )?;
        let _ = std::fs::remove_file(self.owner_file());
        if !output.status.success() {
            return Err(DbError::Cluster(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    fn pgdata(&self) -> PathBuf {
        self.options.data_dir.join("pgdata")
    }

    fn socket_dir(&self) -> PathBuf {
        self.options.data_dir.join("run")
    }

    fn log_file(&self) -> PathBuf {
        self.options.data_dir.join("postgres.log")
    }

    fn owner_file(&self) -> PathBuf {
        self.options.data_dir.join("owner.pid")
    }

    fn check_socket_path_length(&self) -> Result<(), DbError> {
        // sockaddr_un holds 107 bytes; PostgreSQL appends "/.s.PGSQL.5432".
        let len = self.socket_dir().as_os_str().len() + ".s.PGSQL.5432".len() + 1;
        if len > 107 {
            return Err(DbError::Cluster(format!(
                "the data directory {} is too deep for a Unix socket path ({len} > 107 bytes); choose a shorter --data-dir",
                self.options.data_dir.display()
            )));
        }
        Ok(())
    }

    fn prepare_directories(&self) -> Result<(), DbError> {
        for dir in [self.pgdata(), self.socket_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DbError::Cluster(format!("cannot create {}: {e}", dir.display())))?;
        }
        set_mode(&self.pgdata(), 0o700)?;
        set_mode(&self.socket_dir(), 0o700)?;
        if running_as_root() {
            // PostgreSQL refuses to run as root: hand its directories to the postgres user.
            // Recursively only before initdb: once the cluster exists its files are the
            // server's own, and a recursive chown would race with the temporary files a
            // running server creates and removes (another process's tests, say).
            let mut chown = Command::new("chown");
            if !self.pgdata().join("PG_VERSION").exists() {
                chown.arg("-R");
            }
            let status = chown
                .arg("postgres:postgres")
                .arg(self.pgdata())
                .arg(self.socket_dir())
                .status()
                .map_err(|e| DbError::Cluster(format!("cannot run chown: {e}")))?;
            if !status.success() {
                return Err(DbError::Cluster(
                    "chown to the postgres user failed; does the user `postgres` exist? (apt-get install postgresql creates it)".into(),
                ));
            }
            let log = self.log_file();
            if !log.exists() {
                std::fs::write(&log, b"").map_err(|e| {
                    DbError::Cluster(format!("cannot create {}: {e}", log.display()))
                })?;
            }
            let _ = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&log)
                .status();
            self.check_postgres_can_reach_data_dir()?;
        }
        Ok(())
    }

    fn check_postgres_can_reach_data_dir(&self) -> Result<(), DbError> {
        let probe = Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-x"])
            .arg(&self.options.data_dir)
            .output()
            .map_err(|e| DbError::Cluster(format!("cannot run runuser: {e}")))?;
        if !probe.status.success() {
            return Err(DbError::Cluster(format!(
                "the postgres user cannot enter {}; every parent directory must be searchable (chmod o+x) or choose another --data-dir",
                self.options.data_dir.display()
            )));
        }
        Ok(())
    }

    fn initdb(&self) -> Result<(), DbError> {
        tracing::info!(pgdata = %self.pgdata().display(), "initialising a private PostgreSQL cluster");
        let pgdata = self.pgdata();
        let output = self.pg_command(
            "initdb",
            &[
                "-D",
                path_str(&pgdata)?,
                "-U",
                DB_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
        )?;
        if !output.status.success() {
            return Err(DbError::Cluster(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        // Local socket only, owner-only permissions: trust auth is then limited to this user.
        let mut settings = format!(
            "\n# elite: private cluster settings\nlisten_addresses = ''\nunix_socket_directories = '{}'\nunix_socket_permissions = 0700\nmax_connections = 200\n",
            self.socket_dir().display()
        );
        if self.options.ephemeral {
            settings.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let conf = pgdata.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf)
            .map_err(|e| DbError::Cluster(format!("cannot read {}: {e}", conf.display())))?;
        existing.push_str(&settings);
        std::fs::write(&conf, existing)
            .map_err(|e| DbError::Cluster(format!("cannot write {}: {e}", conf.display())))?;
        Ok(())
    }

    fn is_running(&self) -> Result<bool, DbError> {
        let pgdata = self.pgdata();
        let output = self.pg_command("pg_ctl", &["-D", path_str(&pgdata)?, "status"])?;
        // pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        Ok(output.status.code() == Some(0))
    }

    fn start(&self) -> Result<(), DbError> {
        tracing::info!("starting the private PostgreSQL server");
        let pgdata = self.pgdata();
        let log = self.log_file();
        let output = self.pg_command(
            "pg_ctl",
            &[
                "-D",
                path_str(&pgdata)?,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        if !output.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            return Err(DbError::Cluster(format!(
                "pg_ctl start failed: {}; server log ({}):\n{}",
                String::from_utf8_lossy(&output.stderr).trim(),
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        Ok(())
    }

    fn owner_is_dead(&self) -> bool {
        match std::fs::read_to_string(self.owner_file()) {
            Ok(text) => match text.trim().parse::<i32>() {
                // kill(pid, 0) probes for existence without sending anything.
                Ok(pid) => unsafe { libc::kill(pid, 0) != 0 },
                Err(_) => true,
            },
            Err(_) => true,
        }
    }

    fn write_owner(&self) -> Result<(), DbError> {
        std::fs::write(self.owner_file(), std::process::id().to_string())
            .map_err(|e| DbError::Cluster(format!("cannot write owner file: {e}")))
    }

    /// Run a PostgreSQL program from the server's bin directory, as `postgres` when we are root.
    fn pg_command(&self, program: &str, args: &[&str]) -> Result<Output, DbError> {
        let path = self.bin_dir.join(program);
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.args(args).env("LC_ALL", "C").current_dir("/");
        command
            .output()
            .map_err(|e| DbError::Cluster(format!("cannot run {program}: {e}")))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("stopping the private PostgreSQL server: {e}");
        }
    }
}

/// Locate the PostgreSQL *server* binaries (initdb, pg_ctl): `ELITE_PG_BINDIR`, then
/// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_postgres_bin_dir() -> Result<PathBuf, DbError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(dir) = std::env::var("ELITE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        return Err(DbError::Cluster(format!(
            "ELITE_PG_BINDIR={} holds no initdb/pg_ctl",
            dir.display()
        )));
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, dir)| dir).ok_or_else(|| {
        DbError::Cluster(
            "no PostgreSQL server binaries found (initdb, pg_ctl). Install them with \
             `sudo apt-get install postgresql`, or set DATABASE_URL to use an existing server"
                .into(),
        )
    })
}

/// An exclusive `flock` on a file, released on drop.
struct DirLock {
    file: std::fs::File,
}

impl DirLock {
    fn acquire(path: &Path) -> Result<Self, DbError> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| DbError::Cluster(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the descriptor is valid for the lifetime of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(DbError::Cluster(format!("cannot lock {}", path.display())));
        }
        Ok(DirLock { file })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; unlocking cannot invalidate anything.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DbError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| DbError::Cluster(format!("cannot chmod {}: {e}", path.display())))
}

fn path_str(path: &Path) -> Result<&str, DbError> {
    path.to_str()
        .ok_or_else(|| DbError::Cluster(format!("path is not UTF-8: {}", path.display())))
}
