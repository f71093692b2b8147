//! Who stops the private PostgreSQL cluster, with real `elite` processes sharing one data
//! directory: a one-shot command or a worker leaving must not take the database away from the
//! processes still using it; the last long-running process to exit cleanly stops it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use elite::genmetrics::jobs::{TOY_JOB, ToyJob};
use elite::genmetrics::toy::{ToyExperiment, ToyParams};
use elite::jobs::{self, NewJob};

const ELITE: &str = env!("CARGO_BIN_EXE_elite");
const DEADLINE: Duration = Duration::from_secs(45);

/// A fresh data directory the postgres user can enter (under `ELITE_TEST_DATA_DIR` when set),
/// and the processes started on it. Dropping it kills what still runs, stops the cluster and
/// removes the directory, so a failed assertion leaves nothing behind.
struct Fixture {
    dir: PathBuf,
    children: Vec<Child>,
}

/// A started `elite` process; its stderr goes to `log`.
struct Proc {
    index: usize,
    log: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let parent = std::env::var_os("ELITE_TEST_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let parent = std::fs::canonicalize(&parent).expect("test data directory");
        let name = format!("own-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fixture {
            dir,
            children: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(ELITE);
        command
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .env_remove("DATABASE_URL")
            .env("ELITE_LOG", "info,sqlx=warn")
            .stdin(Stdio::null());
        command
    }

    /// Start a long-running `elite` process.
    fn spawn(&mut self, name: &str, args: &[&str]) -> Proc {
        let log = self.dir.join(format!("{name}.log"));
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start elite");
        self.children.push(child);
        Proc {
            index: self.children.len() - 1,
            log,
        }
    }

    /// Run a one-shot `elite` command to completion.
    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run elite")
    }

    fn pid(&self, proc: &Proc) -> i32 {
        self.children[proc.index].id() as i32
    }

    fn alive(&mut self, proc: &Proc) -> bool {
        self.children[proc.index].try_wait().unwrap().is_none()
    }

    fn kill_hard(&mut self, proc: &Proc) {
        let child = &mut self.children[proc.index];
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    fn terminate(&mut self, proc: &Proc) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(proc), libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = self.children[proc.index].try_wait().unwrap() {
                assert!(status.success(), "{status}: {}", read(&proc.log));
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no exit after SIGTERM: {}",
                read(&proc.log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until `proc` logs `needle` (it is then past opening the database).
    async fn wait_for_log(&mut self, proc: &Proc, needle: &str) {
        let started = Instant::now();
        while !read(&proc.log).contains(needle) {
            assert!(self.alive(proc), "exited early: {}", read(&proc.log));
            assert!(
                started.elapsed() < DEADLINE,
                "timed out: {}",
                read(&proc.log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until `serve` answers `/healthz`, which runs a query on its pool.
    async fn wait_healthy(&mut self, proc: &Proc, port: u16) {
        let started = Instant::now();
        loop {
            if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await
                && response.status() == 200
            {
                assert_eq!(response.text().await.unwrap(), "ok");
                return;
            }
            assert!(self.alive(proc), "exited early: {}", read(&proc.log));
            assert!(
                started.elapsed() < DEADLINE,
                "timed out: {}",
                read(&proc.log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether a postmaster runs on the data directory (its pid file names a live process).
    fn cluster_running(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.dir.join("pgdata/postmaster.pid")) else {
            return false;
        };
        let pid: i32 = text
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .parse()
            .unwrap_or(0);
        // SAFETY: signal 0 only probes for existence.
        pid > 0 && unsafe { libc::kill(pid, 0) } == 0
    }

    fn url(&self) -> String {
        format!(
            "postgresql://elite@localhost/elite?host={}",
            self.dir.join("run").display()
        )
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                all.push_str(&format!("--- {}\n{}\n", path.display(), read(&path)));
            }
        }
        all
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.cluster_running() {
            let _ = self.run(&["db", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// serve + two workers on one data directory; serve is killed, a CLI command runs, a worker
/// leaves: the other worker keeps its database and a restarted serve works. The cluster stops
/// when the last long-running process exits cleanly, not before. A one-shot command stops only
/// a server it started itself.
#[tokio::test]
async fn the_cluster_stops_only_when_its_last_user_leaves() {
    let mut fx = Fixture::new();

    // serve starts the cluster; two workers join it.
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let serve = fx.spawn("serve", &["serve", "--bind", &bind]);
    fx.wait_healthy(&serve, port).await;
    let worker_a = fx.spawn("worker-a", &["worker"]);
    let worker_b = fx.spawn("worker-b", &["worker"]);
    fx.wait_for_log(&worker_a, "worker started").await;
    fx.wait_for_log(&worker_b, "worker started").await;

    // The process that started the server dies without cleaning up.
    fx.kill_hard(&serve);
    assert!(
        fx.cluster_running(),
        "PostgreSQL should outlive a SIGKILLed serve"
    );

    // A one-shot command uses the server and leaves it to the workers.
    let out = fx.run(&["db", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(": applied"), "{}", text(&out));
    assert!(
        fx.cluster_running(),
        "a one-shot command stopped the server two workers use\n{}",
        fx.logs()
    );

    // One worker leaves cleanly; the other still uses the server.
    fx.terminate(&worker_a);
    assert!(
        fx.cluster_running(),
        "a worker stopped the server another worker uses\n{}",
        fx.logs()
    );

    // The remaining worker (the only one left) still works: it runs a job.
    let pool = elite::db::pool(&fx.url(), 2).await.unwrap();
    let payload = serde_json::to_value(ToyJob {
        experiment: ToyExperiment::Shift,
        params: ToyParams {
            samples: 40,
            dim: 4,
            ..ToyParams::default()
        },
    })
    .unwrap();
    let id = jobs::enqueue(&pool, NewJob::new(TOY_JOB, payload).max_attempts(1))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let status: String = sqlx::query_scalar("SELECT status::text FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        if status == "succeeded" {
            break;
        }
        assert!(
            matches!(status.as_str(), "queued" | "running"),
            "job {status}\n{}",
            fx.logs()
        );
        assert!(fx.alive(&worker_b), "{}", fx.logs());
        assert!(started.elapsed() < DEADLINE, "job not run\n{}", fx.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;

    // A restarted serve works and, leaving before the worker, leaves the server running.
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let serve = fx.spawn("serve-again", &["serve", "--bind", &bind, "--no-workers"]);
    fx.wait_healthy(&serve, port).await;
    let login = reqwest::get(format!("http://127.0.0.1:{port}/login"))
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    fx.terminate(&serve);
    assert!(
        fx.cluster_running(),
        "serve stopped the server a worker uses\n{}",
        fx.logs()
    );

    // The last long-running process stops the server when it exits cleanly.
    fx.terminate(&worker_b);
    assert!(
        !fx.dir.join("pgdata/postmaster.pid").exists(),
        "the last process left the server running\n{}",
        fx.logs()
    );

    // A one-shot command that had to start the server and is alone stops it again.
    let out = fx.run(&["db", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !fx.dir.join("pgdata/postmaster.pid").exists(),
        "a one-shot command left the server it started running\n{}",
        text(&out)
    );

    // A one-shot command alone with a server it did not start (its owner crashed) leaves it:
    // only a long-running process takes a crashed owner's place.
    let worker = fx.spawn("worker-c", &["worker"]);
    fx.wait_for_log(&worker, "worker started").await;
    fx.kill_hard(&worker);
    let out = fx.run(&["db", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(fx.cluster_running(), "{}", text(&out));
    let out = fx.run(&["db", "stop"]);
    assert!(text(&out).contains("stopped"), "{}", text(&out));
    assert!(!fx.cluster_running());
}
