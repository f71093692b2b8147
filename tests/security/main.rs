//! The security suite: each finding of the hostile-user review replayed against a real app and
//! database, asserting the safe outcome and that refused requests stored nothing.
//!
//! - `auth`: login limits, `next`, disabled users, token revocation, CSP, CSRF outside URLs,
//!   metrics for admins, credential writes at most once a minute;
//! - `models`: secrets and outbound targets of model registration, model ownership, run
//!   snapshots, short error excerpts;
//! - `bounds`: sizes checked before allocation, control characters, refused limits, server
//!   paths, a worker that survives a panicking job;
//! - `fuzz`: malformed bodies generated from the OpenAPI document, posted to every JSON
//!   endpoint.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod bounds;
mod fuzz;
mod models;
