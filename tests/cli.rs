//! The `elite` binary end to end: the embedded PostgreSQL default (start, serve, stop on
//! SIGTERM, stop after a crash by the next serve), `db` and `user` subcommands. Sharing one
//! cluster between processes is `tests/cluster.rs`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ELITE: &str = env!("CARGO_BIN_EXE_elite");

fn elite(args: &[&str], database_url: Option<&str>, stdin: Option<&str>) -> Output {
    let mut command = Command::new(ELITE);
    command.env("ELITE_OUTBOUND_ALLOW", "127.0.0.0/8");
    command
        .args(args)
        .env("ELITE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    let mut child = command.spawn().expect("run elite");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn user_and_db_subcommands_work_against_a_database_url() {
    let (url, pool) = fresh_database().await;
    let out = elite(
        &[
            "user",
            "add",
            "root-admin",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(&url),
        Some("s3cret-password\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = elite(
        &[
            "user",
            "add",
            "root-admin",
            "--role",
            "admin",
            "--generate-password",
            "--if-missing",
        ],
        Some(&url),
        None,
    );
    assert!(
        out.status.success() && text(&out).contains("already exists"),
        "{}",
        text(&out)
    );
    let out = elite(
        &[
            "user",
            "add",
            "root-admin",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(&url),
        Some("another-password"),
    );
    assert!(
        !out.status.success() && text(&out).contains("already exists"),
        "{}",
        text(&out)
    );
    let out = elite(
        &["user", "add", "weak", "--password-stdin"],
        Some(&url),
        Some("short"),
    );
    assert!(
        !out.status.success() && text(&out).contains("at least 8"),
        "{}",
        text(&out)
    );
    let out = elite(
        &[
            "user",
            "add",
            "ann",
            "--role",
            "annotator",
            "--generate-password",
        ],
        Some(&url),
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let generated = text(&out)
        .lines()
        .find_map(|l| l.strip_prefix("password: ").map(str::to_string))
        .expect("printed password");
    assert!(
        elite::accounts::authenticate(&pool, "ann", &generated)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        elite::accounts::authenticate(&pool, "root-admin", "s3cret-password")
            .await
            .unwrap()
            .is_some()
    );

    let out = elite(&["user", "set-role", "ann", "researcher"], Some(&url), None);
    assert!(out.status.success(), "{}", text(&out));
    let out = elite(&["user", "set-role", "ann", "overlord"], Some(&url), None);
    assert!(
        !out.status.success() && text(&out).contains("unknown role"),
        "{}",
        text(&out)
    );
    let out = elite(&["user", "list"], Some(&url), None);
    let listing = text(&out);
    assert!(
        listing.contains("ann\tresearcher") && listing.contains("root-admin\tadmin"),
        "{listing}"
    );

    let out = elite(&["db", "status"], Some(&url), None);
    assert!(text(&out).contains("foundation: applied"), "{}", text(&out));
    let out = elite(&["db", "url"], Some(&url), None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), url);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_serve(data_dir: &Path, port: u16) -> Child {
    Command::new(ELITE)
        .env("ELITE_OUTBOUND_ALLOW", "127.0.0.0/8")
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("DATABASE_URL")
        .env("ELITE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start elite serve")
}

async fn wait_for_login_page(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/login")).await
            && response.status() == 200
        {
            assert!(response.text().await.unwrap().contains("Sign in"));
            return;
        }
        assert!(Instant::now() < deadline, "elite serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cluster_running(data_dir: &Path) -> bool {
    let pid_file = data_dir.join("pgdata/postmaster.pid");
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    let pid: i32 = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or(0);
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn terminate(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "elite did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No DATABASE_URL: `elite serve` creates and starts its own cluster, serves the login page,
/// stops the cluster on SIGTERM; after a crash (SIGKILL) the next serve uses the server and stops
/// it when it exits.
#[tokio::test]
async fn serve_owns_a_private_cluster_without_database_url() {
    let data_dir = tempfile::Builder::new()
        .prefix("elite-cli-")
        .tempdir_in("/tmp")
        .unwrap();
    let port = free_port();
    let mut server = start_serve(data_dir.path(), port);
    wait_for_login_page(port).await;
    assert!(cluster_running(data_dir.path()));
    terminate(&mut server);
    assert!(
        !cluster_running(data_dir.path()),
        "cluster left running after SIGTERM"
    );

    // A crash leaves the server running; the next serve uses it and, leaving last, stops it.
    let mut crashed = start_serve(data_dir.path(), port);
    wait_for_login_page(port).await;
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    assert!(
        cluster_running(data_dir.path()),
        "PostgreSQL should outlive a SIGKILLed elite"
    );
    let port = free_port();
    let mut restarted = start_serve(data_dir.path(), port);
    wait_for_login_page(port).await;
    // Data survives restarts.
    let out = elite(
        &[
            "--data-dir",
            data_dir.path().to_str().unwrap(),
            "user",
            "add",
            "kim",
            "--generate-password",
        ],
        None,
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    terminate(&mut restarted);
    assert!(
        !cluster_running(data_dir.path()),
        "a crashed serve's cluster left running after the next serve's SIGTERM"
    );

    // `db url` starts it for psql-style use and `db stop` stops it.
    let dir = data_dir.path().to_str().unwrap();
    let out = elite(&["--data-dir", dir, "db", "url"], None, None);
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        url.starts_with("postgresql://") && url.contains("host="),
        "{url}"
    );
    let pool = elite::db::pool(&url, 1).await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 1);
    pool.close().await;
    let out = elite(&["--data-dir", dir, "db", "stop"], None, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!cluster_running(data_dir.path()));
}
