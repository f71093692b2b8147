//! The paper-style summary of experiments: per architecture, data set, method, ratio and
//! fine-tuning length, the original, pruned (no fine-tuning), merged (Neuron Merging, no
//! fine-tuning) and fine-tuned top-1 accuracy with the parameter and FLOP reductions, each
//! as mean +/- sample standard deviation over the runs of that setting (runs with different
//! seeds are repetitions). Where a setting matches one the papers report, the published
//! numbers follow our row, marked as the paper's.
//!
//! Pure: it groups rows it is given; the caller reads them from the store.

use serde::Serialize;

/// What the table needs of one experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub architecture: String,
    pub dataset: String,
    pub method: String,
    pub ratio: f64,
    pub fine_tune_epochs: i32,
    pub param_reduction: f64,
    pub mac_reduction: f64,
    pub accuracy_before: Option<f64>,
    pub accuracy_pruned: Option<f64>,
    pub accuracy_fine_tuned: Option<f64>,
}

/// Mean and sample standard deviation (`None` for a single value) of `n` values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub sd: Option<f64>,
    pub n: usize,
}

impl Stat {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Stat> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = (n > 1).then(|| {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        Some(Stat { mean, sd, n })
    }

    /// `mean` or `mean +/- sd` of `100 * value`, with `decimals` digits (e.g. `93.16 ± 0.12`).
    pub fn percent(&self, decimals: usize) -> String {
        match self.sd {
            Some(sd) => format!(
                "{:.d$} ± {:.d$}",
                self.mean * 100.0,
                sd * 100.0,
                d = decimals
            ),
            None => format!("{:.d$}", self.mean * 100.0, d = decimals),
        }
    }
}

/// One line of the table: ours (aggregated) or a published one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub architecture: String,
    pub dataset: String,
    pub method: String,
    pub ratio: Option<f64>,
    pub fine_tune_epochs: Option<i32>,
    pub runs: usize,
    pub original: Option<Stat>,
    /// No fine-tuning, for methods without compensation.
    pub pruned: Option<Stat>,
    /// No fine-tuning, for Neuron Merging.
    pub merged: Option<Stat>,
    pub fine_tuned: Option<Stat>,
    pub param_reduction: Option<Stat>,
    pub mac_reduction: Option<Stat>,
    /// `None` for ours; the citation for a published row.
    pub published: Option<&'static str>,
    pub note: &'static str,
}

/// A published result (from the specification's reading of the papers).
struct Published {
    architecture: &'static str,
    dataset: &'static str,
    method: &'static str,
    /// Only this ratio matches, when set (Neuron Merging's pruned-A is ratio 0.5).
    ratio: Option<f64>,
    original: Option<f64>,
    no_fine_tune: Option<f64>,
    fine_tuned: Option<f64>,
    param_reduction: Option<f64>,
    mac_reduction: Option<f64>,
    citation: &'static str,
    note: &'static str,
}

const PUBLISHED: &[Published] = &[
    Published {
        architecture: "vgg16",
        dataset: "cifar10",
        method: "neuron-merging",
        ratio: Some(0.5),
        original: Some(0.937),
        no_fine_tune: Some(0.9316),
        fine_tuned: None,
        param_reduction: Some(0.640),
        mac_reduction: Some(0.342),
        citation: "paper: Kim et al., NeurIPS 2020 (VGG-16 pruned-A)",
        note: "original is about 93.7%",
    },
    Published {
        architecture: "resnet56",
        dataset: "cifar10",
        method: "reprune-kernel",
        ratio: None,
        original: Some(0.9339),
        no_fine_tune: None,
        fine_tuned: Some(0.9340),
        param_reduction: None,
        mac_reduction: Some(0.6038),
        citation: "paper: Park et al., AAAI 2024 (secondary notes, to check)",
        note: "pruned while training",
    },
    Published {
        architecture: "resnet50",
        dataset: "imagenet",
        method: "reprune-kernel",
        ratio: None,
        original: None,
        no_fine_tune: None,
        fine_tuned: Some(0.7704),
        param_reduction: None,
        mac_reduction: Some(0.5609),
        citation: "paper: Park et al., AAAI 2024 (secondary notes, to check)",
        note: "pruned while training",
    },
];

/// Lower-case letters and digits only: `ResNet-56` and `resnet56_cifar` share `resnet56`.
fn key(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn matches(published: &Published, row: &SummaryRow) -> bool {
    let arch = key(&row.architecture);
    let family_ok = arch.starts_with(published.architecture)
        && !arch[published.architecture.len()..].starts_with(|c: char| c.is_ascii_digit());
    family_ok
        && key(&row.dataset) == published.dataset
        && key(&row.method) == key(published.method)
        && published
            .ratio
            .is_none_or(|r| row.ratio.is_some_and(|x| (x - r).abs() < 1e-6))
}

/// Groups `rows` by setting (in order of first appearance) and appends the matching
/// published rows after each group.
pub fn summarise(rows: &[Measurement]) -> Vec<SummaryRow> {
    type Key = (String, String, String, i64, i32);
    let mut order: Vec<Key> = Vec::new();
    let mut groups: std::collections::HashMap<Key, Vec<&Measurement>> = Default::default();
    for r in rows {
        let k = (
            r.architecture.clone(),
            r.dataset.clone(),
            r.method.clone(),
            (r.ratio * 1e6).round() as i64,
            r.fine_tune_epochs,
        );
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(r);
    }
    let mut out = Vec::new();
    for k in order {
        let members = &groups[&k];
        let collect = |f: fn(&Measurement) -> Option<f64>| -> Vec<f64> {
            members.iter().filter_map(|m| f(m)).collect()
        };
        let first = members[0];
        let no_ft = Stat::of(&collect(|m| m.accuracy_pruned));
        let is_merge = key(&first.method).starts_with("neuronmerging");
        let row = SummaryRow {
            architecture: first.architecture.clone(),
            dataset: first.dataset.clone(),
            method: first.method.clone(),
            ratio: Some(first.ratio),
            fine_tune_epochs: Some(first.fine_tune_epochs),
            runs: members.len(),
            original: Stat::of(&collect(|m| m.accuracy_before)),
            pruned: if is_merge { None } else { no_ft },
            merged: if is_merge { no_ft } else { None },
            fine_tuned: Stat::of(&collect(|m| m.accuracy_fine_tuned)),
            param_reduction: Stat::of(&collect(|m| Some(m.param_reduction))),
            mac_reduction: Stat::of(&collect(|m| Some(m.mac_reduction))),
            published: None,
            note: "",
        };
        let published: Vec<SummaryRow> = PUBLISHED
            .iter()
            .filter(|p| matches(p, &row))
            .map(|p| {
                let one = |v: Option<f64>| v.and_then(|v| Stat::of(&[v]));
                SummaryRow {
                    architecture: row.architecture.clone(),
                    dataset: row.dataset.clone(),
                    method: p.method.to_string(),
                    ratio: p.ratio,
                    fine_tune_epochs: None,
                    runs: 0,
                    original: one(p.original),
                    pruned: if is_merge { None } else { one(p.no_fine_tune) },
                    merged: if is_merge { one(p.no_fine_tune) } else { None },
                    fine_tuned: one(p.fine_tuned),
                    param_reduction: one(p.param_reduction),
                    mac_reduction: one(p.mac_reduction),
                    published: Some(p.citation),
                    note: p.note,
                }
            })
            .collect();
        out.push(row);
        out.extend(published);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(arch: &str, method: &str, ratio: f64, pruned: f64) -> Measurement {
        Measurement {
            architecture: arch.into(),
            dataset: "cifar10".into(),
            method: method.into(),
            ratio,
            fine_tune_epochs: 0,
            param_reduction: 0.64,
            mac_reduction: 0.34,
            accuracy_before: Some(0.9),
            accuracy_pruned: Some(pruned),
            accuracy_fine_tuned: None,
        }
    }

    #[test]
    fn groups_runs_into_mean_and_sd() {
        let rows = vec![
            m("resnet20_cifar", "l1", 0.5, 0.5),
            m("resnet20_cifar", "l1", 0.5, 0.7),
            m("resnet20_cifar", "l1", 0.5, 0.6),
            m("resnet20_cifar", "neuron-merging", 0.5, 0.8),
        ];
        let table = summarise(&rows);
        assert_eq!(table.len(), 2);
        let l1 = &table[0];
        assert_eq!(l1.runs, 3);
        let p = l1.pruned.unwrap();
        // Mean 0.6; sample sd sqrt((0.01 + 0.01 + 0) / 2) = 0.1.
        assert!((p.mean - 0.6).abs() < 1e-12);
        assert!((p.sd.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(p.percent(1), "60.0 ± 10.0");
        assert!(l1.merged.is_none());
        assert!(table[1].pruned.is_none());
        assert_eq!(table[1].merged.unwrap().percent(2), "80.00");
    }

    #[test]
    fn published_rows_follow_matching_settings_only() {
        let rows = vec![
            m("vgg16_nm_cifar", "neuron-merging", 0.5, 0.9),
            m("vgg16_nm_cifar", "neuron-merging", 0.3, 0.9),
            m("resnet56_cifar", "reprune-kernel", 0.5, 0.9),
            m("resnet560_cifar", "reprune-kernel", 0.5, 0.9),
        ];
        let table = summarise(&rows);
        let published: Vec<_> = table.iter().filter(|r| r.published.is_some()).collect();
        assert_eq!(published.len(), 2);
        assert_eq!(table[1].merged.unwrap().mean, 0.9316);
        assert!(table[1].published.unwrap().starts_with("paper:"));
        assert_eq!(table[2].ratio, Some(0.3));
        assert_eq!(table[4].fine_tuned.unwrap().mean, 0.934);
        assert_eq!(table.last().unwrap().architecture, "resnet560_cifar");
    }
}
