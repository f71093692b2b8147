//! What the CLI shows beyond wiring: progress bars on stderr (indicatif) and the output of
//! the computational commands (`ppr`, `embed`), and the account commands (`elite user`).
//! `main.rs` parses arguments and calls these.

pub mod compression;
pub mod genmetrics;
pub mod inversion;
pub mod models;
pub mod safety;
pub mod training;
pub mod users;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {percent}% (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message.to_string());
    bar
}
