//! Paths on the server named in requests. Only admins may name them, and only files and folders
//! under the configured roots (`ELITE_SERVER_ROOTS`, colon-separated, or `--server-root` on
//! `serve`) are read: the path is canonicalised first, so `..` and symbolic links that leave a
//! root are refused. A refused path and a missing one get the same answer, so a request cannot
//! probe which server paths exist; errors never quote a file's contents.

use std::path::{Path, PathBuf};

use super::{AppError, WebConfig};
use crate::accounts::{Role, User};

/// Environment variable holding the server roots (colon-separated).
pub const SERVER_ROOTS_ENV: &str = "ELITE_SERVER_ROOTS";

/// The roots named in `ELITE_SERVER_ROOTS`.
pub fn roots_from_env() -> Vec<PathBuf> {
    std::env::var_os(SERVER_ROOTS_ENV)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The canonical form of `raw` when `user` may read it: an admin, a path under a root.
pub fn resolve(config: &WebConfig, user: &User, raw: &str) -> Result<PathBuf, AppError> {
    if user.role != Role::Admin {
        return Err(AppError::Forbidden);
    }
    if config.server_roots.is_empty() {
        return Err(AppError::Invalid(format!(
            "reading server paths is off: an operator must list the allowed folders in {SERVER_ROOTS_ENV} (or --server-root)"
        )));
    }
    let raw = raw.trim();
    let refused = || {
        AppError::Invalid(
            "no readable file or folder at that path under the server roots".to_string(),
        )
    };
    if raw.is_empty() || raw.len() > 4096 || raw.chars().any(char::is_control) {
        return Err(refused());
    }
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(AppError::Invalid(
            "a server path must be absolute".to_string(),
        ));
    }
    let canonical = path.canonicalize().map_err(|_| refused())?;
    let inside = config.server_roots.iter().any(|root| {
        root.canonicalize()
            .is_ok_and(|root| canonical.starts_with(root))
    });
    if inside {
        Ok(canonical)
    } else {
        Err(refused())
    }
}
