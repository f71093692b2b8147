//! Pure statistics for human annotation: inter-annotator agreement and evaluator alignment.
//! No SQL, no HTTP.
//!
//! * [`agreement`]: how much annotators agree with each other (percent agreement, Cohen's and
//!   Fleiss' kappa, Krippendorff's alpha) over a ratings table.
//! * [`alignment`]: how well an automatic evaluator matches the human majority label
//!   (accuracy, precision, recall, F1, AUROC, ROC curve, best thresholds).
//! * [`bootstrap`]: seeded percentile-bootstrap confidence intervals and the combined
//!   [`bootstrap::AlignmentReport`].
//!
//! Every function is deterministic and returns `None` for statistics that are undefined on
//! the given data instead of `NaN`. Golden values in the tests come from scikit-learn,
//! statsmodels and the `krippendorff` Python package (`tests/data/stats/make_reference.py`).

pub mod agreement;
pub mod alignment;
pub mod bootstrap;
