//! Who is asking, and may they: session cookies and bearer tokens resolved to a user, the
//! per-route access guard, CSRF protection for cookie-authenticated state changes, and the
//! login limiter.
//!
//! # CSRF
//!
//! Double submit: a state-changing request that rides on the session cookie must carry the
//! `elite_csrf` cookie's value in the `X-CSRF-Token` header or a `csrf_token` form field. For
//! `application/x-www-form-urlencoded` bodies (at most [`BODY_LIMIT`]) the guard reads the
//! field; for `multipart/form-data` uploads the field must be the *first* part: the guard reads
//! the body only until that part is complete (at most [`CSRF_PEEK_LIMIT`] bytes), checks it,
//! and hands the handler a body that replays those bytes and then streams the rest, so uploads
//! are never buffered whole. Tokens in the query string are not accepted (URLs end up in logs,
//! history and `Referer` headers).
//!
//! # Login limits
//!
//! Every attempt is counted *before* its password is checked, under one lock: the attempt is
//! reserved as a failure and refunded when the password turns out right, so concurrent
//! attempts cannot all pass the check before any failure is recorded. Three budgets apply:
//!
//! - per (account, client address) pair: [`LoginPolicy::pair_free_failures`] failures, then
//!   exponential back-off (30 s, 1 min, 2 min, ... at most the window, 15 min) before the next
//!   attempt. A stranger who guesses wrong only slows *their own* address down for that
//!   account; the owner signing in from elsewhere is not affected. A success clears the pair.
//! - per client address, across usernames: [`LoginPolicy::address_max_failures`] failures per
//!   window, which slows password spraying from one address.
//! - per account, across addresses: [`LoginPolicy::account_max_failures`] failures per window;
//!   past it, only addresses that have signed into that account before may keep trying until
//!   the window ends, so a guesser with many addresses is slowed while the owner keeps the
//!   addresses they use.
//!
//! The tables live in memory (a restart clears them; "signed in before" is forgotten when its
//! entry is evicted).
//!
//! The client address is the TCP peer (`ConnectInfo<SocketAddr>`; a fixed placeholder when
//! absent, as in in-process tests); IPv6 addresses count by their /64 prefix. Behind a reverse
//! proxy every client shares the proxy's address. Usernames that no account can have (longer
//! than 64 characters, or with characters outside the allowed set, NUL included) are refused
//! before the limiter and the database see them. Entries are keyed by a 16-byte hash of the
//! lowercased username (at most 64 bytes) and the address, and each table holds at most
//! [`LoginPolicy::capacity`] entries (expired ones go first, then the least recently used),
//! so failed logins cost bounded memory whatever they send.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use futures::StreamExt;
use rand::RngCore;
use sha2::{Digest, Sha256};

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

/// The client's address: the TCP peer when the server records it, else `0.0.0.0`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ))
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

/// Double-submit check: the token in the `X-CSRF-Token` header, the urlencoded form field or
/// the first multipart part must equal the `elite_csrf` cookie. Returns the body to hand on:
/// buffered for urlencoded forms (small), replayed-then-streamed for multipart uploads.
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
        let boundary = multipart_boundary(content_type).ok_or(AppError::Csrf)?;
        let (sent, body) = peek_first_part(body, &boundary).await?;
        return match sent {
            Some(sent) if constant_time_eq(&sent, &expected) => Ok(body),
            _ => Err(AppError::Csrf),
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

/// Most bytes of a multipart body the guard reads to find the CSRF token in its first part.
pub const CSRF_PEEK_LIMIT: usize = 16 * 1024;

/// The `boundary` parameter of a `multipart/form-data` content type.
fn multipart_boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        (!value.is_empty() && value.len() <= 200).then(|| value.to_string())
    })
}

/// What the bytes read so far say about the first part of a multipart body.
#[derive(Debug, PartialEq, Eq)]
enum FirstPart {
    /// Not complete yet.
    NeedMore,
    /// The first part is the CSRF field, with this value.
    Token(String),
    /// The first part is something else, or the body is malformed.
    Other,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Parse the first part of a multipart body from its first bytes.
fn first_part(buf: &[u8], boundary: &str) -> FirstPart {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // Anything before the first delimiter is a preamble, which senders may include.
    let start = if buf.starts_with(delimiter) {
        0
    } else {
        let mut crlf_delimiter = b"\r\n".to_vec();
        crlf_delimiter.extend_from_slice(delimiter);
        match find(buf, &crlf_delimiter, 0) {
            Some(i) => i + 2,
            None => return FirstPart::NeedMore,
        }
    };
    let after = start + delimiter.len();
    let Some(line_end) = buf.get(after..after + 2) else {
        return FirstPart::NeedMore;
    };
    if line_end != b"\r\n" {
        return FirstPart::Other;
    }
    let headers_start = after + 2;
    let Some(headers_end) = find(buf, b"\r\n\r\n", headers_start) else {
        return FirstPart::NeedMore;
    };
    let Ok(headers) = std::str::from_utf8(&buf[headers_start..headers_end]) else {
        return FirstPart::Other;
    };
    let is_token_field = headers.split("\r\n").any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("content-disposition")
            && value.split(';').skip(1).any(|param| {
                param.trim().split_once('=').is_some_and(|(k, v)| {
                    k.trim() == "name" && v.trim().trim_matches('"') == CSRF_FIELD
                })
            })
    });
    if !is_token_field {
        return FirstPart::Other;
    }
    let value_start = headers_end + 4;
    let mut end_marker = b"\r\n".to_vec();
    end_marker.extend_from_slice(delimiter);
    let Some(value_end) = find(buf, &end_marker, value_start) else {
        return FirstPart::NeedMore;
    };
    match std::str::from_utf8(&buf[value_start..value_end]) {
        Ok(value) => FirstPart::Token(value.to_string()),
        Err(_) => FirstPart::Other,
    }
}

/// Read `body` until its first part is complete (at most [`CSRF_PEEK_LIMIT`] bytes, or one
/// chunk past it); return the CSRF token if that part is the token field, and a body that
/// replays what was read followed by the rest of the stream.
async fn peek_first_part(body: Body, boundary: &str) -> Result<(Option<String>, Body), AppError> {
    let mut stream = body.into_data_stream();
    let mut peeked: Vec<u8> = Vec::new();
    let token = loop {
        match first_part(&peeked, boundary) {
            FirstPart::Token(token) => break Some(token),
            FirstPart::Other => break None,
            FirstPart::NeedMore if peeked.len() >= CSRF_PEEK_LIMIT => break None,
            FirstPart::NeedMore => match stream.next().await {
                Some(Ok(chunk)) => peeked.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(AppError::BadRequest(format!("unreadable body: {e}"))),
                None => break None,
            },
        }
    };
    let replay =
        futures::stream::once(async move { Ok::<Bytes, axum::Error>(Bytes::from(peeked)) })
            .chain(stream);
    Ok((token, Body::from_stream(replay)))
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

/// How the login limiter counts (see the module documentation for the policy).
#[derive(Debug, Clone)]
pub struct LoginPolicy {
    /// Failed attempts a pair (account, client address) gets before back-off starts.
    pub pair_free_failures: u32,
    /// Delay after the first failure past the free ones; each further failure doubles it.
    pub backoff_base: Duration,
    /// Longest back-off, and the window of the per-address and per-account counters.
    pub window: Duration,
    /// Failed attempts one client address may make within `window`, across all usernames.
    pub address_max_failures: u32,
    /// Failed attempts one account may receive within `window`, across all addresses; past
    /// it, only addresses that signed into the account before may keep trying.
    pub account_max_failures: u32,
    /// Most entries each of the three tables holds; the least recently used are evicted.
    pub capacity: usize,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            pair_free_failures: 10,
            backoff_base: Duration::from_secs(30),
            window: Duration::from_secs(900),
            address_max_failures: 50,
            account_max_failures: 200,
            capacity: 50_000,
        }
    }
}

/// A pair's failures are forgotten after this long without an attempt.
const PAIR_FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Fixed-size key of a limiter entry: the first 16 bytes of a SHA-256.
type LimitKey = [u8; 16];

fn limit_key(kind: &str, parts: &[&[u8]]) -> LimitKey {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The address a limit applies to: IPv4 addresses as they are, IPv6 by their /64 prefix (one
/// client usually holds a whole /64), IPv4-mapped IPv6 as IPv4.
fn address_bucket(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

/// Per (account, address) pair: failures and the back-off they earned.
#[derive(Debug, Clone, Copy)]
struct PairState {
    failures: u32,
    blocked_until: Option<Instant>,
    last: Instant,
    /// This address signed into this account before.
    trusted: bool,
}

/// A failure counter over a fixed window.
#[derive(Debug, Clone, Copy)]
struct Counter {
    started: Instant,
    count: u32,
}

impl Counter {
    fn current(&mut self, now: Instant, window: Duration) -> u32 {
        if now.saturating_duration_since(self.started) >= window {
            self.started = now;
            self.count = 0;
        }
        self.count
    }
}

#[derive(Debug, Default)]
struct LimiterTables {
    pairs: HashMap<LimitKey, PairState>,
    addresses: HashMap<LimitKey, Counter>,
    accounts: HashMap<LimitKey, Counter>,
}

/// Make room for one more entry: drop what has expired, then, if still full, the least
/// recently used quarter (so eviction work is amortised over many insertions).
fn make_room<V>(
    map: &mut HashMap<LimitKey, V>,
    capacity: usize,
    expired: impl Fn(&V) -> bool,
    last_used: impl Fn(&V) -> Instant,
) {
    if map.len() < capacity {
        return;
    }
    map.retain(|_, v| !expired(v));
    if map.len() < capacity {
        return;
    }
    let mut ages: Vec<(Instant, LimitKey)> = map.iter().map(|(k, v)| (last_used(v), *k)).collect();
    let evict = (capacity / 4).max(1).min(ages.len());
    ages.select_nth_unstable_by_key(evict - 1, |(t, _)| *t);
    for (_, key) in &ages[..evict] {
        map.remove(key);
    }
}

/// Why a login attempt was refused before its password was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// This address failed too often for this account: back off.
    Backoff,
    /// This address failed too often across all usernames.
    Address,
    /// This account failed too often across all addresses (and this address never signed in).
    Account,
}

/// The login limiter: per (account, address) exponential back-off, a per-address and a
/// per-account failure budget, all counted before the password is checked.
#[derive(Debug)]
pub struct LoginLimiter {
    policy: LoginPolicy,
    tables: Mutex<LimiterTables>,
}

/// A reserved login attempt: counted as a failure until [`LoginAttempt::succeeded`] refunds it.
#[derive(Debug)]
#[must_use]
pub struct LoginAttempt<'a> {
    limiter: &'a LoginLimiter,
    pair: LimitKey,
    address: LimitKey,
    account: LimitKey,
}

impl LoginAttempt<'_> {
    /// The password was right: clear the pair's failures, refund the reservation and remember
    /// that this address may sign into this account.
    pub fn succeeded(self) {
        self.limiter.succeeded_at(&self, Instant::now());
    }
}

impl LoginLimiter {
    pub fn new(policy: LoginPolicy) -> Self {
        LoginLimiter {
            policy,
            tables: Mutex::new(LimiterTables::default()),
        }
    }

    /// Reserve an attempt for `username` from `client`, or refuse it. The attempt counts as a
    /// failure from now on, so concurrent attempts cannot all slip past the limits.
    pub fn begin(&self, username: &str, client: IpAddr) -> Result<LoginAttempt<'_>, LoginRefusal> {
        self.begin_at(username, client, Instant::now())
    }

    /// [`LoginLimiter::begin`] with an explicit clock.
    pub fn begin_at(
        &self,
        username: &str,
        client: IpAddr,
        now: Instant,
    ) -> Result<LoginAttempt<'_>, LoginRefusal> {
        // Valid usernames have at most 64 characters; the key never depends on more.
        let account_name: Vec<u8> = username
            .bytes()
            .take(64)
            .map(|b| b.to_ascii_lowercase())
            .collect();
        let account = limit_key("account", &[&account_name]);
        let address = limit_key("address", &[&address_bucket(client)]);
        let pair = limit_key("pair", &[&account, &address]);
        let policy = &self.policy;
        let mut guard = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let tables = &mut *guard;

        let mut pair_state = tables.pairs.get(&pair).copied().unwrap_or(PairState {
            failures: 0,
            blocked_until: None,
            last: now,
            trusted: false,
        });
        if now.saturating_duration_since(pair_state.last) >= PAIR_FORGET_AFTER {
            pair_state.failures = 0;
            pair_state.blocked_until = None;
        }
        if pair_state.blocked_until.is_some_and(|until| now < until) {
            return Err(LoginRefusal::Backoff);
        }
        let mut address_counter = tables.addresses.get(&address).copied().unwrap_or(Counter {
            started: now,
            count: 0,
        });
        if address_counter.current(now, policy.window) >= policy.address_max_failures {
            return Err(LoginRefusal::Address);
        }
        let mut account_counter = tables.accounts.get(&account).copied().unwrap_or(Counter {
            started: now,
            count: 0,
        });
        if account_counter.current(now, policy.window) >= policy.account_max_failures
            && !pair_state.trusted
        {
            return Err(LoginRefusal::Account);
        }

        // Reserve: count the attempt as a failure now; success refunds it.
        pair_state.failures = pair_state.failures.saturating_add(1);
        pair_state.last = now;
        if pair_state.failures >= policy.pair_free_failures {
            let doublings = (pair_state.failures - policy.pair_free_failures).min(30);
            let delay = policy
                .backoff_base
                .saturating_mul(1u32 << doublings)
                .min(policy.window);
            pair_state.blocked_until = Some(now + delay);
        }
        address_counter.count += 1;
        account_counter.count += 1;

        let window = policy.window;
        if !tables.pairs.contains_key(&pair) {
            make_room(
                &mut tables.pairs,
                policy.capacity,
                |p| {
                    now.saturating_duration_since(p.last) >= PAIR_FORGET_AFTER
                        || (!p.trusted
                            && p.blocked_until.is_none_or(|until| until <= now)
                            && now.saturating_duration_since(p.last) >= window)
                },
                |p| p.last,
            );
        }
        tables.pairs.insert(pair, pair_state);
        for (map, key, counter) in [
            (&mut tables.addresses, address, address_counter),
            (&mut tables.accounts, account, account_counter),
        ] {
            if !map.contains_key(&key) {
                make_room(
                    map,
                    policy.capacity,
                    |c| now.saturating_duration_since(c.started) >= window,
                    |c| c.started,
                );
            }
            map.insert(key, counter);
        }
        Ok(LoginAttempt {
            limiter: self,
            pair,
            address,
            account,
        })
    }

    /// [`LoginAttempt::succeeded`] with an explicit clock.
    pub fn succeeded_at(&self, attempt: &LoginAttempt<'_>, now: Instant) {
        let mut guard = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let tables = &mut *guard;
        if let Some(pair) = tables.pairs.get_mut(&attempt.pair) {
            pair.failures = 0;
            pair.blocked_until = None;
            pair.last = now;
            pair.trusted = true;
        }
        for (map, key) in [
            (&mut tables.addresses, attempt.address),
            (&mut tables.accounts, attempt.account),
        ] {
            if let Some(counter) = map.get_mut(&key) {
                counter.count = counter.count.saturating_sub(1);
            }
        }
    }

    /// How many entries the limiter holds (pairs, addresses and accounts together).
    pub fn tracked(&self) -> usize {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.pairs.len() + tables.addresses.len() + tables.accounts.len()
    }
}

/// Where to go after signing in: only a path on this site. Anything with a control character,
/// a space or non-ASCII text (browsers strip tabs and newlines, so `/\t/host` would become
/// `//host`), a backslash (browsers read it as `/`), or not starting with exactly one `/`
/// becomes `/`. The paths the guard sends to `/login` are percent-encoded, so they pass.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_string()
        }
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
        assert_eq!(
            safe_next(Some("/login%3Fnext%3D%2F")),
            "/login%3Fnext%3D%2F"
        );
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "/\t/evil.example/x",
            "/\n/evil.example",
            "/ /x",
            "\t//evil.example",
            "/caf\u{e9}",
            "/x\u{7f}",
            "jobs",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    fn policy() -> LoginPolicy {
        LoginPolicy {
            pair_free_failures: 3,
            backoff_base: Duration::from_secs(30),
            window: Duration::from_secs(900),
            address_max_failures: 20,
            account_max_failures: 40,
            capacity: 1000,
        }
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn pair_back_off_doubles_and_success_clears_it() {
        let limiter = LoginLimiter::new(policy());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.begin_at("alice", A, t0).is_ok());
        }
        // The third failure started a 30 s back-off for (alice, A) only.
        assert_eq!(
            limiter.begin_at("alice", A, t0).unwrap_err(),
            LoginRefusal::Backoff
        );
        assert_eq!(
            limiter.begin_at("ALICE", A, t0).unwrap_err(),
            LoginRefusal::Backoff
        );
        assert!(limiter.begin_at("alice", B, t0).is_ok());
        assert!(limiter.begin_at("bob", A, t0).is_ok());
        let t1 = t0 + Duration::from_secs(30);
        assert!(limiter.begin_at("alice", A, t1).is_ok());
        // The fourth failure doubles the wait: 60 s.
        assert!(
            limiter
                .begin_at("alice", A, t1 + Duration::from_secs(59))
                .is_err()
        );
        let t2 = t1 + Duration::from_secs(60);
        let attempt = limiter.begin_at("alice", A, t2).unwrap();
        limiter.succeeded_at(&attempt, t2);
        for _ in 0..3 {
            assert!(limiter.begin_at("alice", A, t2).is_ok());
        }
        assert!(limiter.begin_at("alice", A, t2).is_err());
    }

    #[test]
    fn back_off_never_exceeds_the_window() {
        let limiter = LoginLimiter::new(policy());
        let mut now = Instant::now();
        for _ in 0..40 {
            while limiter.begin_at("carol", A, now).is_err() {
                now += Duration::from_secs(1);
            }
        }
        assert!(limiter.begin_at("carol", A, now).is_err());
        assert!(
            limiter
                .begin_at("carol", A, now + Duration::from_secs(900))
                .is_ok()
        );
    }

    #[test]
    fn addresses_and_accounts_have_budgets() {
        let limiter = LoginLimiter::new(policy());
        let now = Instant::now();
        for i in 0..20 {
            assert!(limiter.begin_at(&format!("user{i}"), A, now).is_ok());
        }
        assert_eq!(
            limiter.begin_at("someone", A, now).unwrap_err(),
            LoginRefusal::Address
        );
        assert!(limiter.begin_at("someone", B, now).is_ok());
        assert!(
            limiter
                .begin_at("someone", A, now + Duration::from_secs(900))
                .is_ok()
        );

        // Dave signs in from B once; then 40 failures from many addresses exhaust his
        // account's budget: new addresses are refused, B is not.
        let limiter = LoginLimiter::new(policy());
        let attempt = limiter.begin_at("dave", B, now).unwrap();
        limiter.succeeded_at(&attempt, now);
        for i in 0..40u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
            assert!(limiter.begin_at("dave", ip, now).is_ok());
        }
        let stranger = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(
            limiter.begin_at("dave", stranger, now).unwrap_err(),
            LoginRefusal::Account
        );
        assert!(limiter.begin_at("dave", B, now).is_ok());
    }

    #[test]
    fn ipv6_clients_count_by_prefix() {
        let limiter = LoginLimiter::new(LoginPolicy {
            address_max_failures: 2,
            ..policy()
        });
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.begin_at("u1", a, now).is_ok());
        assert!(limiter.begin_at("u2", b, now).is_ok());
        assert_eq!(
            limiter.begin_at("u3", a, now).unwrap_err(),
            LoginRefusal::Address
        );
        assert!(limiter.begin_at("u3", other, now).is_ok());
    }

    #[test]
    fn the_tables_stay_within_capacity() {
        let limiter = LoginLimiter::new(LoginPolicy {
            capacity: 64,
            address_max_failures: u32::MAX,
            ..policy()
        });
        let now = Instant::now();
        for i in 0..5000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(i));
            let _ = limiter.begin_at(&format!("user{i}-{}", "x".repeat(1000)), ip, now);
        }
        assert!(limiter.tracked() <= 3 * 64, "{}", limiter.tracked());
    }

    #[test]
    fn the_first_multipart_part_is_found() {
        let body = b"--XB\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\nabc123\r\n--XB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\ndata\r\n--XB--\r\n";
        assert_eq!(first_part(body, "XB"), FirstPart::Token("abc123".into()));
        for cut in [0, 5, 30, 60, 70] {
            assert_eq!(first_part(&body[..cut], "XB"), FirstPart::NeedMore, "{cut}");
        }
        let preamble = [b"ignored\r\n".as_slice(), body].concat();
        assert_eq!(
            first_part(&preamble, "XB"),
            FirstPart::Token("abc123".into())
        );
        let file_first =
            b"--XB\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--XB--";
        assert_eq!(first_part(file_first, "XB"), FirstPart::Other);
        let similar =
            b"--XB\r\nContent-Disposition: form-data; name=\"csrf_token2\"\r\n\r\nx\r\n--XB--";
        assert_eq!(first_part(similar, "XB"), FirstPart::Other);
        assert_eq!(
            multipart_boundary("multipart/form-data; charset=utf-8; boundary=\"a b\""),
            Some("a b".into())
        );
        assert_eq!(multipart_boundary("multipart/form-data"), None);
    }
}
