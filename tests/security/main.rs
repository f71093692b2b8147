//! Security regression tests (issue #11), one module per area, over the in-process app and a
//! real PostgreSQL (see `tests/common`).

#[path = "../common/mod.rs"]
mod common;

mod auth;
