//! The private PostgreSQL cluster `elite` runs when no `DATABASE_URL` is given.
//!
//! Layout under the data directory:
//!
//! ```text
//! {data_dir}/pgdata         the cluster (initdb'ed once)
//! {data_dir}/run            the Unix socket directory (TCP is off)
//! {data_dir}/postgres.log   the server log
//! {data_dir}/launcher.lock  flock'ed while a process starts, joins, leaves or stops the server
//! {data_dir}/users/         one `<pid>-<n>.lock` per live elite process using the server
//! ```
//!
//! Many elite processes share one server (serve, workers, CLI commands), so no single process
//! owns it. Each process registers while it uses the server: it holds a shared `flock` on its
//! own file in `users/` from joining to leaving. The kernel releases a lock when its process
//! dies, however it dies (SIGKILL included), so a registry entry whose lock can be taken is a
//! dead process's, and counting live users needs no pid bookkeeping that a crash could leave
//! wrong. Joining (start if needed, then register) and leaving (deregister, count the others,
//! stop if the rules below say so) each happen under `launcher.lock`, so nobody joins between
//! the count and the stop: a process that starts meanwhile waits and then starts the server
//! again.
//!
//! When a process leaves and no other live process is registered:
//! - a long-running process ([`ProcessKind::LongRunning`]: `serve`, `worker`) stops the server,
//!   whoever started it; this is how a crashed process's server gets stopped eventually;
//! - a one-shot command ([`ProcessKind::OneShot`]) stops it only if it started it itself, so a
//!   lone `elite user add` leaves no server behind, but a command run after a crash never stops
//!   a server it merely found running.
//!
//! When another live process is registered, the server keeps running whoever leaves. `elite db
//! url` leaves the server running on purpose ([`LocalCluster::leave_running`]); `elite db stop`
//! stops it regardless of users. As root, the PostgreSQL binaries run as the `postgres` user
//! through `runuser`, since PostgreSQL refuses to run as root.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use super::DbError;

/// Name of the superuser and of the application database inside the private cluster.
const DB_USER: &str = "elite";
pub(crate) const DB_NAME: &str = "elite";

/// How a process uses the cluster, which decides whether it may stop it when it leaves (see
/// the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// `serve` and `worker`: stops the server when it leaves last.
    LongRunning,
    /// A CLI command: stops the server when it leaves last only if it started it.
    OneShot,
}

/// Settings of a private cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Root directory; everything the cluster needs lives beneath it.
    pub data_dir: PathBuf,
    /// Trade durability for speed (fsync off): for throwaway test clusters only.
    pub ephemeral: bool,
    /// How this process uses the server.
    pub process: ProcessKind,
}

/// This process's use of the private cluster: registered as a user from
/// [`LocalCluster::ensure_running`] until [`LocalCluster::release`] (or drop).
#[derive(Debug)]
pub struct LocalCluster {
    options: ClusterOptions,
    bin_dir: PathBuf,
    /// Whether this process started the server (rather than finding it running).
    started: bool,
    /// Our entry in the users registry; `None` once released (or for `stop_existing`).
    registration: Option<Registration>,
}

impl LocalCluster {
    /// Initialise the cluster if needed, start it if it is not running, and register this
    /// process as one of its users. The application database is created by
    /// [`super::open`].
    pub fn ensure_running(options: ClusterOptions) -> Result<Self, DbError> {
        let mut cluster = Self::locate(options)?;
        // Serialise concurrent launchers (serve + worker, parallel test processes) and leavers.
        let _lock = DirLock::acquire(&cluster.launcher_lock())?;
        cluster.prepare_directories()?;
        // Written by earlier versions, which had one owner process; the registry replaces it.
        let _ = std::fs::remove_file(cluster.options.data_dir.join("owner.pid"));
        if !cluster.pgdata().join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        // Register before starting: a failed start then leaves no unregistered server behind.
        cluster.registration = Some(Registration::register(&cluster.users_dir())?);
        if cluster.is_running()? {
            tracing::info!("using the PostgreSQL server already running under the data directory");
        } else {
            cluster.start()?;
            cluster.started = true;
        }
        Ok(cluster)
    }

    /// Stop the cluster under `options.data_dir` if it runs, whoever started it and whoever
    /// still uses it (for `elite db stop` and test clean-up). Returns whether a server was
    /// stopped.
    pub fn stop_existing(options: ClusterOptions) -> Result<bool, DbError> {
        let cluster = Self::locate(options)?;
        let _lock = DirLock::acquire(&cluster.launcher_lock())?;
        if !cluster.pgdata().join("PG_VERSION").exists() || !cluster.is_running()? {
            return Ok(false);
        }
        let users = live_users(&cluster.users_dir());
        if !users.is_empty() {
            tracing::warn!(
                pids = ?users,
                "stopping the private PostgreSQL server while other elite processes use it"
            );
        }
        cluster.pg_stop()?;
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
            started: false,
            registration: None,
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

    /// Whether this process started the server (it was not running when we joined).
    pub fn started_here(&self) -> bool {
        self.started
    }

    /// Leave as a user without stopping the server, whatever the rules say (`elite db url`
    /// hands the server to a client outside elite). A later long-running process that leaves
    /// last stops it.
    pub fn leave_running(mut self) {
        self.registration = None;
    }

    /// Leave as a user: deregister and, if no other live elite process uses the server, stop
    /// it when this process may (a long-running process always, a one-shot command only if it
    /// started the server). Idempotent; also run on drop.
    pub fn release(&mut self) -> Result<(), DbError> {
        let Some(registration) = self.registration.take() else {
            return Ok(());
        };
        let _lock = DirLock::acquire(&self.launcher_lock())?;
        drop(registration);
        let others = live_users(&self.users_dir());
        let long_running = self.options.process == ProcessKind::LongRunning;
        if !others.is_empty() {
            if long_running {
                tracing::info!(
                    pids = ?others,
                    "leaving the private PostgreSQL server running for other elite processes"
                );
            }
            return Ok(());
        }
        if !long_running && !self.started {
            tracing::debug!("leaving the PostgreSQL server running: this command did not start it");
            return Ok(());
        }
        if !self.is_running()? {
            // Stopped meanwhile (`elite db stop`).
            return Ok(());
        }
        tracing::info!("stopping the private PostgreSQL server: no other elite process uses it");
        self.pg_stop()
    }

    /// `pg_ctl stop` (fast: disconnects clients, rolls back their transactions).
    fn pg_stop(&self) -> Result<(), DbError> {
        let pgdata = self.pgdata();
        let output = self.pg_command(
            "pg_ctl",
            &["-D", path_str(&pgdata)?, "-m", "fast", "-w", "stop"],
        )?;
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

    fn launcher_lock(&self) -> PathBuf {
        self.options.data_dir.join("launcher.lock")
    }

    fn users_dir(&self) -> PathBuf {
        self.options.data_dir.join("users")
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
        if let Err(e) = self.release() {
            tracing::warn!("leaving the private PostgreSQL server: {e}");
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

/// A process's entry in the users registry: a file of its own it holds a shared `flock` on.
/// Dropping it removes the file and so releases the lock; a killed process's lock is released
/// by the kernel and its file is removed by the next count.
#[derive(Debug)]
struct Registration {
    path: PathBuf,
    _file: File,
}

impl Registration {
    /// Call with `launcher.lock` held, so that no count runs while the entry appears.
    fn register(dir: &Path) -> Result<Self, DbError> {
        // Unique within the process too: a process may open the cluster more than once.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(dir)
            .map_err(|e| DbError::Cluster(format!("cannot create {}: {e}", dir.display())))?;
        let name = format!(
            "{}-{}.lock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        // Truncate nothing: a dead process of the same pid may have left this very file.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DbError::Cluster(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the descriptor is valid for the lifetime of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } != 0 {
            return Err(DbError::Cluster(format!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(Registration { path, _file: file })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Remove the entry, then close the file (which unlocks it).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pids of the live processes registered in `dir`; entries of dead processes are removed.
/// Call with `launcher.lock` held. An entry whose state cannot be read counts as live: better a
/// server left running than one stopped under a user.
fn live_users(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut live = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        let pid = name
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; counting it as a user", path.display());
                live.push(pid);
                continue;
            }
        };
        // SAFETY: the descriptor is valid for the lifetime of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // Nobody holds it: its process is gone. The lock goes with `file`.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            tracing::warn!(
                "cannot lock {}: {error}; counting it as a user",
                path.display()
            );
        }
        live.push(pid);
    }
    live.sort_unstable();
    live
}

/// An exclusive `flock` on a file, released on drop.
struct DirLock {
    file: File,
}

impl DirLock {
    fn acquire(path: &Path) -> Result<Self, DbError> {
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
