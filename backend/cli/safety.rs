//! `elite import elite-csv`: parse the release file, check the images, store a benchmark
//! version, and summarise what was imported, missing or unreadable.

use std::path::Path;

use sqlx::PgPool;

use crate::safety::image::ImageLimits;
use crate::safety::import::{check_elite_import, read_elite_csv};
use crate::safety::store::{self, ImportSummary};

pub async fn import_elite(
    pool: &PgPool,
    csv: &Path,
    images: Option<&Path>,
    name: &str,
) -> anyhow::Result<ImportSummary> {
    let (csv_owned, images_owned) = (csv.to_path_buf(), images.map(Path::to_path_buf));
    let (parsed, report) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let parsed = read_elite_csv(&csv_owned)?;
        let report = check_elite_import(&parsed, images_owned.as_deref(), ImageLimits::default());
        Ok((parsed, report))
    })
    .await??;
    let source = format!("elite-csv:{}", csv.display());
    Ok(store::import_elite(pool, name, &source, &parsed, &report, None).await?)
}

pub fn describe_import(summary: &ImportSummary) -> String {
    let mut text = format!(
        "imported {} v{} (id {}): {} items, {} images stored, {} duplicates kept\n",
        summary.benchmark.name,
        summary.benchmark.version,
        summary.benchmark.id,
        summary.items,
        summary.images_stored,
        summary.duplicates
    );
    for (code, count) in &summary.by_category {
        text.push_str(&format!("  {code:<4} {count}\n"));
    }
    if !summary.images_missing.is_empty() {
        let shown: Vec<&str> = summary
            .images_missing
            .iter()
            .take(10)
            .map(String::as_str)
            .collect();
        text.push_str(&format!(
            "{} images missing (their items are kept and marked): {}{}\n",
            summary.images_missing.len(),
            shown.join(", "),
            if summary.images_missing.len() > 10 {
                ", ..."
            } else {
                ""
            }
        ));
    }
    for (image, reason) in &summary.images_unreadable {
        text.push_str(&format!("unreadable image {image}: {reason}\n"));
    }
    for (line, reason) in &summary.rejected {
        text.push_str(&format!("line {line} rejected: {reason}\n"));
    }
    text
}
