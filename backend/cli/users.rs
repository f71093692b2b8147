//! `elite user ...`: add users, change roles and passwords, disable and enable accounts, list
//! them. Each function does one command and returns what it prints; `main.rs` parses the
//! arguments and reads passwords.

use sqlx::PgPool;

use crate::accounts::{self, AccountError, Role};

/// How `elite user add` gets the new user's password.
#[derive(Debug)]
pub enum NewPassword {
    /// Given (read from standard input).
    Given(String),
    /// Generate one and print it.
    Generate,
}

/// Add a user; with `if_missing`, an existing user is left as it is.
pub async fn add(
    pool: &PgPool,
    username: &str,
    role: Role,
    password: NewPassword,
    if_missing: bool,
) -> Result<String, AccountError> {
    if if_missing && accounts::find_user(pool, username).await?.is_some() {
        return Ok(format!("user {username} already exists; unchanged"));
    }
    let (password, show) = match password {
        NewPassword::Given(password) => (password, false),
        NewPassword::Generate => (crate::web::auth::random_token()[..20].to_string(), true),
    };
    let user = accounts::create_user(pool, username, &password, role).await?;
    let mut text = format!("created {} ({})", user.username, user.role);
    if show {
        text.push_str(&format!("\npassword: {password}"));
    }
    Ok(text)
}

pub async fn set_role(pool: &PgPool, username: &str, role: Role) -> Result<String, AccountError> {
    let user = accounts::set_role(pool, username, role).await?;
    Ok(format!("{} is now {}", user.username, user.role))
}

pub async fn set_password(
    pool: &PgPool,
    username: &str,
    password: &str,
) -> Result<String, AccountError> {
    accounts::set_password(pool, username, password).await?;
    Ok(format!(
        "password of {username} changed; their sessions have ended and their API tokens are revoked"
    ))
}

/// Disable (`true`) or enable (`false`) a user.
pub async fn set_disabled(
    pool: &PgPool,
    username: &str,
    disabled: bool,
) -> Result<String, AccountError> {
    let user = accounts::set_disabled(pool, username, disabled).await?;
    Ok(if disabled {
        format!(
            "{} is disabled; their sessions have ended and their API tokens are revoked",
            user.username
        )
    } else {
        format!("{} is enabled", user.username)
    })
}

/// One line per user: name, role, status.
pub async fn list(pool: &PgPool) -> Result<String, AccountError> {
    Ok(accounts::list_users(pool)
        .await?
        .iter()
        .map(|user| {
            format!(
                "{}\t{}\t{}\n",
                user.username,
                user.role,
                if user.disabled { "disabled" } else { "active" }
            )
        })
        .collect())
}
