//! Who is asking, and may they: session cookies and bearer tokens resolved to a user, the
//! per-route access guard, CSRF protection for cookie-authenticated state changes, and the
//! login rate limit.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use rand::RngCore;

use super::{AppError, AppState, BODY_LIMIT};
use crate::accounts::{self, Role, User};

pub const SESSION_COOKIE: &str = "elite_session";
pub const CSRF_COOKIE: &str = "elite_csrf";
pub const CSRF_FIELD: &str = "csrf_token";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// A signed-in user with at least this role.
    Role(Role),
}

impl Access {
    pub fn describe(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Role(role) => role.as_str(),
        }
    }
}

/// The signed-in user, put in the request extensions by the guard. Handlers of non-public
/// routes extract it; extraction fails with 401 where nobody is signed in.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub User);

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or(AppError::Unauthenticated)
    }
}

/// The signed-in user if any (for public pages that adapt to it).
#[derive(Debug, Clone)]
pub struct MaybeUser(pub Option<User>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeUser {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybeUser(
            parts.extensions.get::<CurrentUser>().map(|u| u.0.clone()),
        ))
    }
}

/// The CSRF token of this browser, to embed in forms.
#[derive(Debug, Clone)]
pub struct CsrfToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CsrfToken {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<CsrfToken>()
            .cloned()
            .unwrap_or(CsrfToken(String::new())))
    }
}

/// How the request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    Bearer,
    Session,
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn resolve_user(
    state: &AppState,
    parts: &Parts,
) -> Result<Option<(User, Credential)>, AppError> {
    if let Some(token) = bearer_token(&parts.headers) {
        // A bearer token that does not resolve is an error, never a fallback to the cookie.
        return match accounts::user_for_api_token(&state.pool, token).await? {
            Some(user) => Ok(Some((user, Credential::Bearer))),
            None => Err(AppError::Unauthenticated),
        };
    }
    let jar = CookieJar::from_headers(&parts.headers);
    if let Some(cookie) = jar.get(SESSION_COOKIE)
        && let Some(user) = accounts::user_for_session(&state.pool, cookie.value()).await?
    {
        return Ok(Some((user, Credential::Session)));
    }
    Ok(None)
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/")
}

/// Route guard: resolves the user, enforces the route's [`Access`], and checks CSRF on
/// state-changing requests that ride on a cookie.
pub async fn guard(
    State((state, access)): State<(AppState, Access)>,
    request: Request,
    next: Next,
) -> Response {
    match guard_inner(state, access, request).await {
        Ok(request) => next.run(request).await,
        Err(GuardFailure::Redirect(to)) => Redirect::to(&to).into_response(),
        Err(GuardFailure::Error(e)) => e.into_response(),
    }
}

enum GuardFailure {
    Redirect(String),
    Error(AppError),
}

impl From<AppError> for GuardFailure {
    fn from(e: AppError) -> Self {
        GuardFailure::Error(e)
    }
}

async fn guard_inner(
    state: AppState,
    access: Access,
    request: Request,
) -> Result<Request, GuardFailure> {
    let (mut parts, body) = request.into_parts();
    let resolved = resolve_user(&state, &parts).await?;
    let credential = resolved.as_ref().map(|(_, c)| *c);
    if let Some((user, _)) = &resolved {
        parts.extensions.insert(CurrentUser(user.clone()));
    }
    if let Access::Role(required) = access {
        match &resolved {
            None if !is_api(parts.uri.path()) && parts.method == Method::GET => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                return Err(GuardFailure::Redirect(format!(
                    "/login?next={}",
                    url_escape(next)
                )));
            }
            None => return Err(AppError::Unauthenticated.into()),
            Some((user, _)) if !user.role.satisfies(required) => {
                return Err(AppError::Forbidden.into());
            }
            Some(_) => {}
        }
    }
    let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let body = if unsafe_method && credential != Some(Credential::Bearer) {
        check_csrf(&parts, body).await?
    } else {
        body
    };
    Ok(Request::from_parts(parts, body))
}

/// Double-submit check: the token in the form field or `X-CSRF-Token` header must equal the
/// `elite_csrf` cookie. Returns the body (buffered when the token had to be read from it).
async fn check_csrf(parts: &Parts, body: Body) -> Result<Body, AppError> {
    let jar = CookieJar::from_headers(&parts.headers);
    let expected = jar
        .get(CSRF_COOKIE)
        .map(|c| c.value().to_string())
        .ok_or(AppError::Csrf)?;
    if expected.len() < 32 {
        return Err(AppError::Csrf);
    }
    if let Some(sent) = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return if constant_time_eq(sent, &expected) {
            Ok(body)
        } else {
            Err(AppError::Csrf)
        };
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("multipart/form-data") {
        // File uploads carry the token in the form's action URL: reading it from the body
        // would mean buffering the whole upload before the handler streams it.
        let sent = parts
            .uri
            .query()
            .and_then(|q| form_urlencoded_field(q.as_bytes(), CSRF_FIELD))
            .ok_or(AppError::Csrf)?;
        return if constant_time_eq(&sent, &expected) {
            Ok(body)
        } else {
            Err(AppError::Csrf)
        };
    }
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(AppError::Csrf);
    }
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| AppError::PayloadTooLarge(BODY_LIMIT))?;
    let sent = form_urlencoded_field(&bytes, CSRF_FIELD).ok_or(AppError::Csrf)?;
    if !constant_time_eq(&sent, &expected) {
        return Err(AppError::Csrf);
    }
    Ok(Body::from(bytes))
}

fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Give every browser a CSRF token cookie and expose it to handlers as [`CsrfToken`].
pub async fn csrf_cookie(mut request: Request, next: Next) -> Response {
    let jar = CookieJar::from_headers(request.headers());
    let existing = jar
        .get(CSRF_COOKIE)
        .map(|c| c.value().to_string())
        .filter(|v| v.len() >= 32);
    let (token, fresh) = match existing {
        Some(token) => (token, false),
        None => (random_token(), true),
    };
    request.extensions_mut().insert(CsrfToken(token.clone()));
    let mut response = next.run(request).await;
    if fresh {
        let cookie = Cookie::build((CSRF_COOKIE, token))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .build();
        if let Ok(value) = cookie.to_string().parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The session cookie set at login: HttpOnly, SameSite=Lax, `Secure` when configured.
pub fn session_cookie(secret: String, secure: bool) -> Cookie<'static> {
    Cookie::build((SESSION_COOKIE, secret))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::days(7))
        .build()
}

pub fn clear_session_cookie() -> Cookie<'static> {
    Cookie::build((SESSION_COOKIE, ""))
        .path("/")
        .max_age(time::Duration::ZERO)
        .build()
}

/// Failed-login limiter: at most `max_failures` per key within `window`; keys are the
/// username and the client address.
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    max_failures: usize,
    window: Duration,
}

impl LoginLimiter {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        LoginLimiter {
            failures: Mutex::new(HashMap::new()),
            max_failures,
            window,
        }
    }

    /// Whether any of the keys has used up its failures.
    pub fn is_blocked(&self, keys: &[String]) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        keys.iter().any(|key| {
            map.get_mut(key).is_some_and(|times| {
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.window)
                {
                    times.pop_front();
                }
                times.len() >= self.max_failures
            })
        })
    }

    pub fn record_failure(&self, keys: &[String]) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) <= self.window)
            });
        }
        for key in keys {
            map.entry(key.clone()).or_default().push_back(now);
        }
    }

    pub fn clear(&self, keys: &[String]) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            map.remove(key);
        }
    }
}

/// A relative path to return to after login; anything else becomes `/`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_decode() {
        let body = b"a=1&csrf_token=ab%2Fc+d&x=%ZZ";
        assert_eq!(
            form_urlencoded_field(body, "csrf_token").as_deref(),
            Some("ab/c d")
        );
        assert_eq!(form_urlencoded_field(body, "x").as_deref(), Some("%ZZ"));
        assert_eq!(form_urlencoded_field(body, "missing"), None);
    }

    #[test]
    fn next_paths_stay_local() {
        assert_eq!(safe_next(Some("/jobs?x=1")), "/jobs?x=1");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn limiter_blocks_after_failures() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let keys = vec!["user:alice".to_string()];
        for _ in 0..3 {
            assert!(!limiter.is_blocked(&keys));
            limiter.record_failure(&keys);
        }
        assert!(limiter.is_blocked(&keys));
        assert!(!limiter.is_blocked(&["user:bob".to_string()]));
        limiter.clear(&keys);
        assert!(!limiter.is_blocked(&keys));
    }
}
