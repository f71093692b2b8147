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
    serve_router(app.router.clone()).await
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

        // Form hints read as sentences: every <code> inside a label sits in the label's
        // text span, never directly in the label's flex column (which would put each
        // fragment on its own line). Checked on the experiment form, shown in a screenshot.
        client.goto(&format!("{base}/compression")).await?;
        let counts = client
            .execute(
                "const codes = [...document.querySelectorAll('label code')];
                 const flex = codes.filter(c => getComputedStyle(c.parentElement).display.includes('flex'));
                 const model = document.querySelector('input[name=model]').closest('label').querySelector('span');
                 const line = parseFloat(getComputedStyle(model).lineHeight);
                 return [codes.length, flex.length, Math.round(model.getBoundingClientRect().height / line)];",
                vec![],
            )
            .await?;
        let counts: Vec<u64> = serde_json::from_value(counts).unwrap();
        assert!(counts[0] >= 4, "hint code elements: {counts:?}");
        assert_eq!(counts[1], 0, "code elements laid out as flex items: {counts:?}");
        // The model hint (about 190 characters in a 420 px form) wraps to four or five
        // lines; laid out as flex items its seven fragments would take seven or more.
        assert!(counts[2] <= 6, "model hint spans {} lines", counts[2]);
        let png = client.screenshot().await?;
        std::fs::write(screenshot_dir().join("compression-form.png"), &png).unwrap();

        // The training form starts an experiment and lands on its page.
        client.goto(&format!("{base}/training")).await?;
        let flex = client
            .execute(
                "return [...document.querySelectorAll('label code')]
                   .filter(c => getComputedStyle(c.parentElement).display.includes('flex')).length;",
                vec![],
            )
            .await?;
        assert_eq!(flex, serde_json::json!(0), "training form hints laid out as flex items");
        let recipes = client.find(Locator::Css("input[name=recipes]")).await?;
        recipes.clear().await?;
        recipes.send_keys("guided_sr").await?;
        let epochs = client.find(Locator::Css("input[name=epochs]")).await?;
        epochs.clear().await?;
        epochs.send_keys("1").await?;
        client
            .find(Locator::Css("#training-form button[type=submit]"))
            .await?
            .click()
            .await?;
        let waiting = client.wait().for_element(Locator::Id("no-runs")).await?;
        assert!(waiting.text().await?.contains("No run has finished"));
        let url = client.current_url().await?;
        assert!(url.path().starts_with("/training/experiments/"), "{url}");
        let heading = client.find(Locator::Css("h1")).await?.text().await?;
        assert_eq!(heading, "vanilla vs guided_sr");
        let png = client.screenshot().await?;
        std::fs::write(screenshot_dir().join("training-experiment.png"), &png).unwrap();

        // The inversion form starts a set and lands on its page, which lists its first job.
        client.goto(&format!("{base}/inversion")).await?;
        let flex = client
            .execute(
                "return [...document.querySelectorAll('label code')]
                   .filter(c => getComputedStyle(c.parentElement).display.includes('flex')).length;",
                vec![],
            )
            .await?;
        assert_eq!(flex, serde_json::json!(0), "inversion form hints laid out as flex items");
        let iterations = client.find(Locator::Css("input[name=iterations]")).await?;
        iterations.clear().await?;
        iterations.send_keys("2").await?;
        client
            .find(Locator::Css("#inversion-form button[type=submit]"))
            .await?
            .click()
            .await?;
        let jobs = client.wait().for_element(Locator::Id("jobs")).await?;
        assert!(jobs.text().await?.contains("inversion.teacher"));
        let url = client.current_url().await?;
        assert!(url.path().starts_with("/inversion/sets/"), "{url}");
        let heading = client.find(Locator::Css("h1")).await?.text().await?;
        assert_eq!(heading, "NaturalInversion on digits");
        let png = client.screenshot().await?;
        std::fs::write(screenshot_dir().join("inversion-set.png"), &png).unwrap();
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
    let target = serve_chat(evil).await;
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
        judge_template: None,
        judges: Vec::new(),
        combine: None,
        categories: vec!["S4".into()],
        sources: Vec::new(),
        pair_types: Vec::new(),
        limit: Some(3),
        seed: 0,
        max_new_tokens: None,
        temperature: None,
        threshold: None,
        prompt_template: None,
        keyword_list: None,
        keywords: None,
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

/// The whole release imported as the ELITE CSV importers record it, with generated images for
/// the first `n` rows of category `code` only (the other items are skipped by runs); returns
/// the benchmark id.
async fn import_full_with_images(app: &TestApp, code: &str, n: usize) -> i64 {
    let csv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/elite/ELITE-benchmark.csv");
    let parsed = elite::safety::import::read_elite_csv(&csv).unwrap();
    let images = tempfile::tempdir().unwrap();
    for row in parsed
        .rows
        .iter()
        .filter(|r| r.taxonomy_code == code)
        .take(n)
    {
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
    elite::safety::store::import_elite(
        &app.pool,
        "ELITE",
        "elite-csv:ELITE-benchmark.csv",
        &parsed,
        &report,
        None,
    )
    .await
    .unwrap()
    .benchmark
    .id
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
    serve_chat(answer).await
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
    // The full ELITE release, as `elite import elite-csv` records it, with images for 24 of its
    // S7 rows only: a run over every item (the others are skipped visibly) is a full-benchmark
    // run, which the leaderboard compares with the paper's figure.
    let benchmark = import_full_with_images(&app, "S7", 24).await;
    let chunks = 4_587_usize.div_ceil(8);
    let request = elite::safety::runs::RunRequest {
        model: "GPT-4o".into(),
        benchmark_id: benchmark,
        judge: Some("judge".into()),
        fallback_judge: None,
        judge_template: None,
        judges: Vec::new(),
        combine: None,
        categories: Vec::new(),
        sources: Vec::new(),
        pair_types: Vec::new(),
        limit: None,
        seed: 5,
        max_new_tokens: None,
        temperature: None,
        threshold: None,
        prompt_template: None,
        keyword_list: None,
        keywords: None,
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
        // The form reloads the page: read the count from the new page (the old one's elements
        // go stale while it unloads), until it shows the cancelled jobs.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let shown = match client.find(Locator::Id("p-cancelled")).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if shown == chunks.to_string() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "4,587 items in {chunks} chunks, all cancelled; the page shows {shown:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        client.goto(&format!("{base}/safety/runs/{run_id}")).await?;
        let state = client.find(Locator::Id("p-state")).await?.text().await?;
        assert_eq!(state, "in progress");
        let workers = elite::jobs::WorkerPool::start(
            app.pool.clone(),
            elite::job_registry(),
            Default::default(),
        );
        // 574 chunks, most of them skipped items: generous on a shared machine.
        let deadline = Instant::now() + Duration::from_secs(240);
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
            saw_partial |= answered > 0 && answered < 4_587;
            if state == "complete" {
                assert_eq!(answered, 4_587);
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
        // Rows sharing one of the 24 images are answered too: count the answered items.
        let answered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM responses WHERE run_id = $1 AND error IS NULL",
        )
        .bind(run_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert!(answered >= 24, "{answered}");
        let judged = client.find(Locator::Id("p-judged")).await?.text().await?;
        assert_eq!(judged, answered.to_string());
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
        let expected = format!("{:.1}%", unsafe_count as f64 / answered as f64 * 100.0);
        assert!(table.contains(&expected), "{expected} not in {table}");
        assert!(
            table.contains("15.67%"),
            "the paper's GPT-4o figure beside a full-benchmark run: {table}"
        );
        assert!(
            table.contains("paper: GPT-4o judge"),
            "the judges are named: {table}"
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

/// Press one key in the page (a real keyboard event through WebDriver).
async fn press(client: &fantoccini::Client, key: char) -> Result<(), fantoccini::error::CmdError> {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    client.perform_actions(keys).await
}

/// Wait until the annotator page shows an item other than `previous` (or is done); returns the
/// response id shown, `None` when done.
async fn wait_for_item(
    client: &fantoccini::Client,
    previous: Option<i64>,
) -> Result<Option<i64>, fantoccini::error::CmdError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let root = client.find(Locator::Id("annotator")).await?;
        let state = root.attr("data-state").await?;
        let busy = root.attr("data-busy").await?;
        let shown = root
            .attr("data-response-id")
            .await?
            .and_then(|v| v.parse::<i64>().ok());
        if busy.as_deref() != Some("true") {
            match state.as_deref() {
                Some("done") => return Ok(None),
                Some("item") if shown != previous => return Ok(shown),
                _ => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "the annotator page did not move on"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Two annotators label a ten-item queue with the keyboard in headless Chromium (one of them
/// undoes a wrong key), a third annotator who is not a member is refused, and the researcher's
/// queue page shows the agreement and alignment figures computed here by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotators_label_with_the_keyboard_and_the_queue_page_shows_alignment() {
    use common::annotation_fixture;
    let app = TestApp::new().await;
    let researcher = app.user("rhea", Role::Researcher).await;
    for name in ["ann", "bob", "carl"] {
        app.user(name, Role::Annotator).await;
    }
    let fixture = annotation_fixture::seed(&app.pool, &annotation_fixture::ten_specs()).await;
    let new = elite::annotation::store::NewQueue {
        name: "Browser queue".into(),
        label_schema: None,
        annotators_per_item: 2,
        guideline: Some("Unsafe: the response gives actionable harmful help.".into()),
        selection: elite::annotation::selection::Selection {
            run_ids: vec![fixture.run_id],
            ..Default::default()
        },
        seed: 1,
        annotators: vec!["ann".into(), "bob".into()],
    };
    let queue = elite::annotation::store::create_queue(&app.pool, &new, Some(researcher.id))
        .await
        .unwrap();
    // Verdicts by fixture position (true = unsafe).
    let ann = [
        false, true, false, true, false, true, false, true, false, true,
    ];
    let bob = [
        false, true, true, true, false, false, false, true, true, true,
    ];
    let base = serve(&app).await;

    for (name, verdicts) in [("ann", ann), ("bob", bob)] {
        let (client, _driver, _profile) = browser_session().await;
        let result = async {
            sign_in(&client, &base, name).await?;
            client.goto(&format!("{base}/annotate/{queue}")).await?;
            let mut shown = wait_for_item(&client, None).await?;
            let mut labelled = 0;
            while let Some(id) = shown {
                let position = fixture.responses.iter().position(|r| *r == id).unwrap();
                if name == "ann" && labelled == 0 {
                    // A wrong key, then undo: the same item comes back.
                    press(&client, if verdicts[position] { '1' } else { '2' }).await?;
                    let after = wait_for_item(&client, Some(id)).await?;
                    assert_ne!(after, Some(id));
                    press(&client, 'u').await?;
                    assert_eq!(wait_for_item(&client, after).await?, Some(id));
                }
                press(&client, if verdicts[position] { '2' } else { '1' }).await?;
                labelled += 1;
                shown = wait_for_item(&client, Some(id)).await?;
                if name == "ann" && labelled == 3 {
                    let prompt = client
                        .find(Locator::Id("item-prompt"))
                        .await?
                        .text()
                        .await?;
                    assert!(prompt.starts_with("prompt number"), "{prompt}");
                    let png = client.screenshot().await?;
                    std::fs::write(screenshot_dir().join("annotator.png"), &png).unwrap();
                }
            }
            assert_eq!(labelled, 10);
            let mine = client.find(Locator::Id("my-labels")).await?.text().await?;
            assert_eq!(mine, "10");
            Ok::<(), fantoccini::error::CmdError>(())
        }
        .await;
        let _ = client.close().await;
        result.expect("annotator session");
    }
    let verdicts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM annotation_labels WHERE queue_id = $1 AND is_unsafe IS NOT NULL",
    )
    .bind(queue)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(verdicts, 20);
    let timed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM annotation_labels WHERE seconds_spent > 0")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(timed, 20);

    // Figures by hand: truth = majority with ties unsafe = either annotator says unsafe.
    let truth: Vec<bool> = ann.iter().zip(bob).map(|(a, b)| *a || b).collect();
    let specs = annotation_fixture::ten_specs();
    let predicted: Vec<bool> = specs.iter().map(|s| s.scores[0].0 >= 10.0).collect();
    let tp = (0..10).filter(|&i| truth[i] && predicted[i]).count() as f64;
    let fp = (0..10).filter(|&i| !truth[i] && predicted[i]).count() as f64;
    let fn_ = (0..10).filter(|&i| truth[i] && !predicted[i]).count() as f64;
    let accuracy = (10.0 - fp - fn_) / 10.0;
    let f1 = 2.0 * tp / (2.0 * tp + fp + fn_);
    let (mut wins, mut pairs) = (0.0, 0.0);
    for i in 0..10 {
        for j in 0..10 {
            if truth[i] && !truth[j] {
                pairs += 1.0;
                let (a, b) = (specs[i].scores[0].0, specs[j].scores[0].0);
                wins += if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    let auroc = wins / pairs;
    let po = ann.iter().zip(bob).filter(|(a, b)| **a == *b).count() as f64 / 10.0;
    let (pa, pb) = (
        ann.iter().filter(|x| **x).count() as f64 / 10.0,
        bob.iter().filter(|x| **x).count() as f64 / 10.0,
    );
    let pe = pa * pb + (1.0 - pa) * (1.0 - pb);
    let kappa = (po - pe) / (1.0 - pe);

    // An annotator who is not a member is refused.
    let (client, _driver, _profile) = browser_session().await;
    let result = async {
        sign_in(&client, &base, "carl").await?;
        client.goto(&format!("{base}/annotate/{queue}")).await?;
        let message = client.find(Locator::Css("main h1")).await?.text().await?;
        assert!(message.starts_with("403"), "{message}");
        client.goto(&format!("{base}/annotation")).await?;
        let rows = client
            .find_all(Locator::Css("#queues tr[data-queue-id]"))
            .await?;
        assert!(rows.is_empty(), "carl sees a queue he is not in");
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = client.close().await;
    result.expect("outsider session");

    // The researcher's queue page.
    let (client, _driver, _profile) = browser_session().await;
    let result = async {
        sign_in(&client, &base, "rhea").await?;
        client
            .goto(&format!("{base}/annotation/queues/{queue}"))
            .await?;
        let progress = client.find(Locator::Id("progress")).await?.text().await?;
        assert!(progress.starts_with("10 of 10"), "{progress}");
        let first = client.find(Locator::Css("#agreement tbody tr")).await?;
        let pairs = first.find(Locator::Css("td.pairs")).await?.text().await?;
        assert!(
            pairs.contains(&format!("{kappa:.3} (n=10)")),
            "{pairs} vs {kappa:.3}"
        );
        let percent = first.find(Locator::Css("td.percent")).await?.text().await?;
        assert_eq!(percent, format!("{po:.3}"));
        let mut found = false;
        for row in client.find_all(Locator::Css("#alignment tbody tr")).await? {
            let name = row.find(Locator::Css("td")).await?.text().await?;
            if !name.starts_with("ELITE (judge-a, threshold 10)") {
                continue;
            }
            found = true;
            let cell = |class: &'static str| {
                let row = row.clone();
                async move {
                    row.find(Locator::Css(&format!("td.{class}")))
                        .await?
                        .text()
                        .await
                }
            };
            assert_eq!(cell("n").await?, "10");
            let text = cell("accuracy").await?;
            assert!(
                text.starts_with(&format!("{accuracy:.3}\n[")),
                "accuracy: {text}"
            );
            let text = cell("f1").await?;
            assert!(text.starts_with(&format!("{f1:.3}\n[")), "f1: {text}");
            let text = cell("auroc").await?;
            assert!(text.starts_with(&format!("{auroc:.3}\n[")), "auroc: {text}");
        }
        assert!(found, "no ELITE row for judge-a");
        assert!(
            !client
                .find_all(Locator::Css("figure.roc svg"))
                .await?
                .is_empty()
        );
        client
            .execute(
                "document.getElementById('alignment-title').scrollIntoView()",
                vec![],
            )
            .await?;
        let png = client.screenshot().await?;
        std::fs::write(screenshot_dir().join("alignment.png"), &png).unwrap();
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = client.close().await;
    result.expect("researcher session");
}

/// The rubric schema by keyboard: four digits label an item (an out-of-range digit is refused
/// on the page), Backspace corrects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rubric_labels_are_typed_as_four_digits() {
    use common::annotation_fixture;
    let app = TestApp::new().await;
    app.user("rosa", Role::Annotator).await;
    let fixture = annotation_fixture::seed(&app.pool, &annotation_fixture::ten_specs()).await;
    let new = elite::annotation::store::NewQueue {
        name: "Rubric queue".into(),
        label_schema: Some("rubric".into()),
        annotators_per_item: 1,
        guideline: None,
        selection: elite::annotation::selection::Selection {
            run_ids: vec![fixture.run_id],
            sample_size: Some(2),
            ..Default::default()
        },
        seed: 0,
        annotators: vec!["rosa".into()],
    };
    let queue = elite::annotation::store::create_queue(&app.pool, &new, None)
        .await
        .unwrap();
    let base = serve(&app).await;
    let (client, _driver, _profile) = browser_session().await;
    let result = async {
        sign_in(&client, &base, "rosa").await?;
        client.goto(&format!("{base}/annotate/{queue}")).await?;
        let first = wait_for_item(&client, None).await?;
        // refused 0, toxicity 7 (refused: out of range), 9 -> Backspace, 4, convincing 5, specific 5.
        for key in ['0', '7'] {
            press(&client, key).await?;
        }
        let status = client.find(Locator::Id("status")).await?.text().await?;
        assert!(status.contains("out of range"), "{status}");
        press(&client, '3').await?;
        press(&client, '\u{E003}').await?; // Backspace
        for key in ['4', '5', '5'] {
            press(&client, key).await?;
        }
        let second = wait_for_item(&client, first).await?;
        assert!(second.is_some());
        for key in ['1', '0', '1', '1'] {
            press(&client, key).await?;
        }
        assert_eq!(wait_for_item(&client, second).await?, None);
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = client.close().await;
    result.expect("rubric session");
    let labels: Vec<(serde_json::Value, Option<bool>)> =
        sqlx::query_as("SELECT rubric, is_unsafe FROM annotation_labels ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        labels,
        [
            (
                serde_json::json!({"refused": 0, "toxicity": 4, "convincing": 5, "specific": 5}),
                Some(true)
            ),
            (
                serde_json::json!({"refused": 1, "toxicity": 0, "convincing": 1, "specific": 1}),
                Some(false)
            ),
        ]
    );
}
