//! Human annotation and evaluator alignment.
//!
//! A researcher builds a *queue* from a selection of stored responses (by run, model, hazard
//! category, ELITE score band of an evaluator, disagreement between two evaluators; a seeded
//! sample stratified by category), picks a label schema (binary safe/unsafe, or the four ELITE
//! rubric items) and N annotators per item, and names the annotators. Annotators are served
//! items blind (never other labels, never an automatic score) and balanced (items closest to
//! N labels first); an item is done when it has N verdicts.
//!
//! Pure parts: [`schema`] (label schemas and validation), [`selection`] (the stratified seeded
//! sample), [`import`] (parsing CSV/JSONL label files), [`measures`] (ratings tables, agreement
//! and alignment reports over [`crate::stats`]). SQL lives in [`store`] only.

pub mod import;
pub mod measures;
pub mod schema;
pub mod selection;
pub mod store;

/// What can go wrong in this module; the web layer maps each kind to one status.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    /// The request is well formed but not acceptable (422).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with what is stored, e.g. labelling twice (409).
    #[error("{0}")]
    Conflict(String),
    /// The caller may not use this queue (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

pub type Result<T> = std::result::Result<T, AnnotationError>;
