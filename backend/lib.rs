//! elite: evaluate the safety and quality of vision models.
//!
//! The library behind the `elite` binary. Start with `ARCHITECTURE.md` at the repository root
//! for the map; each module's doc comment says what it owns.

pub mod accounts;
pub mod annotation;
pub mod charts;
pub mod cli;
pub mod compression;
pub mod db;
pub mod genmetrics;
pub mod inference;
pub mod jobs;
pub mod nn;
pub mod safety;
pub mod server;
pub mod stats;
pub mod training;
pub mod web;

/// Every job kind this build can run, with its handler.
pub fn job_registry() -> jobs::Registry {
    let registry = jobs::Registry::new();
    let registry = genmetrics::jobs::register(registry);
    let registry = compression::jobs::register(registry);
    let registry = training::jobs::register(registry);
    let registry = training::inversion::jobs::register(registry);
    let registry = safety::import_jobs::register(registry);
    safety::jobs::register(registry)
}
