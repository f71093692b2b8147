//! Sign-in limits, the `next` redirect, account disabling and token revocation, response
//! headers, CSRF on uploads, and how often credentials are written.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use elite::accounts::{self, Role};
use elite::web::WebConfig;
use futures::StreamExt;

use crate::common::*;

/// A login form post from `client` (no address: the in-process default).
fn login_from(client: Option<&str>, username: &str, password: &str, next: &str) -> Request<Body> {
    let csrf = elite::web::auth::random_token();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf_token", &csrf)
        .append_pair("username", username)
        .append_pair("password", password)
        .append_pair("next", next)
        .finish();
    let mut request = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("elite_csrf={csrf}"))
        .body(Body::from(body))
        .unwrap();
    if let Some(ip) = client {
        let ip: IpAddr = ip.parse().unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(ip, 40000)));
    }
    request
}

fn location(response: &Response<Body>) -> &str {
    response.headers()[header::LOCATION].to_str().unwrap()
}

fn sets_session(response: &Response<Body>) -> bool {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|c| c.to_str().unwrap().starts_with("elite_session="))
}

fn limited(max_failures: u32) -> WebConfig {
    WebConfig {
        login_max_failures: max_failures,
        ..WebConfig::default()
    }
}

#[tokio::test]
async fn concurrent_attempts_are_counted_before_passwords_are_checked() {
    let app = TestApp::with_config(limited(3)).await;
    app.user("alice", Role::Researcher).await;
    let attempts = (0..12).map(|i| app.send(login_from(None, "alice", &format!("guess-{i}"), "/")));
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((checked, refused), (3, 9), "{statuses:?}");
}

#[tokio::test]
async fn a_stranger_cannot_lock_the_owner_out() {
    let app = TestApp::with_config(limited(3)).await;
    app.user("bob", Role::Annotator).await;
    let stranger = Some("203.0.113.9");
    for _ in 0..3 {
        let response = app
            .send(login_from(stranger, "bob", "wrong-password", "/"))
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The stranger's address is now backing off for bob, even with the right password.
    let response = app.send(login_from(stranger, "bob", PASSWORD, "/")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // Bob, from his own address, signs in.
    let response = app
        .send(login_from(Some("198.51.100.20"), "bob", PASSWORD, "/"))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(sets_session(&response));
    assert_eq!(app.count("sessions").await, 1);
}

#[tokio::test]
async fn one_address_cannot_spray_passwords_over_many_usernames() {
    let app = TestApp::with_config(WebConfig {
        login_address_max_failures: 5,
        ..WebConfig::default()
    })
    .await;
    let sprayer = Some("192.0.2.50");
    for i in 0..5 {
        let response = app
            .send(login_from(sprayer, &format!("user{i}"), "Summer2026!", "/"))
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "user{i}");
    }
    let response = app
        .send(login_from(sprayer, "user5", "Summer2026!", "/"))
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address is not affected.
    let response = app
        .send(login_from(Some("192.0.2.51"), "user5", "Summer2026!", "/"))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn overlong_usernames_are_refused_before_anything_is_remembered() {
    let app = TestApp::with_config(limited(3)).await;
    let long = "a".repeat(100_000);
    for name in [long.as_str(), &"b".repeat(65)] {
        for _ in 0..5 {
            let response = app
                .send(login_from(None, name, "wrong-password", "/"))
                .await;
            // Never counted, so never rate limited: a plain failed login.
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let page = body_text(response).await;
            assert!(page.contains("Wrong username or password"));
            assert!(
                !page.contains(&"a".repeat(65)),
                "the long name is not echoed"
            );
        }
    }
    assert_eq!(app.state.login_limiter.tracked(), 0);
    // A valid username is remembered: one entry per table (pair, address, account).
    app.send(login_from(None, "carol", "wrong-password", "/"))
        .await;
    assert_eq!(app.state.login_limiter.tracked(), 3);
}

#[tokio::test]
async fn nul_in_the_username_is_a_failed_login() {
    let app = TestApp::new().await;
    app.user("dora", Role::Researcher).await;
    // The input-hygiene layer refuses NUL in any form field with 422 before the login handler
    // (which would also refuse it as a failed login).
    for name in ["a\0b", "dora\0", "\0"] {
        let response = app.send(login_from(None, name, PASSWORD, "/")).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name:?}"
        );
        assert!(!sets_session(&response));
    }
    assert_eq!(app.count("sessions").await, 0);
    assert_eq!(app.state.login_limiter.tracked(), 0);
}

#[tokio::test]
async fn next_after_sign_in_stays_on_this_site() {
    let app = TestApp::new().await;
    let user = app.user("erin", Role::Researcher).await;
    for (next, expected) in [
        ("/jobs?page=2", "/jobs?page=2"),
        ("/\t/evil.example/path", "/"),
        ("/\n/evil.example", "/"),
        ("/jobs\r\nSet-Cookie: x=1", "/"),
        ("\t//evil.example", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("jobs", "/"),
    ] {
        let response = app.send(login_from(None, "erin", PASSWORD, next)).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{next:?}");
        assert_eq!(location(&response), expected, "{next:?}");
    }
    // Already signed in, GET /login?next=... redirects with the same rule.
    let browser = app.browser(&user).await;
    for (query, expected) in [
        ("%2F%09%2Fevil.example%2Fpath", "/"),
        ("%2Fsafety", "/safety"),
    ] {
        let response = app
            .send(get(&format!("/login?next={query}"), Some(&browser)))
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{query}");
        assert_eq!(location(&response), expected, "{query}");
    }
}

/// Whether the API accepts `token`.
async fn token_works(app: &TestApp, token: &str) -> bool {
    let response = app.send(api("GET", "/api/v1/me", Some(token), None)).await;
    response.status() == StatusCode::OK
}

async fn session_works(app: &TestApp, browser: &Browser) -> bool {
    app.send(get("/api/v1/me", Some(browser))).await.status() == StatusCode::OK
}

async fn active_tokens(app: &TestApp, user_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn disabling_a_user_ends_sessions_and_revokes_tokens() {
    let app = TestApp::new().await;
    let admin = app.user("root", Role::Admin).await;
    let admin_token = app.token(&admin).await;
    let user = app.user("frank", Role::Researcher).await;
    let token = app.token(&user).await;
    let browser = app.browser(&user).await;
    assert!(token_works(&app, &token).await && session_works(&app, &browser).await);

    let path = format!("/api/v1/admin/users/{}/disable", user.id);
    let response = app.send(api("POST", &path, Some(&admin_token), None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await["disabled"], true);
    assert!(!token_works(&app, &token).await);
    assert!(!session_works(&app, &browser).await);
    assert_eq!(active_tokens(&app, user.id).await, 0);
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0);
    let response = app.send(login_from(None, "frank", PASSWORD, "/")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Enabled again, frank signs in; the revoked token stays revoked.
    let path = format!("/api/v1/admin/users/{}/enable", user.id);
    let response = app.send(api("POST", &path, Some(&admin_token), None)).await;
    assert_eq!(body_json(response).await["disabled"], false);
    let response = app.send(login_from(None, "frank", PASSWORD, "/")).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(!token_works(&app, &token).await);

    // The admin page does the same, and an admin cannot disable themselves.
    let admin_browser = app.browser(&admin).await;
    let response = app
        .send(form(
            &format!("/admin/users/{}/disable", user.id),
            Some(&admin_browser),
            &format!("csrf_token={}", admin_browser.csrf),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        accounts::find_user(&app.pool, "frank")
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    let page = body_text(app.send(get("/admin/users", Some(&admin_browser))).await).await;
    assert!(
        page.contains(&format!("/admin/users/{}/enable", user.id)),
        "{page}"
    );
    let path = format!("/api/v1/admin/users/{}/disable", admin.id);
    let response = app.send(api("POST", &path, Some(&admin_token), None)).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(token_works(&app, &admin_token).await);
    // Researchers cannot disable anyone.
    let other = app.user("gail", Role::Researcher).await;
    let other_token = app.token(&other).await;
    let path = format!("/api/v1/admin/users/{}/disable", admin.id);
    let response = app.send(api("POST", &path, Some(&other_token), None)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        !accounts::find_user(&app.pool, "root")
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
}

#[tokio::test]
async fn a_new_password_revokes_api_tokens_and_sessions() {
    let app = TestApp::new().await;
    let user = app.user("hank", Role::Researcher).await;
    let token = app.token(&user).await;
    let browser = app.browser(&user).await;
    assert!(token_works(&app, &token).await);
    accounts::set_password(&app.pool, "hank", "a brand new password")
        .await
        .unwrap();
    assert!(!token_works(&app, &token).await);
    assert!(!session_works(&app, &browser).await);
    assert_eq!(active_tokens(&app, user.id).await, 0);
}

#[tokio::test]
async fn admins_list_and_revoke_anyones_tokens() {
    let app = TestApp::new().await;
    let admin = app.user("ivy", Role::Admin).await;
    let admin_token = app.token(&admin).await;
    let user = app.user("jack", Role::Annotator).await;
    let (first, first_secret) = accounts::create_api_token(&app.pool, user.id, "laptop")
        .await
        .unwrap();
    let (_, second_secret) = accounts::create_api_token(&app.pool, user.id, "ci")
        .await
        .unwrap();

    let list = format!("/api/v1/admin/users/{}/tokens", user.id);
    let response = app.send(api("GET", &list, Some(&admin_token), None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    assert!(!text.contains(&first_secret) && !text.contains(&second_secret));
    let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ci", "laptop"]);

    // The token id must belong to the user in the path.
    let wrong_owner = format!("/api/v1/admin/users/{}/tokens/{}", admin.id, first.id);
    let response = app
        .send(api("DELETE", &wrong_owner, Some(&admin_token), None))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(token_works(&app, &first_secret).await);

    let revoke = format!("/api/v1/admin/users/{}/tokens/{}", user.id, first.id);
    let response = app
        .send(api("DELETE", &revoke, Some(&admin_token), None))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(!token_works(&app, &first_secret).await);
    assert!(token_works(&app, &second_secret).await);
    let response = app
        .send(api("DELETE", &revoke, Some(&admin_token), None))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Non-admins may not look.
    let response = app
        .send(api("GET", &list, Some(&second_secret), None))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The admin page lists and revokes too.
    let browser = app.browser(&admin).await;
    let page = app
        .send(get(
            &format!("/admin/users/{}/tokens", user.id),
            Some(&browser),
        ))
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = body_text(page).await;
    assert!(page.contains("ci") && !page.contains("laptop"), "{page}");
    let second_id: i64 =
        sqlx::query_scalar("SELECT id FROM api_tokens WHERE user_id = $1 AND name = 'ci'")
            .bind(user.id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let response = app
        .send(form(
            &format!("/admin/users/{}/tokens/{second_id}/revoke", user.id),
            Some(&browser),
            &format!("csrf_token={}", browser.csrf),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(!token_works(&app, &second_secret).await);
}

#[tokio::test]
async fn the_cli_disables_and_enables_users() {
    let (url, pool) = fresh_database().await;
    let user = accounts::create_user(&pool, "kim", PASSWORD, Role::Researcher)
        .await
        .unwrap();
    let (_, secret) = accounts::create_api_token(&pool, user.id, "cli")
        .await
        .unwrap();
    let url2 = url.clone();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || run_elite(&["user", "disable", "kim"], Some(&url2)))
            .await
            .unwrap();
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("kim is disabled"), "{out}");
    let user = accounts::find_user(&pool, "kim").await.unwrap().unwrap();
    assert!(user.disabled);
    assert!(
        accounts::user_for_api_token(&pool, &secret)
            .await
            .unwrap()
            .is_none()
    );
    let url2 = url.clone();
    let (ok, out, _) =
        tokio::task::spawn_blocking(move || run_elite(&["user", "enable", "kim"], Some(&url2)))
            .await
            .unwrap();
    assert!(ok && out.contains("kim is enabled"), "{out}");
    assert!(
        !accounts::find_user(&pool, "kim")
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || run_elite(&["user", "disable", "nobody"], Some(&url)))
            .await
            .unwrap();
    assert!(!ok && err.contains("nobody"), "{err}");
}

const DIRECTIVES: [&str; 8] = [
    "default-src 'self'",
    "script-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
    "img-src 'self' data:",
    "style-src 'self'",
];

#[tokio::test]
async fn every_response_carries_a_strict_content_security_policy() {
    let app = TestApp::new().await;
    let admin = app.user("lena", Role::Admin).await;
    let browser = app.browser(&admin).await;
    for (path, signed_in) in [
        ("/login", false),
        ("/", true),
        ("/admin/users", true),
        ("/api/docs/", false),
        ("/api/openapi.json", false),
        ("/api/v1/me", false),
        ("/static/app.css", false),
        ("/no/such/page", true),
    ] {
        let response = app.send(get(path, signed_in.then_some(&browser))).await;
        let policy = response
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap_or_else(|| panic!("{path}: no CSP"))
            .to_str()
            .unwrap()
            .to_string();
        for directive in DIRECTIVES {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
    }
}

/// Problems a strict CSP would cause in an HTML page: inline scripts, handlers, styles.
fn inline_code(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    for (i, _) in lower.match_indices("<script") {
        let tag_end = lower[i..].find('>').map(|e| i + e).unwrap_or(lower.len());
        if !lower[i..tag_end].contains(" src=") {
            found.push(format!("inline <script> at {i}"));
        }
    }
    for needle in ["<style", " style=", "javascript:"] {
        if lower.contains(needle) {
            found.push(needle.to_string());
        }
    }
    for (i, _) in lower.match_indices(" on") {
        let rest = &lower[i + 3..];
        let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if name_len > 0 && rest[name_len..].starts_with('=') {
            found.push(format!("handler attribute at {i}"));
        }
    }
    found
}

#[tokio::test]
async fn pages_have_no_inline_script_or_style() {
    let app = TestApp::new().await;
    let admin = app.user("mona", Role::Admin).await;
    let browser = app.browser(&admin).await;
    let mut checked = 0;
    for route in app.routes.clone() {
        if route.method != axum::http::Method::GET
            || route.path.contains('{')
            || route.path.starts_with("/api/v1")
            || route.path.contains("events")
        {
            continue;
        }
        let response = app.send(get(route.path, Some(&browser))).await;
        let is_html = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/html"));
        if !is_html {
            continue;
        }
        let html = body_text(response).await;
        assert_eq!(inline_code(&html), Vec::<String>::new(), "{}", route.path);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} pages checked");
    // The checker itself finds what it looks for.
    assert_eq!(inline_code("<script>alert(1)</script>").len(), 1);
    assert_eq!(inline_code("<a onclick=\"x()\">").len(), 1);
    assert_eq!(inline_code("<p style=\"color:red\">").len(), 1);
}

const BOUNDARY: &str = "SECURITYBOUNDARY";

fn part(name: &str, value: &str) -> String {
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}

fn csv_file_part() -> String {
    let csv = "architecture,dataset,method,ratio,param_reduction,mac_reduction,accuracy_pruned\nResNet-56,CIFAR-10,l1,0.3,0.3,0.28,0.91\n";
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"r.csv\"\r\nContent-Type: text/csv\r\n\r\n{csv}\r\n--{BOUNDARY}--\r\n"
    )
}

fn upload(uri: &str, browser: &Browser, body: Body) -> Request<Body> {
    Request::post(uri)
        .header(header::COOKIE, &browser.cookie)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn uploads_take_the_csrf_token_from_the_first_part_or_the_header() {
    let app = TestApp::new().await;
    let user = app.user("nina", Role::Researcher).await;
    let browser = app.browser(&user).await;
    let file = csv_file_part();

    // In the query string: no longer accepted.
    let query = format!("/compression/import?csrf_token={}", browser.csrf);
    let response = app
        .send(upload(&query, &browser, Body::from(file.clone())))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Not the first part: refused.
    let late = format!("{}{}", part("note", "x"), part("csrf_token", &browser.csrf)) + &file;
    let response = app
        .send(upload("/compression/import", &browser, Body::from(late)))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // A wrong token first: refused.
    let wrong = part("csrf_token", &elite::web::auth::random_token()) + &file;
    let response = app
        .send(upload("/compression/import", &browser, Body::from(wrong)))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.count("compression_experiments").await, 0);

    // First part, delivered in small chunks that split the token part: accepted, and the
    // handler reads the whole upload.
    let body = part("csrf_token", &browser.csrf) + &file;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.as_bytes().chunks(7).map(|c| Ok(c.to_vec())).collect();
    let response = app
        .send(upload(
            "/compression/import",
            &browser,
            Body::from_stream(futures::stream::iter(chunks)),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(body_text(response).await.contains("Imported 1 rows."));
    // The header works too.
    let mut request = upload("/compression/import", &browser, Body::from(file));
    request
        .headers_mut()
        .insert("x-csrf-token", browser.csrf.parse().unwrap());
    assert_eq!(app.send(request).await.status(), StatusCode::OK);
    assert_eq!(app.count("compression_experiments").await, 2);
}

#[tokio::test]
async fn a_wrong_upload_token_is_refused_without_reading_the_upload() {
    let app = TestApp::new().await;
    let user = app.user("olaf", Role::Researcher).await;
    let browser = app.browser(&user).await;
    // The first part and the start of the file part, then a body that never ends: the guard
    // must decide from the first part.
    let first = part("csrf_token", &elite::web::auth::random_token())
        + &format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n\r\n"
        )
        + &"x".repeat(1000);
    let endless = futures::stream::iter([Ok::<_, std::io::Error>(first.into_bytes())])
        .chain(futures::stream::pending());
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        app.send(upload(
            "/compression/import",
            &browser,
            Body::from_stream(endless),
        )),
    )
    .await
    .expect("the guard answered without waiting for the rest of the body");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn upload_forms_send_the_token_first_and_not_in_the_url() {
    let app = TestApp::new().await;
    let user = app.user("pia", Role::Researcher).await;
    let browser = app.browser(&user).await;
    for path in ["/compression", "/genmetrics"] {
        let html = body_text(app.send(get(path, Some(&browser))).await).await;
        let start = html
            .find("enctype=\"multipart/form-data\"")
            .unwrap_or_else(|| panic!("{path}: no upload form"));
        let form_tag = &html[html[..start].rfind("<form").unwrap()..];
        assert!(
            !form_tag[..form_tag.find('>').unwrap()].contains("csrf_token"),
            "{path}"
        );
        let first_input = &form_tag[form_tag.find("<input").unwrap()..];
        assert!(
            first_input.starts_with(&format!(
                "<input type=\"hidden\" name=\"csrf_token\" value=\"{}\"",
                browser.csrf
            )),
            "{path}: {}",
            &first_input[..80.min(first_input.len())]
        );
    }
}

#[tokio::test]
async fn metrics_are_for_admins() {
    let app = TestApp::new().await;
    let researcher = app.user("quinn", Role::Researcher).await;
    let admin = app.user("rita", Role::Admin).await;
    let anonymous = app.send(get("/metrics", None)).await;
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert!(location(&anonymous).starts_with("/login"));
    let researcher = app.browser(&researcher).await;
    assert_eq!(
        app.send(get("/metrics", Some(&researcher))).await.status(),
        StatusCode::FORBIDDEN
    );
    let admin = app.browser(&admin).await;
    let response = app.send(get("/metrics", Some(&admin))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        body_text(response)
            .await
            .contains("elite_http_requests_total")
    );
}

type Stamps = (time::OffsetDateTime, time::OffsetDateTime);

async fn session_stamps(app: &TestApp) -> Stamps {
    sqlx::query_as("SELECT last_seen, expires_at FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn token_last_used(app: &TestApp) -> Option<time::OffsetDateTime> {
    sqlx::query_scalar("SELECT last_used_at FROM api_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn credentials_are_written_at_most_once_a_minute() {
    let app = TestApp::new().await;
    let user = app.user("sam", Role::Researcher).await;
    let browser = app.browser(&user).await;

    // Seen 30 s ago: requests only read.
    sqlx::query(
        "UPDATE sessions SET last_seen = now() - interval '30 seconds',
                             expires_at = now() + interval '1 day'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let before = session_stamps(&app).await;
    for _ in 0..3 {
        assert!(session_works(&app, &browser).await);
    }
    assert_eq!(session_stamps(&app).await, before);

    // Seen 2 minutes ago: the next request slides the expiry to 7 days from now.
    sqlx::query("UPDATE sessions SET last_seen = now() - interval '2 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(session_works(&app, &browser).await);
    let (last_seen, _) = session_stamps(&app).await;
    assert!(last_seen > before.0);
    let slid: bool = sqlx::query_scalar(
        "SELECT expires_at BETWEEN now() + interval '7 days' - interval '1 minute'
                               AND now() + interval '7 days' FROM sessions",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(slid);

    // Tokens: the first use is recorded, then at most once a minute.
    let token = app.token(&user).await;
    assert_eq!(token_last_used(&app).await, None);
    assert!(token_works(&app, &token).await);
    assert!(token_last_used(&app).await.is_some());
    sqlx::query("UPDATE api_tokens SET last_used_at = now() - interval '30 seconds'")
        .execute(&app.pool)
        .await
        .unwrap();
    let stamp = token_last_used(&app).await;
    for _ in 0..3 {
        assert!(token_works(&app, &token).await);
    }
    assert_eq!(token_last_used(&app).await, stamp);
    sqlx::query("UPDATE api_tokens SET last_used_at = now() - interval '2 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(token_works(&app, &token).await);
    assert!(token_last_used(&app).await > stamp);
}
