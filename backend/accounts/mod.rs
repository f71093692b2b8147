//! Accounts: users and their roles, argon2id password hashes, server-side sessions and
//! personal API tokens. Storage and rules only; the web layer turns these into cookies,
//! extractors and pages, and the CLI into `elite user ...`.
//!
//! Credentials end together: a new password or disabling a user deletes all of the user's
//! sessions and revokes all of their API tokens in the same transaction. Resolving a session
//! or token only reads, except at most once per [`TOUCH_INTERVAL`] per credential, when the
//! session's sliding expiry or the token's `last_used_at` is written.

use std::fmt;
use std::str::FromStr;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use time::{Duration, OffsetDateTime};

/// Errors of account operations.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("username must be 1-64 characters of letters, digits, '_', '.', '@' or '-'")]
    InvalidUsername,
    #[error("password must be at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("user {0:?} already exists")]
    UsernameTaken(String),
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("unknown role {0:?}: expected admin, researcher or annotator")]
    UnknownRole(String),
    #[error("token name must be 1-100 characters")]
    InvalidTokenName,
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

pub const MIN_PASSWORD_LEN: usize = 8;
/// How long a browser session lives without activity.
pub const SESSION_TTL: Duration = Duration::days(7);

/// What a user may do. Ordered: each role includes the ones below it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    sqlx::Type,
    utoipa::ToSchema,
)]
#[sqlx(type_name = "user_role", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Annotator,
    Researcher,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Annotator, Role::Researcher, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Annotator => "annotator",
            Role::Researcher => "researcher",
            Role::Admin => "admin",
        }
    }

    /// Whether a holder of `self` may use something that requires `required`.
    pub fn satisfies(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "annotator" => Ok(Role::Annotator),
            "researcher" => Ok(Role::Researcher),
            "admin" => Ok(Role::Admin),
            _ => Err(AccountError::UnknownRole(s.to_string())),
        }
    }
}

/// A user as the rest of the system sees it (never with the hash).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An API token as listed (the secret itself is shown only once, at creation).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    /// First characters of the token, to recognise it.
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// Whether `name` could be a username: 1-64 characters of letters, digits, `_`, `.`, `@`, `-`.
pub fn valid_username(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
}

/// Hash a password with argon2id on a blocking thread (it is deliberately slow).
pub async fn hash_password(password: String) -> Result<String, AccountError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AccountError::Hashing(e.to_string()))
    })
    .await
    .map_err(|e| AccountError::Hashing(e.to_string()))?
}

/// Check a password against a stored hash on a blocking thread.
pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A hash of a fixed dummy password, so a login for an unknown user costs as much time as a
/// login with a wrong password (no user enumeration by timing).
async fn dummy_hash() -> &'static str {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_init(|| async {
            hash_password("not-a-real-password".into())
                .await
                .unwrap_or_default()
        })
        .await
}

pub async fn create_user(
    pool: &PgPool,
    username: &str,
    password: &str,
    role: Role,
) -> Result<User, AccountError> {
    if !valid_username(username) {
        return Err(AccountError::InvalidUsername);
    }
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AccountError::WeakPassword);
    }
    let hash = hash_password(password.to_string()).await?;
    sqlx::query_as::<_, User>(
        "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3)
         RETURNING id, username, role, disabled, created_at",
    )
    .bind(username)
    .bind(hash)
    .bind(role)
    .fetch_one(pool)
    .await
    .map_err(|e| match e.as_database_error().and_then(|d| d.code()) {
        Some(code) if code == "23505" => AccountError::UsernameTaken(username.to_string()),
        _ => AccountError::Sql(e),
    })
}

pub async fn set_role(pool: &PgPool, username: &str, role: Role) -> Result<User, AccountError> {
    sqlx::query_as::<_, User>(
        "UPDATE users SET role = $2 WHERE username = $1
         RETURNING id, username, role, disabled, created_at",
    )
    .bind(username)
    .bind(role)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| AccountError::NoSuchUser(username.to_string()))
}

pub async fn set_role_by_id(pool: &PgPool, id: i64, role: Role) -> Result<User, AccountError> {
    sqlx::query_as::<_, User>(
        "UPDATE users SET role = $2 WHERE id = $1
         RETURNING id, username, role, disabled, created_at",
    )
    .bind(id)
    .bind(role)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| AccountError::NoSuchUser(format!("#{id}")))
}

/// Set a user's password. Ends every session of the user and revokes every API token: whoever
/// held the old password may have made them.
pub async fn set_password(
    pool: &PgPool,
    username: &str,
    password: &str,
) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AccountError::WeakPassword);
    }
    let hash = hash_password(password.to_string()).await?;
    let mut tx = pool.begin().await?;
    let id: i64 =
        sqlx::query_scalar("UPDATE users SET password_hash = $2 WHERE username = $1 RETURNING id")
            .bind(username)
            .bind(hash)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| AccountError::NoSuchUser(username.to_string()))?;
    end_credentials(&mut tx, id).await?;
    tx.commit().await?;
    Ok(())
}

/// Delete every session of the user and revoke every API token.
async fn end_credentials(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    user_id: i64,
) -> Result<(), AccountError> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Disable or enable a user. Disabling also ends their sessions and revokes their API tokens
/// (enabling does not bring those back). A disabled user cannot sign in or use the API.
pub async fn set_disabled_by_id(
    pool: &PgPool,
    id: i64,
    disabled: bool,
) -> Result<User, AccountError> {
    let mut tx = pool.begin().await?;
    let user = sqlx::query_as::<_, User>(
        "UPDATE users SET disabled = $2 WHERE id = $1
         RETURNING id, username, role, disabled, created_at",
    )
    .bind(id)
    .bind(disabled)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AccountError::NoSuchUser(format!("#{id}")))?;
    if disabled {
        end_credentials(&mut tx, id).await?;
    }
    tx.commit().await?;
    Ok(user)
}

/// [`set_disabled_by_id`] by username.
pub async fn set_disabled(
    pool: &PgPool,
    username: &str,
    disabled: bool,
) -> Result<User, AccountError> {
    let user = find_user(pool, username)
        .await?
        .ok_or_else(|| AccountError::NoSuchUser(username.to_string()))?;
    set_disabled_by_id(pool, user.id, disabled).await
}

pub async fn get_user(pool: &PgPool, id: i64) -> Result<Option<User>, AccountError> {
    Ok(sqlx::query_as::<_, User>(
        "SELECT id, username, role, disabled, created_at FROM users WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

pub async fn list_users(pool: &PgPool) -> Result<Vec<User>, AccountError> {
    Ok(sqlx::query_as::<_, User>(
        "SELECT id, username, role, disabled, created_at FROM users ORDER BY username",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn find_user(pool: &PgPool, username: &str) -> Result<Option<User>, AccountError> {
    if !valid_username(username) {
        return Ok(None);
    }
    Ok(sqlx::query_as::<_, User>(
        "SELECT id, username, role, disabled, created_at FROM users WHERE username = $1",
    )
    .bind(username)
    .fetch_optional(pool)
    .await?)
}

/// The user for a username/password pair, or None (unknown user, wrong password, disabled).
pub async fn authenticate(
    pool: &PgPool,
    username: &str,
    password: &str,
) -> Result<Option<User>, AccountError> {
    if !valid_username(username) {
        // No such account can exist (and PostgreSQL refuses NUL in text).
        return Ok(None);
    }
    let row: Option<(i64, String, Role, bool, OffsetDateTime, String)> = sqlx::query_as(
        "SELECT id, username, role, disabled, created_at, password_hash FROM users WHERE username = $1",
    )
    .bind(username)
    .fetch_optional(pool)
    .await?;
    let Some((id, username, role, disabled, created_at, hash)) = row else {
        let _ = verify_password(password.to_string(), dummy_hash().await.to_string()).await;
        return Ok(None);
    };
    if !verify_password(password.to_string(), hash).await || disabled {
        return Ok(None);
    }
    Ok(Some(User {
        id,
        username,
        role,
        disabled,
        created_at,
    }))
}

/// A random secret as URL-safe text, with its SHA-256 for storage.
fn new_secret(prefix: &str) -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{prefix}{}", hex::encode(bytes));
    let hash = sha256(&secret);
    (secret, hash)
}

pub fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// Start a browser session; returns the secret that goes into the cookie.
pub async fn create_session(pool: &PgPool, user_id: i64) -> Result<String, AccountError> {
    let (secret, hash) = new_secret("");
    sqlx::query("INSERT INTO sessions (id_hash, user_id, expires_at) VALUES ($1, $2, now() + $3)")
        .bind(hash)
        .bind(user_id)
        .bind(SESSION_TTL)
        .execute(pool)
        .await?;
    // Opportunistic clean-up of expired sessions.
    sqlx::query("DELETE FROM sessions WHERE expires_at < now()")
        .execute(pool)
        .await?;
    Ok(secret)
}

/// How often a session's expiry slides forward and a token's `last_used_at` is written: at
/// most once per this period per credential, so authenticated requests mostly only read.
pub const TOUCH_INTERVAL: Duration = Duration::minutes(1);

/// The user behind a session cookie, or None when unknown, expired or disabled. The session's
/// `last_seen` and expiry (now + [`SESSION_TTL`]) are written when the stored `last_seen` is
/// older than [`TOUCH_INTERVAL`], so the sliding expiry is exact to within that interval.
pub async fn user_for_session(pool: &PgPool, secret: &str) -> Result<Option<User>, AccountError> {
    let hash = sha256(secret);
    let row: Option<(i64, String, Role, bool, OffsetDateTime, bool)> = sqlx::query_as(
        "SELECT u.id, u.username, u.role, u.disabled, u.created_at, s.last_seen < now() - $2
         FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id_hash = $1 AND s.expires_at > now() AND NOT u.disabled",
    )
    .bind(&hash)
    .bind(TOUCH_INTERVAL)
    .fetch_optional(pool)
    .await?;
    let Some((id, username, role, disabled, created_at, stale)) = row else {
        return Ok(None);
    };
    if stale {
        sqlx::query(
            "UPDATE sessions SET last_seen = now(), expires_at = now() + $2
             WHERE id_hash = $1 AND last_seen < now() - $3",
        )
        .bind(&hash)
        .bind(SESSION_TTL)
        .bind(TOUCH_INTERVAL)
        .execute(pool)
        .await?;
    }
    Ok(Some(User {
        id,
        username,
        role,
        disabled,
        created_at,
    }))
}

pub async fn delete_session(pool: &PgPool, secret: &str) -> Result<(), AccountError> {
    sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(sha256(secret))
        .execute(pool)
        .await?;
    Ok(())
}

/// Create a personal API token; returns its listing and the secret, which is never shown again.
pub async fn create_api_token(
    pool: &PgPool,
    user_id: i64,
    name: &str,
) -> Result<(ApiToken, String), AccountError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AccountError::InvalidTokenName);
    }
    let (secret, hash) = new_secret("elite_");
    let prefix: String = secret.chars().take(12).collect();
    let token = sqlx::query_as::<_, ApiToken>(
        "INSERT INTO api_tokens (user_id, name, token_hash, prefix) VALUES ($1, $2, $3, $4)
         RETURNING id, name, prefix, created_at, last_used_at",
    )
    .bind(user_id)
    .bind(name)
    .bind(hash)
    .bind(prefix)
    .fetch_one(pool)
    .await?;
    Ok((token, secret))
}

pub async fn list_api_tokens(pool: &PgPool, user_id: i64) -> Result<Vec<ApiToken>, AccountError> {
    Ok(sqlx::query_as::<_, ApiToken>(
        "SELECT id, name, prefix, created_at, last_used_at FROM api_tokens
         WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?)
}

/// Revoke one of the user's tokens; false when it is not theirs or already revoked.
pub async fn revoke_api_token(
    pool: &PgPool,
    user_id: i64,
    token_id: i64,
) -> Result<bool, AccountError> {
    Ok(sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .bind(user_id)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// The user behind a bearer token, or None (unknown, revoked, or the user is disabled). The
/// token's `last_used_at` is written when older than [`TOUCH_INTERVAL`] (or never set).
pub async fn user_for_api_token(pool: &PgPool, secret: &str) -> Result<Option<User>, AccountError> {
    let row: Option<(i64, String, Role, bool, OffsetDateTime, i64, bool)> = sqlx::query_as(
        "SELECT u.id, u.username, u.role, u.disabled, u.created_at, t.id,
                t.last_used_at IS NULL OR t.last_used_at < now() - $2
         FROM api_tokens t JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND NOT u.disabled",
    )
    .bind(sha256(secret))
    .bind(TOUCH_INTERVAL)
    .fetch_optional(pool)
    .await?;
    let Some((id, username, role, disabled, created_at, token_id, stale)) = row else {
        return Ok(None);
    };
    if stale {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = now()
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - $2)",
        )
        .bind(token_id)
        .bind(TOUCH_INTERVAL)
        .execute(pool)
        .await?;
    }
    Ok(Some(User {
        id,
        username,
        role,
        disabled,
        created_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.satisfies(Role::Researcher));
        assert!(Role::Researcher.satisfies(Role::Annotator));
        assert!(!Role::Annotator.satisfies(Role::Researcher));
        assert!(!Role::Researcher.satisfies(Role::Admin));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn usernames_are_checked() {
        assert!(valid_username("alice.b@lab-1"));
        assert!(!valid_username(""));
        assert!(!valid_username("a b"));
        assert!(!valid_username("<script>"));
        assert!(!valid_username(&"x".repeat(65)));
    }

    #[tokio::test]
    async fn passwords_verify() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), hash.clone()).await);
        assert!(!verify_password("wrong horse".into(), hash).await);
    }
}
