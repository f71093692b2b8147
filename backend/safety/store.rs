//! Storage of the safety area: benchmarks (versioned by name), their items, and the
//! content-addressed images they point to. An import is one transaction: a benchmark version
//! appears whole or not at all.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::image::content_hash;
use super::import::{BenchmarkRow, GenericItem, ImageSource, ImportReport, ParsedFile};

/// Errors of the area's storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read image {path}: {reason}")]
    Image { path: String, reason: String },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// What `elite import elite-csv --json` prints (and an import job's result holds). A job run
/// again after its benchmark was stored returns the benchmark alone: the other fields default.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ImportSummary {
    pub benchmark: BenchmarkRef,
    #[serde(default)]
    pub items: usize,
    /// Category code -> number of items.
    #[serde(default)]
    pub by_category: BTreeMap<String, usize>,
    /// Image names that were not found under the image root.
    #[serde(default)]
    pub images_missing: Vec<String>,
    /// Image names that were found but could not be decoded, with the reason.
    #[serde(default)]
    pub images_unreadable: Vec<(String, String)>,
    #[serde(default)]
    pub images_stored: usize,
    /// Rows repeating an earlier (image, question) pair: kept, and counted here.
    #[serde(default)]
    pub duplicates: usize,
    /// Rows that could not be parsed (line and reason); the rest were imported.
    #[serde(default)]
    pub rejected: Vec<(u64, String)>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BenchmarkRef {
    pub id: i64,
    pub name: String,
    pub version: i32,
}

/// A benchmark as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Benchmark {
    pub id: i64,
    pub name: String,
    pub version: i32,
    pub source: String,
    pub items: i64,
    pub items_without_image: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An item as browsed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Item {
    pub id: i64,
    pub position: i32,
    pub category_code: String,
    pub category_name: String,
    pub text: String,
    pub image_name: Option<String>,
    pub image_sha256: Option<String>,
    pub image_status: String,
    pub source_dataset: Option<String>,
    pub pair_type: Option<String>,
}

/// One item to store, whatever file it came from.
struct NewItem<'a> {
    category: &'static str,
    text: &'a str,
    /// The key of its image in the import report (`image_name`, a relative path, or
    /// `sha256:...` for inline images).
    image_key: String,
    image_name: Option<&'a str>,
    source_dataset: Option<&'a str>,
    pair_type: Option<&'static str>,
    line: u64,
}

/// Add the next version of the benchmark `name` inside `tx` (versions of one name are
/// serialised by an advisory lock); returns its id and version.
pub(crate) async fn new_benchmark_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
    source: &str,
    report: serde_json::Value,
    created_by: Option<i64>,
) -> Result<(i64, i32), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    let version: i32 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) + 1 FROM benchmarks WHERE name = $1")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO benchmarks (name, version, source, report, created_by) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(name)
    .bind(version)
    .bind(source)
    .bind(report)
    .bind(created_by)
    .fetch_one(&mut **tx)
    .await?;
    Ok((id, version))
}

/// Ties a benchmark version to the job that stores it (migration 0012): a job that runs again
/// finds its benchmark instead of adding another, and the upload it read is deleted in the
/// transaction that stores the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct JobLink {
    pub job_id: i64,
    pub upload_id: Option<i64>,
}

/// Progress of a long store: (done, total).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// The benchmark a job stored already, if any.
pub async fn stored_by_job(
    executor: impl sqlx::PgExecutor<'_>,
    job_id: i64,
) -> Result<Option<BenchmarkRef>, StoreError> {
    Ok(sqlx::query_as::<_, (i64, String, i32)>(
        "SELECT id, name, version FROM benchmarks WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_optional(executor)
    .await?
    .map(|(id, name, version)| BenchmarkRef { id, name, version }))
}

/// Mark `benchmark` as the job's and delete the upload it read, inside the storing transaction.
pub(crate) async fn link_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    benchmark: i64,
    link: JobLink,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE benchmarks SET job_id = $1 WHERE id = $2")
        .bind(link.job_id)
        .bind(benchmark)
        .execute(&mut **tx)
        .await?;
    if let Some(upload) = link.upload_id {
        sqlx::query("DELETE FROM safety_uploads WHERE id = $1")
            .bind(upload)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Store an ELITE release import (rows plus the checked images) as a new benchmark version.
pub async fn import_elite(
    pool: &PgPool,
    name: &str,
    source: &str,
    parsed: &ParsedFile<BenchmarkRow>,
    report: &ImportReport,
    created_by: Option<i64>,
) -> Result<ImportSummary, StoreError> {
    import_elite_linked(pool, name, source, parsed, report, created_by, None, None).await
}

/// [`import_elite`] for a job: idempotent under `link`, with progress over the stored images.
#[allow(clippy::too_many_arguments)]
pub async fn import_elite_linked(
    pool: &PgPool,
    name: &str,
    source: &str,
    parsed: &ParsedFile<BenchmarkRow>,
    report: &ImportReport,
    created_by: Option<i64>,
    link: Option<JobLink>,
    progress: Option<Progress<'_>>,
) -> Result<ImportSummary, StoreError> {
    let items: Vec<NewItem> = parsed
        .rows
        .iter()
        .map(|row| NewItem {
            category: row.category.code(),
            text: &row.question,
            image_key: row.image_name.clone(),
            image_name: Some(&row.image_name),
            source_dataset: Some(&row.dataset),
            pair_type: None,
            line: row.line,
        })
        .collect();
    let target = Target {
        name,
        source,
        created_by,
        link,
        progress,
    };
    import_items(pool, &target, &items, report, &HashMap::new()).await
}

/// Where and how an import stores its benchmark.
struct Target<'a> {
    name: &'a str,
    source: &'a str,
    created_by: Option<i64>,
    link: Option<JobLink>,
    progress: Option<Progress<'a>>,
}

/// Store a generic JSONL/CSV import (paths under an image root, or inline base64 images).
pub async fn import_generic(
    pool: &PgPool,
    name: &str,
    source: &str,
    parsed: &ParsedFile<GenericItem>,
    report: &ImportReport,
    created_by: Option<i64>,
) -> Result<ImportSummary, StoreError> {
    import_generic_linked(pool, name, source, parsed, report, created_by, None, None).await
}

/// [`import_generic`] for a job: idempotent under `link`, with progress over the stored images.
#[allow(clippy::too_many_arguments)]
pub async fn import_generic_linked(
    pool: &PgPool,
    name: &str,
    source: &str,
    parsed: &ParsedFile<GenericItem>,
    report: &ImportReport,
    created_by: Option<i64>,
    link: Option<JobLink>,
    progress: Option<Progress<'_>>,
) -> Result<ImportSummary, StoreError> {
    let mut inline: HashMap<String, &[u8]> = HashMap::new();
    let items: Vec<NewItem> = parsed
        .rows
        .iter()
        .map(|item| {
            let (image_key, image_name) = match &item.image {
                ImageSource::Path(path) => (path.clone(), Some(path.as_str())),
                ImageSource::Inline(bytes) => {
                    let key = format!("sha256:{}", content_hash(bytes));
                    inline.insert(key.clone(), bytes.as_slice());
                    (key, None)
                }
            };
            NewItem {
                category: item.category.code(),
                text: &item.text,
                image_key,
                image_name,
                source_dataset: item.source.as_deref(),
                pair_type: item.pair_type.map(|p| p.as_str()),
                line: item.line,
            }
        })
        .collect();
    let target = Target {
        name,
        source,
        created_by,
        link,
        progress,
    };
    import_items(pool, &target, &items, report, &inline).await
}

async fn import_items(
    pool: &PgPool,
    target: &Target<'_>,
    items: &[NewItem<'_>],
    report: &ImportReport,
    inline: &HashMap<String, &[u8]>,
) -> Result<ImportSummary, StoreError> {
    let name = target.name;
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(StoreError::Invalid(
            "a benchmark needs a name of 1-200 characters".into(),
        ));
    }
    if items.is_empty() {
        return Err(StoreError::Invalid(
            "the file holds no importable rows".into(),
        ));
    }
    let unreadable: HashMap<&str, ()> = report
        .images_unreadable
        .iter()
        .map(|u| (u.image.as_str(), ()))
        .collect();

    let report_json = serde_json::json!({
        "rows": report.rows,
        "distinct_images": report.distinct_images,
        "duplicates": report.duplicates.len(),
        "images_missing": report.images_missing.len(),
        "images_unreadable": report.images_unreadable.len(),
        "rejected": report.rejected.len(),
    });
    let mut tx = pool.begin().await?;
    let existing = match target.link {
        Some(link) => stored_by_job(&mut *tx, link.job_id).await?,
        None => None,
    };
    let (id, version, fresh) = match existing {
        // The job stored this benchmark before (its worker died after committing).
        Some(found) => (found.id, found.version, false),
        None => {
            let (id, version) =
                new_benchmark_version(&mut tx, name, target.source, report_json, target.created_by)
                    .await?;
            if let Some(link) = target.link {
                link_job(&mut tx, id, link).await?;
            }
            (id, version, true)
        }
    };

    let mut stored = 0;
    let mut hashes: HashMap<&str, &str> = HashMap::new();
    let total_images = report.images_resolved.len() as u64;
    for (done, (key, resolved)) in report.images_resolved.iter().enumerate() {
        if !fresh {
            break;
        }
        if let Some(progress) = target.progress {
            progress(done as u64, total_images);
        }
        let bytes = match (&resolved.path, inline.get(key.as_str())) {
            (Some(path), _) => tokio::fs::read(path).await.map_err(|e| StoreError::Image {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            (None, Some(bytes)) => bytes.to_vec(),
            (None, None) => continue,
        };
        let inserted = sqlx::query(
            "INSERT INTO images (sha256, data, width, height, format) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&resolved.content_hash)
        .bind(&bytes)
        .bind(resolved.info.width as i32)
        .bind(resolved.info.height as i32)
        .bind(&resolved.info.format)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        stored += inserted as usize;
        hashes.insert(key.as_str(), resolved.content_hash.as_str());
    }

    for (position, item) in items.iter().enumerate().filter(|_| fresh) {
        let (sha, status) = match hashes.get(item.image_key.as_str()) {
            Some(sha) => (Some(*sha), "ok"),
            None if unreadable.contains_key(item.image_key.as_str()) => (None, "unreadable"),
            None => (None, "missing"),
        };
        sqlx::query(
            "INSERT INTO items (benchmark_id, position, category_code, text, image_name, image_sha256, image_status,
                 source_dataset, pair_type, line)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(position as i32)
        .bind(item.category)
        .bind(item.text)
        .bind(item.image_name)
        .bind(sha)
        .bind(status)
        .bind(item.source_dataset)
        .bind(item.pair_type)
        .bind(item.line as i32)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if let Some(progress) = target.progress {
        progress(total_images, total_images);
    }

    Ok(ImportSummary {
        benchmark: BenchmarkRef {
            id,
            name: name.to_string(),
            version,
        },
        items: items.len(),
        by_category: report
            .by_category
            .iter()
            .map(|(c, n)| (c.code().to_string(), *n))
            .collect(),
        images_missing: report
            .images_missing
            .iter()
            .map(|m| m.image.clone())
            .collect(),
        images_unreadable: report
            .images_unreadable
            .iter()
            .map(|u| (u.image.clone(), u.reason.clone()))
            .collect(),
        images_stored: stored,
        duplicates: report.duplicates.len(),
        rejected: report
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.clone()))
            .collect(),
    })
}

pub async fn list_benchmarks(pool: &PgPool) -> Result<Vec<Benchmark>, StoreError> {
    Ok(sqlx::query_as::<_, Benchmark>(
        "SELECT b.id, b.name, b.version, b.source, b.created_at,
                count(i.id) AS items, count(i.id) FILTER (WHERE i.image_status <> 'ok') AS items_without_image
         FROM benchmarks b LEFT JOIN items i ON i.benchmark_id = b.id
         GROUP BY b.id ORDER BY b.name, b.version DESC",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn get_benchmark(pool: &PgPool, id: i64) -> Result<Option<Benchmark>, StoreError> {
    Ok(sqlx::query_as::<_, Benchmark>(
        "SELECT b.id, b.name, b.version, b.source, b.created_at,
                count(i.id) AS items, count(i.id) FILTER (WHERE i.image_status <> 'ok') AS items_without_image
         FROM benchmarks b LEFT JOIN items i ON i.benchmark_id = b.id
         WHERE b.id = $1 GROUP BY b.id",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Filters of the item browser.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct ItemFilter {
    /// Category code (S1..S11).
    pub category: Option<String>,
    /// Source data set (e.g. FigStep).
    pub source: Option<String>,
    /// Case-insensitive substring of the text.
    pub q: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

pub async fn list_items(
    pool: &PgPool,
    benchmark: i64,
    filter: &ItemFilter,
) -> Result<(Vec<Item>, i64), StoreError> {
    let category = filter.category.as_deref().filter(|c| !c.is_empty());
    let source = filter.source.as_deref().filter(|s| !s.is_empty());
    let q = filter.q.as_deref().filter(|s| !s.is_empty()).map(|s| {
        format!(
            "%{}%",
            s.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    let limit = filter.limit.unwrap_or(50).clamp(1, 500);
    let offset = filter.offset.unwrap_or(0).max(0);
    let conditions = "i.benchmark_id = $1 AND ($2::text IS NULL OR i.category_code = $2)
         AND ($3::text IS NULL OR i.source_dataset = $3) AND ($4::text IS NULL OR i.text ILIKE $4)";
    let items = sqlx::query_as::<_, Item>(sqlx::AssertSqlSafe(format!(
        "SELECT i.id, i.position, i.category_code, c.name AS category_name, i.text, i.image_name, i.image_sha256,
                i.image_status, i.source_dataset, i.pair_type
         FROM items i JOIN categories c ON c.code = i.category_code
         WHERE {conditions} ORDER BY i.position LIMIT $5 OFFSET $6"
    )))
    .bind(benchmark)
    .bind(category)
    .bind(source)
    .bind(&q)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM items i WHERE {conditions}"
    )))
    .bind(benchmark)
    .bind(category)
    .bind(source)
    .bind(&q)
    .fetch_one(pool)
    .await?;
    Ok((items, total))
}

/// Distinct source data sets of a benchmark (for the filter).
pub async fn sources(pool: &PgPool, benchmark: i64) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT source_dataset FROM items WHERE benchmark_id = $1 AND source_dataset IS NOT NULL ORDER BY 1",
    )
    .bind(benchmark)
    .fetch_all(pool)
    .await?)
}

/// An image's bytes and format.
pub async fn image(pool: &PgPool, sha256: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT data, format FROM images WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(pool)
            .await?,
    )
}

/// Store images by content hash (bytes, width, height, format); an image already stored is left
/// as it is. Returns how many were new. Idempotent, so a job can store its images chunk by
/// chunk before the transaction that stores its items.
pub async fn store_images(
    pool: &PgPool,
    images: &[(String, Vec<u8>, super::image::ImageInfo)],
) -> Result<usize, StoreError> {
    if images.is_empty() {
        return Ok(0);
    }
    let mut hashes = Vec::with_capacity(images.len());
    let mut data = Vec::with_capacity(images.len());
    let (mut widths, mut heights, mut formats) = (Vec::new(), Vec::new(), Vec::new());
    for (hash, bytes, info) in images {
        hashes.push(hash.as_str());
        data.push(bytes.as_slice());
        widths.push(info.width as i32);
        heights.push(info.height as i32);
        formats.push(info.format.as_str());
    }
    Ok(sqlx::query(
        "INSERT INTO images (sha256, data, width, height, format)
         SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::int[], $4::int[], $5::text[])
         ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(&hashes)
    .bind(&data)
    .bind(&widths)
    .bind(&heights)
    .bind(&formats)
    .execute(pool)
    .await?
    .rows_affected() as usize)
}

/// One item whose image is stored already (by [`store_images`]).
#[derive(Debug, Clone)]
pub struct StoredPair {
    pub category: &'static str,
    pub text: String,
    pub image_sha256: String,
    pub pair_type: &'static str,
    pub source_dataset: String,
}

/// Store items whose images are stored already as a new benchmark version, in one statement;
/// under `link`, a job that stored its benchmark before gets that benchmark back unchanged.
/// Returns the benchmark and whether this call created it.
pub async fn store_pairs(
    pool: &PgPool,
    name: &str,
    source: &str,
    report: serde_json::Value,
    items: &[StoredPair],
    created_by: Option<i64>,
    link: Option<JobLink>,
) -> Result<(BenchmarkRef, bool), StoreError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(StoreError::Invalid(
            "a benchmark needs a name of 1-200 characters".into(),
        ));
    }
    if items.is_empty() {
        return Err(StoreError::Invalid("no pair to store".into()));
    }
    let mut tx = pool.begin().await?;
    if let Some(link) = link
        && let Some(found) = stored_by_job(&mut *tx, link.job_id).await?
    {
        return Ok((found, false));
    }
    let (id, version) = new_benchmark_version(&mut tx, name, source, report, created_by).await?;
    if let Some(link) = link {
        link_job(&mut tx, id, link).await?;
    }
    let categories: Vec<&str> = items.iter().map(|i| i.category).collect();
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    let hashes: Vec<&str> = items.iter().map(|i| i.image_sha256.as_str()).collect();
    let pair_types: Vec<&str> = items.iter().map(|i| i.pair_type).collect();
    let sources: Vec<&str> = items.iter().map(|i| i.source_dataset.as_str()).collect();
    sqlx::query(
        "INSERT INTO items (benchmark_id, position, category_code, text, image_sha256, image_status,
             source_dataset, pair_type, line)
         SELECT $1, (n - 1)::int, c, t, h, 'ok', s, p, n::int
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
              WITH ORDINALITY AS u(c, t, h, p, s, n)",
    )
    .bind(id)
    .bind(&categories)
    .bind(&texts)
    .bind(&hashes)
    .bind(&pair_types)
    .bind(&sources)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        BenchmarkRef {
            id,
            name: name.to_string(),
            version,
        },
        true,
    ))
}
