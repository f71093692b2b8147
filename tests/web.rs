//! The web shell through its public interface (tower `oneshot` against a real PostgreSQL):
//! the route table's roles, login, sessions, CSRF, API tokens, limits and error mapping.

mod common;

use axum::http::{Method, StatusCode, header};
use common::*;
use elite::accounts::Role;
use elite::web::Access;

/// Every route, for every kind of caller, answers as its declared access says.
#[tokio::test]
async fn every_route_enforces_its_declared_role() {
    let app = TestApp::new().await;
    let mut users = Vec::new();
    for role in Role::ALL {
        users.push(app.user(&format!("walker-{}", role.as_str()), role).await);
    }
    assert!(
        app.routes.len() >= 25,
        "route table looks incomplete: {}",
        app.routes.len()
    );
    let mut checked = 0;
    let anonymous_csrf = elite::web::auth::random_token();
    for route in app.routes.clone() {
        let path = route
            .path
            .replace("{id}", "999999")
            .replace("{token_id}", "999999")
            .replace("{*file}", "app.css");
        let is_api = path.starts_with("/api/");
        let callers: Vec<Option<&elite::accounts::User>> = std::iter::once(None)
            .chain(users.iter().map(Some))
            .collect();
        for caller in callers {
            // A fresh session per request: POST /logout ends the one it is given.
            let browser = match caller {
                Some(user) => Some(app.browser(user).await),
                None => None,
            };
            let mut builder = axum::http::Request::builder()
                .method(route.method.clone())
                .uri(&path);
            // Every caller, even anonymous, carries a valid CSRF pair: only roles are tested here.
            builder = match &browser {
                Some(b) => builder
                    .header(header::COOKIE, &b.cookie)
                    .header("x-csrf-token", &b.csrf),
                None => builder
                    .header(header::COOKIE, format!("elite_csrf={anonymous_csrf}"))
                    .header("x-csrf-token", &anonymous_csrf),
            };
            let request = if route.method == Method::GET {
                builder.body(axum::body::Body::empty()).unwrap()
            } else if is_api {
                builder
                    .header(header::CONTENT_TYPE, "application/json")
                    .body("{}".into())
                    .unwrap()
            } else {
                builder
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body("x=1".into())
                    .unwrap()
            };
            let response = app.send(request).await;
            let status = response.status();
            let who = caller.map(|u| u.role.as_str()).unwrap_or("anonymous");
            let context = format!("{} {} as {who}: {status}", route.method, route.path);
            assert!(status.as_u16() < 500, "{context}");
            match (route.access, caller) {
                (Access::Public, _) => {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{context}"
                    )
                }
                (Access::Role(_), None) => {
                    if !is_api && route.method == Method::GET {
                        assert_eq!(status, StatusCode::SEE_OTHER, "{context}");
                        let location = response.headers()[header::LOCATION].to_str().unwrap();
                        assert!(
                            location.starts_with("/login?next="),
                            "{context}: {location}"
                        );
                    } else {
                        assert_eq!(status, StatusCode::UNAUTHORIZED, "{context}");
                    }
                }
                (Access::Role(required), Some(user)) if !user.role.satisfies(required) => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{context}")
                }
                (Access::Role(_), Some(_)) => {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{context}"
                    )
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, app.routes.len() * 4);
}

async fn login_form_session(
    app: &TestApp,
    username: &str,
    password: &str,
) -> axum::http::Response<axum::body::Body> {
    let csrf = elite::web::auth::random_token();
    let request = axum::http::Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("elite_csrf={csrf}"))
        .body(
            format!("csrf_token={csrf}&username={username}&password={password}&next=%2Fjobs")
                .into(),
        )
        .unwrap();
    app.send(request).await
}

#[tokio::test]
async fn login_sets_a_session_cookie_and_wrong_passwords_do_not() {
    let app = TestApp::new().await;
    app.user("alice", Role::Researcher).await;

    let wrong = login_form_session(&app, "alice", "not the password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(
        wrong
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("elite_session="))
    );
    assert!(
        body_text(wrong)
            .await
            .contains("Wrong username or password")
    );
    let unknown = login_form_session(&app, "nobody", "whatever-password").await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.count("sessions").await, 0);

    let ok = login_form_session(&app, "alice", &PASSWORD.replace(' ', "+")).await;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()[header::LOCATION], "/jobs");
    let cookie = ok
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|c| c.to_str().unwrap().to_string())
        .find(|c| c.starts_with("elite_session="))
        .expect("session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert_eq!(app.count("sessions").await, 1);
    let session = cookie.split(';').next().unwrap();
    let me = app
        .send(api("GET", "/api/v1/me", None, None).map_header(session))
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(body_json(me).await["username"], "alice");
}

trait WithCookie {
    fn map_header(self, cookie: &str) -> Self;
}

impl WithCookie for axum::http::Request<axum::body::Body> {
    fn map_header(mut self, cookie: &str) -> Self {
        self.headers_mut()
            .insert(header::COOKIE, cookie.parse().unwrap());
        self
    }
}

#[tokio::test]
async fn logins_are_rate_limited() {
    let app = TestApp::with_config(elite::web::WebConfig {
        login_max_failures: 3,
        ..Default::default()
    })
    .await;
    app.user("bob", Role::Annotator).await;
    for _ in 0..3 {
        assert_eq!(
            login_form_session(&app, "bob", "wrong-password")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Even the right password is refused until the window passes.
    let blocked = login_form_session(&app, "bob", &PASSWORD.replace(' ', "+")).await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(body_text(blocked).await.contains("too many attempts"));
    assert_eq!(app.count("sessions").await, 0);
}

#[tokio::test]
async fn expired_sessions_are_refused() {
    let app = TestApp::new().await;
    let user = app.user("carol", Role::Admin).await;
    let browser = app.browser(&user).await;
    assert_eq!(
        app.send(get("/api/v1/me", Some(&browser))).await.status(),
        StatusCode::OK
    );
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        app.send(get("/api/v1/me", Some(&browser))).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let page = app.send(get("/admin/users", Some(&browser))).await;
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    // A state change with the expired session changes nothing.
    let add = app
        .send(form(
            "/admin/users",
            Some(&browser),
            &format!(
                "csrf_token={}&username=mallory&password=password123&role=admin",
                browser.csrf
            ),
        ))
        .await;
    assert_eq!(add.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn forms_without_the_right_csrf_token_change_nothing() {
    let app = TestApp::new().await;
    let admin = app.user("dora", Role::Admin).await;
    let browser = app.browser(&admin).await;
    let fields = "username=eve&password=password123&role=researcher";

    let missing = app.send(form("/admin/users", Some(&browser), fields)).await;
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let text = body_text(missing).await;
    assert!(text.contains("security token"), "{text}");

    let forged = app
        .send(form(
            "/admin/users",
            Some(&browser),
            &format!("csrf_token={}&{fields}", elite::web::auth::random_token()),
        ))
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    let login_without_token = app
        .send(form("/login", None, "username=dora&password=x"))
        .await;
    assert_eq!(login_without_token.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("sessions").await, 1);

    let good = app
        .send(form(
            "/admin/users",
            Some(&browser),
            &format!("csrf_token={}&{fields}", browser.csrf),
        ))
        .await;
    assert_eq!(good.status(), StatusCode::OK);
    assert_eq!(app.count("users").await, 2);
}

#[tokio::test]
async fn oversized_and_malformed_bodies_get_clear_errors() {
    let app = TestApp::new().await;
    let admin = app.user("frank", Role::Admin).await;
    let token = app.token(&admin).await;
    let tokens_before = app.count("api_tokens").await;

    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(3 * 1024 * 1024));
    let response = app
        .send(api("POST", "/api/v1/tokens", Some(&token), Some(&huge)))
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body_json(response).await["error"]["code"],
        "payload_too_large"
    );

    let browser = app.browser(&admin).await;
    let huge_form = format!(
        "csrf_token={}&name={}",
        browser.csrf,
        "y".repeat(3 * 1024 * 1024)
    );
    let response = app
        .send(form("/account/tokens", Some(&browser), &huge_form))
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let response = app
        .send(api(
            "POST",
            "/api/v1/users",
            Some(&token),
            Some("{not json"),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = body_json(response).await;
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("JSON"),
        "{body}"
    );

    let response = app
        .send(api(
            "POST",
            "/api/v1/users",
            Some(&token),
            Some(r#"{"username": "x"}"#),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = app
        .send(api(
            "POST",
            "/api/v1/users",
            Some(&token),
            Some(r#"{"username": "x y", "password": "password123", "role": "admin"}"#),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body_json(response).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("username")
    );
    let response = app
        .send(api(
            "POST",
            "/api/v1/users",
            Some(&token),
            Some(r#"{"username": "frank", "password": "password123", "role": "admin"}"#),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);

    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("api_tokens").await, tokens_before);
}

#[tokio::test]
async fn api_tokens_are_shown_once_and_can_be_revoked() {
    let app = TestApp::new().await;
    let user = app.user("gina", Role::Researcher).await;
    let browser = app.browser(&user).await;
    let created = app
        .send(
            api("POST", "/api/v1/tokens", None, Some(r#"{"name": "ci"}"#))
                .map_header(&browser.cookie)
                .with_header("x-csrf-token", &browser.csrf),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created = body_json(created).await;
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["token"]["id"].as_i64().unwrap();
    assert!(secret.starts_with("elite_"));

    // The secret is not stored in clear and is never listed again.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM api_tokens WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_ne!(stored, secret.as_bytes());
    let listed = body_text(
        app.send(api("GET", "/api/v1/tokens", Some(&secret), None))
            .await,
    )
    .await;
    assert!(!listed.contains(&secret));

    let me = app
        .send(api("GET", "/api/v1/me", Some(&secret), None))
        .await;
    assert_eq!(body_json(me).await["username"], "gina");
    // Researchers cannot list users.
    assert_eq!(
        app.send(api("GET", "/api/v1/users", Some(&secret), None))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );

    let revoked = app
        .send(api(
            "DELETE",
            &format!("/api/v1/tokens/{id}"),
            Some(&secret),
            None,
        ))
        .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let after = app
        .send(api("GET", "/api/v1/me", Some(&secret), None))
        .await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(after).await["error"]["code"], "unauthenticated");
    // A bad bearer token never falls back to the cookie.
    let mixed = app
        .send(api("GET", "/api/v1/me", Some("elite_bogus"), None).map_header(&browser.cookie))
        .await;
    assert_eq!(mixed.status(), StatusCode::UNAUTHORIZED);
}

trait WithHeader {
    fn with_header(self, name: &'static str, value: &str) -> Self;
}

impl WithHeader for axum::http::Request<axum::body::Body> {
    fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers_mut().insert(name, value.parse().unwrap());
        self
    }
}

#[tokio::test]
async fn user_text_is_escaped_in_pages() {
    let app = TestApp::new().await;
    let user = app.user("hana", Role::Annotator).await;
    let browser = app.browser(&user).await;
    let name = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let response = app
        .send(form(
            "/account/tokens",
            Some(&browser),
            &format!("csrf_token={}&name={name}", browser.csrf),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = body_text(response).await;
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || page.contains("&lt;script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert(1)"));
}

#[tokio::test]
async fn errors_are_html_on_pages_and_json_on_the_api() {
    let app = TestApp::new().await;
    let user = app.user("ivan", Role::Researcher).await;
    let browser = app.browser(&user).await;
    let page = app.send(get("/no/such/page", Some(&browser))).await;
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    assert!(
        page.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(body_text(page).await.contains("404"));
    let json = app.send(get("/api/v1/no/such", Some(&browser))).await;
    assert_eq!(json.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_json(json).await["error"]["code"], "not_found");
    let job = app
        .send(get("/api/v1/jobs/not-a-number", Some(&browser)))
        .await;
    assert_eq!(job.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = TestApp::new().await;
    let health = app.send(get("/healthz", None)).await;
    assert_eq!(health.status(), StatusCode::OK);
    let openapi = body_json(app.send(get("/api/openapi.json", None)).await).await;
    for path in [
        "/api/v1/me",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/users",
        "/api/v1/tokens",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
    let docs = app.send(get("/api/docs/", None)).await;
    assert_eq!(docs.status(), StatusCode::OK);
    // Metrics are for admins only.
    assert_eq!(
        app.send(get("/metrics", None)).await.status(),
        StatusCode::SEE_OTHER
    );
    let admin = app.user("operator", Role::Admin).await;
    let browser = app.browser(&admin).await;
    let metrics = app.send(get("/metrics", Some(&browser))).await;
    assert_eq!(metrics.status(), StatusCode::OK);
    let metrics = body_text(metrics).await;
    assert!(metrics.contains("elite_http_requests_total"), "{metrics}");
    let css = app.send(get("/static/app.css", None)).await;
    assert_eq!(css.status(), StatusCode::OK);
    assert!(
        css.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
}
