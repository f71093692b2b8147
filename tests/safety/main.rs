//! Integration tests of the safety area (`crate::safety` in the main crate).
//!
//! When these tests move into the main crate, change the `use` line below to
//! `pub use elite::safety;` and point `import::release_csv_path` at the crate's copy of the CSV
//! (`tests/data/elite/ELITE-benchmark.csv`).

pub use elite::safety;

mod golden;
mod import;
mod judge_image;
mod keywords;
mod metrics;
mod props;
