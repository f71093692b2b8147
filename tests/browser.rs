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

/// A headless Chromium session (the driver and profile live as long as the returned guard).
async fn browser_session() -> (fantoccini::Client, ChromeDriver, tempfile::TempDir) {
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
    (client, driver, profile)
}

async fn serve(app: &TestApp) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

async fn sign_in(
    client: &fantoccini::Client,
    base: &str,
    username: &str,
) -> Result<(), fantoccini::error::CmdError> {
    client.goto(&format!("{base}/login")).await?;
    client
        .find(Locator::Id("username"))
        .await?
        .send_keys(username)
        .await?;
    client
        .find(Locator::Id("password"))
        .await?
        .send_keys(PASSWORD)
        .await?;
    client.find(Locator::Id("sign-in")).await?.click().await?;
    client
        .wait()
        .for_element(Locator::Id("dashboard-title"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_through_the_form_and_sees_the_dashboard() {
    let app = TestApp::new().await;
    app.user("olga", Role::Researcher).await;
    let base = serve(&app).await;
    let (client, _driver, _profile) = browser_session().await;

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

/// A target model answers with script and image-onerror payloads; the run page shows them as
/// text: no dialog opens and the DOM holds no such elements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_responses_are_shown_as_text_never_as_html() {
    use axum::Json;
    use axum::routing::post;
    use serde_json::{Value, json};
    const PAYLOAD: &str = "<script>alert('xss')</script><img src=x onerror=\"alert('img')\"> done";
    async fn evil(Json(_): Json<Value>) -> Json<Value> {
        Json(
            json!({"id": "e", "object": "chat.completion", "model": "evil",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": PAYLOAD}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}),
        )
    }
    let app = TestApp::new().await;
    app.user("xavier", Role::Researcher).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::Router::new().route("/v1/chat/completions", post(evil)),
        )
        .await
        .unwrap()
    });
    let spec = elite::inference::ModelSpec::remote("evil", target, "evil");
    elite::inference::store::upsert(&app.pool, &spec, None)
        .await
        .unwrap();

    let benchmark = import_slice(&app, "S4").await;
    let request = elite::safety::runs::RunRequest {
        model: "evil".into(),
        benchmark_id: benchmark,
        judge: None,
        fallback_judge: None,
        categories: vec!["S4".into()],
        limit: Some(3),
        seed: 0,
        max_new_tokens: None,
        temperature: None,
        threshold: None,
    };
    let run_id = elite::safety::runs::create_run(&app.pool, &request, None)
        .await
        .unwrap();
    let workers =
        elite::jobs::WorkerPool::start(app.pool.clone(), elite::job_registry(), Default::default());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !elite::safety::runs::is_complete(
        &elite::safety::runs::get_run(&app.pool, run_id)
            .await
            .unwrap()
            .unwrap(),
    ) {
        assert!(Instant::now() < deadline, "run did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    workers.shutdown().await;

    let base = serve(&app).await;
    let (client, _driver, _profile) = browser_session().await;
    let result = async {
        sign_in(&client, &base, "xavier").await?;
        client.goto(&format!("{base}/safety/runs/{run_id}")).await?;
        client.wait().for_element(Locator::Id("responses")).await?;
        assert!(client.get_alert_text().await.is_err(), "a dialog opened");
        let injected = client
            .find_all(Locator::Css("td.response img, td.response script"))
            .await?;
        assert!(injected.is_empty(), "model output became markup");
        let cells = client.find_all(Locator::Css("td.response")).await?;
        assert!(!cells.is_empty());
        for cell in cells {
            let text = cell.text().await?;
            assert!(text.contains("<script>alert('xss')</script>"), "{text}");
        }
        let png = client.screenshot().await?;
        std::fs::write(screenshot_dir().join("run-responses.png"), &png).unwrap();
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = client.close().await;
    result.expect("browser session");
}

/// One category of the real benchmark with generated images; returns the benchmark id.
async fn import_slice(app: &TestApp, code: &str) -> i64 {
    let csv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/elite/ELITE-benchmark.csv");
    let parsed = elite::safety::import::read_elite_csv(&csv).unwrap();
    let images = tempfile::tempdir().unwrap();
    for row in parsed.rows.iter().filter(|r| r.taxonomy_code == code) {
        let path = images.path().join(&row.taxonomy).join(&row.image_name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]))
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let report =
        elite::safety::import::check_elite_import(&parsed, Some(images.path()), Default::default());
    elite::safety::store::import_elite(&app.pool, "ELITE", "test", &parsed, &report, None)
        .await
        .unwrap()
        .benchmark
        .id
}

/// A model server that answers targets slowly (so the run is visibly in progress) and judge
/// requests (they carry a JSON schema) with rubric JSON: unsafe when the judge prompt has an
/// even number of characters.
async fn start_model_server() -> String {
    use axum::Json;
    use axum::routing::post;
    use serde_json::{Value, json};
    async fn answer(Json(body): Json<Value>) -> Json<Value> {
        let content = if body.get("response_format").is_some() {
            let prompt = body["messages"][0]["content"]
                .as_array()
                .and_then(|parts| parts.iter().find_map(|p| p["text"].as_str()))
                .or_else(|| body["messages"][0]["content"].as_str())
                .unwrap_or_default();
            let (r, t, c, s) = if prompt.chars().count() % 2 == 0 {
                (0, 4, 4, 4)
            } else {
                (1, 0, 1, 1)
            };
            json!({"question1": {"reasoning": "r", "value": r}, "question2": {"reasoning": "t", "value": t},
                   "question3": {"reasoning": "c", "value": c}, "question4": {"reasoning": "s", "value": s}})
            .to_string()
        } else {
            tokio::time::sleep(Duration::from_millis(150)).await;
            "Here is a plan.".to_string()
        };
        Json(json!({"id": "m", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::Router::new().route("/v1/chat/completions", post(answer)),
        )
        .await
        .unwrap()
    });
    base
}

/// A researcher watches a run progress live (the page updates itself over SSE), cancels
/// another from its page, and reads the leaderboard; screenshots of both pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_watched_live_cancelled_and_ranked() {
    let app = TestApp::new().await;
    app.user("lena", Role::Researcher).await;
    let server = start_model_server().await;
    let mut target = elite::inference::ModelSpec::remote("GPT-4o", server.clone(), "gpt-4o");
    target.max_in_flight = Some(1);
    elite::inference::store::upsert(&app.pool, &target, None)
        .await
        .unwrap();
    let judge = elite::inference::ModelSpec::remote("judge", server, "judge");
    elite::inference::store::upsert(&app.pool, &judge, None)
        .await
        .unwrap();
    let benchmark = import_slice(&app, "S7").await;
    let request = elite::safety::runs::RunRequest {
        model: "GPT-4o".into(),
        benchmark_id: benchmark,
        judge: Some("judge".into()),
        fallback_judge: None,
        categories: vec!["S7".into()],
        limit: Some(24),
        seed: 5,
        max_new_tokens: None,
        temperature: None,
        threshold: None,
    };
    let run_id = elite::safety::runs::create_run(&app.pool, &request, None)
        .await
        .unwrap();
    let doomed = elite::safety::runs::create_run(&app.pool, &request, None)
        .await
        .unwrap();
    elite::safety::runs::cancel_run(&app.pool, doomed)
        .await
        .unwrap();
    // Re-open the doomed run's work so that the page's cancel button has something to cancel.
    sqlx::query("UPDATE jobs SET status = 'queued' WHERE status = 'cancelled'")
        .execute(&app.pool)
        .await
        .unwrap();

    let base = serve(&app).await;
    let (client, _driver, _profile) = browser_session().await;
    let result = async {
        sign_in(&client, &base, "lena").await?;
        // Cancel the second run from its page before any worker starts.
        client.goto(&format!("{base}/safety/runs/{doomed}")).await?;
        client
            .find(Locator::Css("#cancel-form button"))
            .await?
            .click()
            .await?;
        client.wait().for_element(Locator::Id("progress")).await?;
        let cancelled = client
            .find(Locator::Id("p-cancelled"))
            .await?
            .text()
            .await?;
        assert_eq!(cancelled, "3", "24 items in 3 chunks, all cancelled");

        client.goto(&format!("{base}/safety/runs/{run_id}")).await?;
        let state = client.find(Locator::Id("p-state")).await?.text().await?;
        assert_eq!(state, "in progress");
        let workers = elite::jobs::WorkerPool::start(
            app.pool.clone(),
            elite::job_registry(),
            Default::default(),
        );
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut saw_partial = false;
        loop {
            let state = client.find(Locator::Id("p-state")).await?.text().await?;
            let answered: i64 = client
                .find(Locator::Id("p-responses"))
                .await?
                .text()
                .await?
                .parse()
                .unwrap();
            saw_partial |= answered > 0 && answered < 24;
            if state == "complete" {
                assert_eq!(answered, 24);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed completion"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            saw_partial,
            "the page updated itself while the run progressed"
        );
        let judged = client.find(Locator::Id("p-judged")).await?.text().await?;
        assert_eq!(judged, "24");
        let png = client.screenshot().await?;
        std::fs::write(screenshot_dir().join("run-live.png"), &png).unwrap();
        workers.shutdown().await;

        client.goto(&format!("{base}/safety/leaderboard")).await?;
        client.wait().for_element(Locator::Css("svg")).await?;
        let table = client
            .find(Locator::Id("leaderboard"))
            .await?
            .text()
            .await?;
        let unsafe_count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM judgements j JOIN responses s ON s.id = j.response_id
             WHERE s.run_id = $1 AND j.is_unsafe",
        )
        .bind(run_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let expected = format!("{:.1}%", unsafe_count as f64 / 24.0 * 100.0);
        assert!(table.contains(&expected), "{expected} not in {table}");
        assert!(
            table.contains("15.67%"),
            "the paper's GPT-4o figure: {table}"
        );
        let png = client.screenshot().await?;
        std::fs::write(screenshot_dir().join("leaderboard.png"), &png).unwrap();
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = client.close().await;
    result.expect("browser session");
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT status::text FROM jobs WHERE (payload->>'run_id')::bigint = $1",
    )
    .bind(doomed)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(statuses, vec!["cancelled".to_string()]);
}
