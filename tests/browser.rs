//! A real headless Chromium (Debian `chromium` + `chromedriver`, driven with fantoccini) signs
//! in through the login form and reaches the dashboard. The screenshot lands in
//! `target/screenshots/`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use elite::accounts::Role;
use fantoccini::{ClientBuilder, Locator};

struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} ({e}); install Debian's chromium and chromium-driver (scripts/test.sh does)"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ChromeDriver { child, port }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_through_the_form_and_sees_the_dashboard() {
    let app = TestApp::new().await;
    app.user("olga", Role::Researcher).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("connect to chromedriver");

    let result = async {
        // Not signed in: the dashboard sends us to the login form.
        client.goto(&format!("{base}/")).await?;
        let url = client.current_url().await?;
        assert_eq!(url.path(), "/login", "{url}");

        // A wrong password shows an error and keeps us on the form.
        client
            .find(Locator::Id("username"))
            .await?
            .send_keys("olga")
            .await?;
        client
            .find(Locator::Id("password"))
            .await?
            .send_keys("wrong password")
            .await?;
        client.find(Locator::Id("sign-in")).await?.click().await?;
        let alert = client.wait().for_element(Locator::Css("p.error")).await?;
        assert!(alert.text().await?.contains("Wrong username or password"));

        client.find(Locator::Id("username")).await?.clear().await?;
        client
            .find(Locator::Id("username"))
            .await?
            .send_keys("olga")
            .await?;
        client
            .find(Locator::Id("password"))
            .await?
            .send_keys(PASSWORD)
            .await?;
        client.find(Locator::Id("sign-in")).await?.click().await?;
        let title = client
            .wait()
            .for_element(Locator::Id("dashboard-title"))
            .await?;
        assert_eq!(title.text().await?, "Dashboard");
        let account = client
            .find(Locator::Id("account-link"))
            .await?
            .text()
            .await?;
        assert_eq!(account, "olga");
        let png = client.screenshot().await?;
        let path = screenshot_dir().join("dashboard.png");
        std::fs::write(&path, &png).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = client.close().await;
    result.expect("browser session");
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1);
}
