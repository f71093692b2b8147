//! Storage of compression experiments: rows from our jobs (one per job) and rows imported from
//! runs made elsewhere (CSV or JSON), side by side.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

use super::ExperimentResult;

/// A stored experiment.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ExperimentRow {
    pub id: i64,
    /// `job` (run here) or `import`.
    pub source: String,
    pub architecture: String,
    pub dataset: String,
    pub method: String,
    pub ratio: f64,
    pub params_before: Option<i64>,
    pub params_after: Option<i64>,
    pub macs_before: Option<i64>,
    pub macs_after: Option<i64>,
    pub param_reduction: f64,
    pub mac_reduction: f64,
    pub accuracy_before: Option<f64>,
    pub accuracy_pruned: Option<f64>,
    pub accuracy_fine_tuned: Option<f64>,
    pub fine_tune_epochs: i32,
    pub seconds: Option<f64>,
    pub notes: String,
    pub job_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl ExperimentRow {
    /// The accuracy to plot: after fine-tuning when there was any, else right after pruning.
    pub fn best_accuracy(&self) -> Option<f64> {
        self.accuracy_fine_tuned.or(self.accuracy_pruned)
    }
}

/// One row of an import file (CSV header or JSON keys use these names). Reductions are
/// fractions in [0, 1); accuracies fractions in [0, 1].
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ImportRow {
    pub architecture: String,
    pub dataset: String,
    pub method: String,
    pub ratio: f64,
    pub param_reduction: f64,
    pub mac_reduction: f64,
    #[serde(default)]
    pub params_before: Option<i64>,
    #[serde(default)]
    pub params_after: Option<i64>,
    #[serde(default)]
    pub macs_before: Option<i64>,
    #[serde(default)]
    pub macs_after: Option<i64>,
    #[serde(default)]
    pub accuracy_before: Option<f64>,
    #[serde(default)]
    pub accuracy_pruned: Option<f64>,
    #[serde(default)]
    pub accuracy_fine_tuned: Option<f64>,
    #[serde(default)]
    pub fine_tune_epochs: Option<i32>,
    #[serde(default)]
    pub notes: Option<String>,
}

impl ImportRow {
    /// Range checks; the message names the row (1-based) and the field.
    pub fn check(&self, row: usize) -> Result<(), String> {
        let fraction = |name: &str, v: f64, hi_inclusive: bool| -> Result<(), String> {
            let ok = v.is_finite() && v >= 0.0 && if hi_inclusive { v <= 1.0 } else { v < 1.0 };
            if ok {
                Ok(())
            } else {
                Err(format!("row {row}: {name} = {v} is outside [0, 1]"))
            }
        };
        for (name, text) in [
            ("architecture", &self.architecture),
            ("dataset", &self.dataset),
            ("method", &self.method),
        ] {
            if text.trim().is_empty() || text.chars().count() > 200 {
                return Err(format!("row {row}: {name} must be 1-200 characters"));
            }
        }
        fraction("ratio", self.ratio, false)?;
        fraction("param_reduction", self.param_reduction, false)?;
        fraction("mac_reduction", self.mac_reduction, false)?;
        for (name, v) in [
            ("accuracy_before", self.accuracy_before),
            ("accuracy_pruned", self.accuracy_pruned),
            ("accuracy_fine_tuned", self.accuracy_fine_tuned),
        ] {
            if let Some(v) = v {
                fraction(name, v, true)?;
            }
        }
        if self.accuracy_pruned.is_none() && self.accuracy_fine_tuned.is_none() {
            return Err(format!(
                "row {row}: give accuracy_pruned or accuracy_fine_tuned"
            ));
        }
        Ok(())
    }
}

/// Parse an import file: a JSON array of rows, or CSV with a header of [`ImportRow`] fields.
pub fn parse_import(bytes: &[u8]) -> Result<Vec<ImportRow>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_string())?;
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let rows: Vec<ImportRow> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(trimmed.as_bytes());
        let mut rows = Vec::new();
        for (i, record) in reader.deserialize::<ImportRow>().enumerate() {
            rows.push(record.map_err(|e| format!("CSV row {}: {e}", i + 1))?);
        }
        rows
    };
    if rows.is_empty() {
        return Err("the file holds no rows".into());
    }
    for (i, row) in rows.iter().enumerate() {
        row.check(i + 1)?;
    }
    Ok(rows)
}

const COLUMNS: &str = "id, source, architecture, dataset, method, ratio, params_before, params_after, macs_before, \
    macs_after, param_reduction, mac_reduction, accuracy_before, accuracy_pruned, accuracy_fine_tuned, \
    fine_tune_epochs, seconds, notes, job_id, created_at";

/// Record a job's result once (a retried job finds its row and keeps it).
pub async fn insert_result(
    pool: &PgPool,
    result: &ExperimentResult,
    dataset: &str,
    notes: &str,
    job_id: Option<i64>,
    created_by: Option<i64>,
) -> Result<i64, sqlx::Error> {
    let details = serde_json::to_value(result).unwrap_or_default();
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO compression_experiments (source, architecture, dataset, method, ratio, params_before,
             params_after, macs_before, macs_after, param_reduction, mac_reduction, accuracy_before,
             accuracy_pruned, accuracy_fine_tuned, fine_tune_epochs, seconds, notes, details, job_id, created_by)
         VALUES ('job', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         ON CONFLICT (job_id) DO NOTHING RETURNING id",
    )
    .bind(&result.architecture)
    .bind(dataset)
    .bind(&result.method)
    .bind(result.ratio)
    .bind(result.params_before as i64)
    .bind(result.params_after as i64)
    .bind(result.macs_before as i64)
    .bind(result.macs_after as i64)
    .bind(result.param_reduction)
    .bind(result.mac_reduction)
    .bind(result.accuracy_before)
    .bind(result.accuracy_pruned)
    .bind(result.accuracy_fine_tuned)
    .bind(result.fine_tune_epochs as i32)
    .bind(result.total_seconds)
    .bind(notes)
    .bind(details)
    .bind(job_id)
    .bind(created_by)
    .fetch_optional(pool)
    .await?;
    match id {
        Some(id) => Ok(id),
        None => {
            sqlx::query_scalar("SELECT id FROM compression_experiments WHERE job_id = $1")
                .bind(job_id)
                .fetch_one(pool)
                .await
        }
    }
}

/// Whether a job already stored its result (so a retry can stop early).
pub async fn result_of_job(pool: &PgPool, job_id: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM compression_experiments WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(pool)
        .await
}

/// Insert imported rows in one transaction (all or nothing); returns how many.
pub async fn insert_imported(
    pool: &PgPool,
    rows: &[ImportRow],
    created_by: Option<i64>,
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    for row in rows {
        sqlx::query(
            "INSERT INTO compression_experiments (source, architecture, dataset, method, ratio, params_before,
                 params_after, macs_before, macs_after, param_reduction, mac_reduction, accuracy_before,
                 accuracy_pruned, accuracy_fine_tuned, fine_tune_epochs, notes, created_by)
             VALUES ('import', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(row.architecture.trim())
        .bind(row.dataset.trim())
        .bind(row.method.trim())
        .bind(row.ratio)
        .bind(row.params_before)
        .bind(row.params_after)
        .bind(row.macs_before)
        .bind(row.macs_after)
        .bind(row.param_reduction)
        .bind(row.mac_reduction)
        .bind(row.accuracy_before)
        .bind(row.accuracy_pruned)
        .bind(row.accuracy_fine_tuned)
        .bind(row.fine_tune_epochs.unwrap_or(0))
        .bind(row.notes.clone().unwrap_or_default())
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

pub async fn list(pool: &PgPool) -> Result<Vec<ExperimentRow>, sqlx::Error> {
    sqlx::query_as::<_, ExperimentRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM compression_experiments ORDER BY architecture, dataset, method, ratio, id"
    )))
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_parse_csv_and_json_and_check_ranges() {
        let csv = "architecture,dataset,method,ratio,param_reduction,mac_reduction,accuracy_pruned,notes\n\
                   VGG-16,CIFAR-10,neuron-merging,0.5,0.64,0.45,0.9316,paper\n";
        let rows = parse_import(csv.as_bytes()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].accuracy_pruned, Some(0.9316));
        let json = r#"[{"architecture": "ResNet-110", "dataset": "CIFAR-10", "method": "reprune-filter",
                        "ratio": 0.5, "param_reduction": 0.5, "mac_reduction": 0.49, "accuracy_fine_tuned": 0.94}]"#;
        assert_eq!(
            parse_import(json.as_bytes()).unwrap()[0].method,
            "reprune-filter"
        );
        let bad = csv.replace("0.9316", "93.16");
        assert!(
            parse_import(bad.as_bytes())
                .unwrap_err()
                .contains("row 1: accuracy_pruned")
        );
        assert!(
            parse_import(b"architecture,dataset\n")
                .unwrap_err()
                .contains("no rows")
        );
        assert!(
            parse_import(b"[{\"architecture\": 1}]")
                .unwrap_err()
                .contains("invalid JSON")
        );
        let no_accuracy =
            "architecture,dataset,method,ratio,param_reduction,mac_reduction\nA,B,C,0.1,0.1,0.1\n";
        assert!(
            parse_import(no_accuracy.as_bytes())
                .unwrap_err()
                .contains("accuracy")
        );
    }
}
