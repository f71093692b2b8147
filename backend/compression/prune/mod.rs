//! Structured (filter / neuron) pruning: pure functions from a [`Network`] and
//! [`PruneOptions`] to a smaller [`Network`] with the same input and output shapes.
//!
//! # Where pruning happens ("sites")
//! A *site* is a producer (conv or linear layer) whose output channels can be removed
//! together with the matching batch-norm entries and the matching input channels of the
//! consumer (the next conv or linear layer). In a plain sequential network a site is
//! `producer [batch norm] (relu | pool | flatten)* consumer`; through a flatten, each
//! channel owns `H*W` consecutive input features of the consumer.
//!
//! **Residual networks: only the inner convolutions of each block are pruned**
//! (`conv1`/`bn1` of a basic block, consumed by `conv2`; `conv1` and `conv2` of a
//! bottleneck block, consumed by `conv2` and `conv3`). The block outputs, the stem and the
//! shortcut paths keep their widths, so every residual addition still adds tensors of the
//! same shape; this is the usual choice of the pruning papers for ResNets.
//! The last linear layer (the classifier) is never pruned.
//!
//! # Layer-wise ratios
//! A global ratio `r` becomes per-site ratios through [`LayerRatios`]:
//! - `Uniform`: every site loses `floor(r * n)` of its `n` channels (at least one is kept);
//!   this is what SFP/FPGM-style comparisons and both REPrune papers use.
//! - `PaperDefault`: for VGG-16 the scheme of Li et al. (2017) "VGG-16-pruned-A", used by the
//!   Neuron Merging paper for its VGG-16 / CIFAR-10 result: prune conv 1 and convs 8-13 at
//!   ratio `r` and keep convs 2-7 intact (r = 0.5 removes 64% of the parameters); uniform
//!   for every other architecture.
//! - `PerSite` / `KeepCounts`: explicit ratios or absolute widths, one entry per site in
//!   [`prune_sites`] order.
//! - `GammaQuantile`: REPrune's global quantile of the convolutions' batch-norm scale
//!   factors (linear layers keep the uniform width).
//!
//! Baselines and methods share the same resolved per-site widths, so a comparison at one
//! ratio compares networks of identical size.
//!
//! # Methods
//! [`l1`] (keep the largest-L1 filters; also the L2 and geometric-median baselines of the
//! Neuron Merging code), [`random`] (seeded), [`neuron_merging`]
//! (data-free compensation), [`reprune_filter`] (filter clustering, one representative per
//! cluster) and [`reprune_kernel`] (per-channel kernel clustering + maximum cluster
//! coverage). Each module documents the variant it implements.

pub mod clustering;
pub mod l1;
pub mod neuron_merging;
pub mod random;
pub mod reprune_filter;
pub mod reprune_kernel;

use std::str::FromStr;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model::{Layer, Network};
use super::{CompressionError, Result};

pub use neuron_merging::{MergeVariant, NeuronMergingOptions};
pub use reprune_filter::{Election, RepruneFilterOptions};
pub use reprune_kernel::RepruneKernelOptions;

/// How a method ranks filters by magnitude.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SelectionCriterion {
    /// Sum of absolute weights of the filter (Li et al. 2017).
    #[default]
    L1Norm,
    /// Euclidean norm of the filter.
    L2Norm,
    /// Distance to the layer's geometric median (He et al., FPGM, 2019), approximated as in
    /// the Neuron Merging code by the sum of Euclidean distances to all filters of the
    /// layer: the filters closest to the median (smallest sum) are removed first.
    GeometricMedian,
}

impl FromStr for SelectionCriterion {
    type Err = CompressionError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "l1" | "l1-norm" => Ok(SelectionCriterion::L1Norm),
            "l2" | "l2-norm" => Ok(SelectionCriterion::L2Norm),
            "gm" | "geometric-median" | "l2-gm" | "fpgm" => Ok(SelectionCriterion::GeometricMedian),
            other => Err(CompressionError::Config(format!(
                "unknown criterion '{other}' (expected l1, l2 or geometric-median)"
            ))),
        }
    }
}

/// A pruning method and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum PruneMethod {
    /// Keep the filters with the largest L1 norm ("smaller norm, less important").
    L1,
    /// Keep the filters with the largest L2 norm.
    L2,
    /// Remove the filters closest to the layer's geometric median first (FPGM).
    GeometricMedian,
    /// Keep a uniformly random subset of filters.
    Random { seed: u64 },
    /// Neuron Merging (Kim et al., NeurIPS 2020).
    NeuronMerging(NeuronMergingOptions),
    /// REPrune v1: filter clustering with representative election.
    RepruneFilter(RepruneFilterOptions),
    /// REPrune (AAAI 2024): kernel clustering per channel + maximum cluster coverage.
    RepruneKernel(RepruneKernelOptions),
}

impl PruneMethod {
    /// Stable short name (`l1`, `l2`, `geometric-median`, `random`, `neuron-merging` (the
    /// official variant), `neuron-merging-exact`, `reprune-filter`, `reprune-kernel`),
    /// accepted back by [`PruneMethod::from_str`] (which gives the default options).
    pub fn name(&self) -> &'static str {
        match self {
            PruneMethod::L1 => "l1",
            PruneMethod::L2 => "l2",
            PruneMethod::GeometricMedian => "geometric-median",
            PruneMethod::Random { .. } => "random",
            PruneMethod::NeuronMerging(o) => match o.variant {
                MergeVariant::Official => "neuron-merging",
                MergeVariant::Exact => "neuron-merging-exact",
            },
            PruneMethod::RepruneFilter(_) => "reprune-filter",
            PruneMethod::RepruneKernel(_) => "reprune-kernel",
        }
    }

    /// The method with per-network defaults filled in (Neuron Merging's `t` and `lambda`
    /// from the authors' settings for this architecture), as recorded with results.
    pub fn resolved_for(&self, network: &Network) -> Result<PruneMethod> {
        Ok(match self {
            PruneMethod::NeuronMerging(o) => PruneMethod::NeuronMerging(
                o.resolved_for(&network.architecture, network.num_classes()?),
            ),
            other => other.clone(),
        })
    }

    /// Every method with default options (random with seed 0).
    pub fn all_defaults() -> Vec<PruneMethod> {
        vec![
            PruneMethod::L1,
            PruneMethod::L2,
            PruneMethod::GeometricMedian,
            PruneMethod::Random { seed: 0 },
            PruneMethod::NeuronMerging(NeuronMergingOptions::default()),
            PruneMethod::NeuronMerging(NeuronMergingOptions {
                variant: MergeVariant::Exact,
                ..Default::default()
            }),
            PruneMethod::RepruneFilter(RepruneFilterOptions::default()),
            PruneMethod::RepruneKernel(RepruneKernelOptions::default()),
        ]
    }
}

impl FromStr for PruneMethod {
    type Err = CompressionError;

    /// Parses a method name (case-insensitive, `_` or `-`) into the method with defaults.
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        match key.as_str() {
            "l1" | "l1-norm" => Ok(PruneMethod::L1),
            "l2" | "l2-norm" => Ok(PruneMethod::L2),
            "geometric-median" | "gm" | "fpgm" | "l2-gm" => Ok(PruneMethod::GeometricMedian),
            "random" => Ok(PruneMethod::Random { seed: 0 }),
            "neuron-merging" | "nm" | "neuron-merging-official" => {
                Ok(PruneMethod::NeuronMerging(Default::default()))
            }
            "neuron-merging-exact" | "nm-exact" => {
                Ok(PruneMethod::NeuronMerging(NeuronMergingOptions {
                    variant: MergeVariant::Exact,
                    ..Default::default()
                }))
            }
            "reprune-filter" | "reprune-v1" => Ok(PruneMethod::RepruneFilter(Default::default())),
            "reprune-kernel" | "reprune" => Ok(PruneMethod::RepruneKernel(Default::default())),
            _ => Err(CompressionError::UnknownMethod(s.to_string())),
        }
    }
}

/// How the global ratio becomes per-site ratios (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", content = "values", rename_all = "snake_case")]
pub enum LayerRatios {
    #[default]
    Uniform,
    PaperDefault,
    /// One ratio in `[0, 1)` per site.
    PerSite(Vec<f64>),
    /// One absolute kept width (1..=width) per site; the global ratio is ignored.
    KeepCounts(Vec<usize>),
    /// REPrune's allocation: rank the batch-norm scale factors `|gamma|` of every channel of
    /// every prunable convolution site that has a batch norm; the `floor(r * N)` smallest (a
    /// global quantile) are counted as removed from their own site, which sets each site's
    /// sparsity (at least one channel kept). Other sites (those without batch norm, and
    /// linear layers such as the hidden layer of Neuron Merging's VGG-16 classifier, whose
    /// BatchNorm1d scales are on another footing) use `floor(n * (1 - r))`. Recomputed from
    /// the current weights whenever a network is pruned.
    GammaQuantile,
}

/// Options of a pruning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneOptions {
    pub method: PruneMethod,
    /// Global pruning ratio in `[0, 1)`: the share of channels removed.
    pub ratio: f64,
    pub layer_ratios: LayerRatios,
}

impl PruneOptions {
    /// `method` at `ratio` with uniform layer ratios.
    pub fn new(method: PruneMethod, ratio: f64) -> Self {
        PruneOptions {
            method,
            ratio,
            layer_ratios: LayerRatios::Uniform,
        }
    }
}

/// Where a site sits in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteLocation {
    /// Top-level layers: producer, optional batch norm, consumer (indices into `layers`).
    Sequential {
        producer: usize,
        batch_norm: Option<usize>,
        consumer: usize,
    },
    /// An inner convolution of the residual block at index `layer` of `layers`: `inner` 0
    /// is `conv1` (consumed by `conv2`), 1 is a bottleneck's `conv2` (consumed by `conv3`).
    Block {
        layer: usize,
        #[serde(default)]
        inner: usize,
    },
}

/// A prunable group of channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneSite {
    /// Name of the producer layer, e.g. `features.0` or `layer1.0.conv1`.
    pub producer: String,
    /// Name of the consumer layer.
    pub consumer: String,
    /// Current number of output channels (or neurons) of the producer.
    pub width: usize,
    /// Whether the producer is a convolution (otherwise a linear layer).
    pub is_conv: bool,
    pub location: SiteLocation,
}

/// The prunable sites of `network`, in traversal order.
pub fn prune_sites(network: &Network) -> Vec<PruneSite> {
    let layers = &network.layers;
    let mut sites = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        match layer {
            Layer::Conv2d(_) | Layer::Linear(_) => {
                let mut j = i + 1;
                let mut batch_norm = None;
                if let Some(Layer::BatchNorm(_)) = layers.get(j) {
                    batch_norm = Some(j);
                    j += 1;
                }
                while let Some(
                    Layer::Relu
                    | Layer::MaxPool2d { .. }
                    | Layer::AvgPool2d { .. }
                    | Layer::GlobalAvgPool
                    | Layer::Flatten,
                ) = layers.get(j)
                {
                    j += 1;
                }
                let consumer = match layers.get(j) {
                    Some(Layer::Conv2d(c)) => c.name.clone(),
                    Some(Layer::Linear(l)) => l.name.clone(),
                    _ => continue,
                };
                let (producer, width, is_conv) = match layer {
                    Layer::Conv2d(c) => (c.name.clone(), c.out_channels(), true),
                    Layer::Linear(l) => (l.name.clone(), l.out_features(), false),
                    _ => continue,
                };
                sites.push(PruneSite {
                    producer,
                    consumer,
                    width,
                    is_conv,
                    location: SiteLocation::Sequential {
                        producer: i,
                        batch_norm,
                        consumer: j,
                    },
                });
            }
            Layer::BasicBlock(b) => {
                sites.push(PruneSite {
                    producer: b.conv1.name.clone(),
                    consumer: b.conv2.name.clone(),
                    width: b.conv1.out_channels(),
                    is_conv: true,
                    location: SiteLocation::Block { layer: i, inner: 0 },
                });
                if let Some(conv3) = &b.conv3 {
                    sites.push(PruneSite {
                        producer: b.conv2.name.clone(),
                        consumer: conv3.name.clone(),
                        width: b.conv2.out_channels(),
                        is_conv: true,
                        location: SiteLocation::Block { layer: i, inner: 1 },
                    });
                }
            }
            _ => {}
        }
    }
    sites
}

/// Layer ratios the paper of `method` uses: REPrune (kernel) allocates by the global
/// gamma quantile; every other method is uniform here (Neuron Merging's VGG-16 scheme is
/// `PaperDefault`, chosen explicitly).
pub fn paper_layer_ratios(method: &PruneMethod) -> LayerRatios {
    match method {
        PruneMethod::RepruneKernel(_) => LayerRatios::GammaQuantile,
        _ => LayerRatios::Uniform,
    }
}

/// Kept width of an `n`-channel site at `ratio`: `floor(n * (1 - ratio))` (the rule of the
/// Neuron Merging code), at least 1. A tolerance of 1e-9 absorbs binary rounding, so
/// `floor(10 * (1 - 0.7))` is 3.
pub fn kept_width(n: usize, ratio: f64) -> usize {
    ((n as f64 * (1.0 - ratio) + 1e-9).floor() as usize).clamp(1, n.max(1))
}

fn check_ratio(ratio: f64) -> Result<()> {
    if !(ratio.is_finite() && (0.0..1.0).contains(&ratio)) {
        return Err(CompressionError::InvalidRatio(ratio));
    }
    Ok(())
}

/// Resolves the kept width of every site (in [`prune_sites`] order).
pub fn resolve_keep_counts(network: &Network, options: &PruneOptions) -> Result<Vec<usize>> {
    let sites = prune_sites(network);
    let check_len = |len: usize| {
        if len != sites.len() {
            Err(CompressionError::Config(format!(
                "{len} per-site values given but {} has {} prunable sites",
                network.architecture,
                sites.len()
            )))
        } else {
            Ok(())
        }
    };
    match &options.layer_ratios {
        LayerRatios::Uniform => {
            check_ratio(options.ratio)?;
            Ok(sites
                .iter()
                .map(|s| kept_width(s.width, options.ratio))
                .collect())
        }
        LayerRatios::PaperDefault => {
            check_ratio(options.ratio)?;
            let conv_sites = sites.iter().filter(|s| s.is_conv).count();
            let is_vgg16 = network.architecture.starts_with("vgg16") && conv_sites == 13;
            let mut conv_index = 0usize;
            Ok(sites
                .iter()
                .map(|s| {
                    if !is_vgg16 {
                        return kept_width(s.width, options.ratio);
                    }
                    if !s.is_conv {
                        return s.width;
                    }
                    let idx = conv_index;
                    conv_index += 1;
                    if idx == 0 || idx >= 7 {
                        kept_width(s.width, options.ratio)
                    } else {
                        s.width
                    }
                })
                .collect())
        }
        LayerRatios::GammaQuantile => {
            check_ratio(options.ratio)?;
            let mut gammas: Vec<(f32, usize)> = Vec::new();
            let mut has_bn = vec![false; sites.len()];
            // Convolutions only: REPrune prunes channels of convolutions (it clusters their
            // kernels). A linear layer's BatchNorm1d ranked with them can lose all but one
            // unit (it did on VGG-16 x1.0 trained on digits: 512 -> 1, and fine-tuning could
            // not recover from the bottleneck).
            for (i, site) in sites.iter().enumerate().filter(|(_, s)| s.is_conv) {
                if let Some((gamma, ..)) = site_weights(network, site)?.batch_norm_raw {
                    has_bn[i] = true;
                    gammas.extend(gamma.iter().map(|g| (g.abs(), i)));
                }
            }
            // Stable sort: equal |gamma| keep traversal order.
            gammas.sort_by(|a, b| a.0.total_cmp(&b.0));
            let removed_total = (options.ratio * gammas.len() as f64 + 1e-9).floor() as usize;
            let mut removed = vec![0usize; sites.len()];
            for &(_, site) in gammas.iter().take(removed_total) {
                removed[site] += 1;
            }
            Ok(sites
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if has_bn[i] {
                        s.width.saturating_sub(removed[i]).max(1)
                    } else {
                        kept_width(s.width, options.ratio)
                    }
                })
                .collect())
        }
        LayerRatios::PerSite(ratios) => {
            check_len(ratios.len())?;
            ratios
                .iter()
                .zip(&sites)
                .map(|(&r, s)| check_ratio(r).map(|_| kept_width(s.width, r)))
                .collect()
        }
        LayerRatios::KeepCounts(counts) => {
            check_len(counts.len())?;
            counts
                .iter()
                .zip(&sites)
                .map(|(&k, s)| {
                    if k == 0 || k > s.width {
                        Err(CompressionError::Config(format!(
                            "site {} has {} channels; cannot keep {k}",
                            s.producer, s.width
                        )))
                    } else {
                        Ok(k)
                    }
                })
                .collect()
        }
    }
}

/// The producer-side view of a site that the selection rules work on.
#[derive(Debug, Clone)]
pub struct SiteWeights {
    pub producer: String,
    /// Number of output channels `n`.
    pub width: usize,
    /// Row-major `n x d` filters (`d = in * kh * kw` for convs, `in` for linear layers).
    pub filters: Vec<f32>,
    pub dim: usize,
    /// Producer bias, if any.
    pub bias: Option<Vec<f32>>,
    /// Inference-time batch-norm affine map `(scale, shift)` after the producer, if any.
    pub batch_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// The same batch norm as stored: `(gamma, beta, running mean, running variance)`.
    pub batch_norm_raw: Option<RawBatchNorm>,
    /// `(in_channels, kernel_area)` such that `d = in_channels * kernel_area` (linear layers:
    /// `(in, 1)`).
    pub kernel_layout: (usize, usize),
}

impl SiteWeights {
    /// Filter `i` as a slice of length `dim`.
    pub fn filter(&self, i: usize) -> &[f32] {
        &self.filters[i * self.dim..(i + 1) * self.dim]
    }
}

/// Batch-norm parameters as stored: `(gamma, beta, running mean, running variance)`.
pub type RawBatchNorm = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn raw_bn(bn: &super::model::BatchNorm) -> Result<RawBatchNorm> {
    Ok((
        bn.weight.to_vec1::<f32>()?,
        bn.bias.to_vec1::<f32>()?,
        bn.running_mean.to_vec1::<f32>()?,
        bn.running_var.to_vec1::<f32>()?,
    ))
}

/// What a method decided for one site.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Kept channel indices, strictly increasing.
    pub keep: Vec<usize>,
    /// Merges `(pruned channel, position in keep, positive scale)`: the consumer's input
    /// weights of the pruned channel, times the scale, are added to those of the kept one.
    pub merges: Vec<(usize, usize, f32)>,
}

impl Selection {
    /// Plain pruning keeping `keep` (sorted and deduplicated here).
    pub fn keep_only(mut keep: Vec<usize>) -> Self {
        keep.sort_unstable();
        keep.dedup();
        Selection {
            keep,
            merges: Vec::new(),
        }
    }
}

/// Prunes `network` with `options`; the result has the same input and output shapes.
pub fn prune(network: &Network, options: &PruneOptions) -> Result<Network> {
    let selections = select_all(network, options)?;
    apply_all(network, &selections)
}

/// What `options` decide for every site of `network` (in [`prune_sites`] order), computed
/// on the original weights.
pub fn select_all(network: &Network, options: &PruneOptions) -> Result<Vec<Selection>> {
    network.validate()?;
    let keep_counts = resolve_keep_counts(network, options)?;
    let sites = prune_sites(network);
    let mut rng_state = match options.method {
        PruneMethod::Random { seed } => Some(random::site_rng(seed)),
        _ => None,
    };
    let method = options.method.resolved_for(network)?;
    let mut selections = Vec::with_capacity(sites.len());
    for (site, &keep) in sites.iter().zip(&keep_counts) {
        let weights = site_weights(network, site)?;
        let selection = if keep >= site.width {
            Selection::keep_only((0..site.width).collect())
        } else {
            match &method {
                PruneMethod::L1 => l1::select(&weights, keep, SelectionCriterion::L1Norm),
                PruneMethod::L2 => l1::select(&weights, keep, SelectionCriterion::L2Norm),
                PruneMethod::GeometricMedian => {
                    l1::select(&weights, keep, SelectionCriterion::GeometricMedian)
                }
                PruneMethod::Random { .. } => match rng_state.as_mut() {
                    Some(rng) => random::select(&weights, keep, rng),
                    None => unreachable_rng()?,
                },
                PruneMethod::NeuronMerging(o) => neuron_merging::select(&weights, keep, o)?,
                PruneMethod::RepruneFilter(o) => reprune_filter::select(&weights, keep, o)?,
                PruneMethod::RepruneKernel(o) => reprune_kernel::select(&weights, keep, o)?,
            }
        };
        check_selection(&selection, site, keep)?;
        selections.push(selection);
    }
    Ok(selections)
}

/// Applies one selection per site (from [`select_all`] on this network).
pub fn apply_all(network: &Network, selections: &[Selection]) -> Result<Network> {
    let sites = prune_sites(network);
    if sites.len() != selections.len() {
        return Err(CompressionError::Shape(format!(
            "{} selections for {} sites",
            selections.len(),
            sites.len()
        )));
    }
    // Applying selections changes tensors only, never the layer list, so site locations
    // stay valid.
    let mut pruned = network.clone();
    for (site, selection) in sites.iter().zip(selections) {
        apply_selection(&mut pruned, site, selection)?;
    }
    pruned.validate()?;
    Ok(pruned)
}

/// Kept indices per tensor dimension: `(output rows, input columns)` of a parametric layer.
type KeptIndices = (Option<Vec<usize>>, Option<Vec<usize>>);

/// Writes the tensors of `pruned` (= `apply_all(full, selections)`, possibly trained
/// since) back into the kept positions of `full`; removed channels keep `full`'s values.
/// This is how a progressive schedule lets a removed channel come back ("regrow") with the
/// weights it last had. Selections with merges are refused: merged consumer weights have no
/// place in the full network.
pub fn scatter_into(full: &Network, pruned: &Network, selections: &[Selection]) -> Result<Network> {
    let sites = prune_sites(full);
    if sites.len() != selections.len() || selections.iter().any(|s| !s.merges.is_empty()) {
        return Err(CompressionError::Config(
            "scatter needs one plain selection (no merges) per site".into(),
        ));
    }
    let mut kept: std::collections::HashMap<String, KeptIndices> = Default::default();
    for (site, sel) in sites.iter().zip(selections) {
        let (bn_name, consumer_group) = match site.location {
            SiteLocation::Sequential {
                batch_norm,
                consumer,
                ..
            } => {
                let bn = batch_norm.and_then(|i| match &full.layers[i] {
                    Layer::BatchNorm(b) => Some(b.name.clone()),
                    _ => None,
                });
                let group = match &full.layers[consumer] {
                    Layer::Linear(l) => l.in_features() / site.width.max(1),
                    _ => 1,
                };
                (bn, group)
            }
            SiteLocation::Block { layer, inner } => match &full.layers[layer] {
                Layer::BasicBlock(b) => (
                    Some(if inner == 0 {
                        b.bn1.name.clone()
                    } else {
                        b.bn2.name.clone()
                    }),
                    1,
                ),
                _ => (None, 1),
            },
        };
        kept.entry(site.producer.clone()).or_default().0 = Some(sel.keep.clone());
        if let Some(bn) = bn_name {
            kept.entry(bn).or_default().0 = Some(sel.keep.clone());
        }
        let columns: Vec<usize> = sel
            .keep
            .iter()
            .flat_map(|&k| k * consumer_group..(k + 1) * consumer_group)
            .collect();
        kept.entry(site.consumer.clone()).or_default().1 = Some(columns);
    }
    let small: std::collections::HashMap<String, Tensor> =
        pruned.named_tensors().into_iter().collect();
    let mut merged = std::collections::HashMap::new();
    for (name, big) in full.named_tensors() {
        let Some(part) = small.get(&name) else {
            return Err(CompressionError::Shape(format!(
                "{name} missing in the pruned network"
            )));
        };
        let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l);
        let t = match kept.get(layer) {
            None => part.clone(),
            Some((rows, cols)) => scatter_tensor(&big, part, rows.as_deref(), cols.as_deref())?,
        };
        merged.insert(name, t);
    }
    super::model::Network::from_topology(&full.topology(), &merged)
}

fn scatter_tensor(
    big: &Tensor,
    part: &Tensor,
    rows: Option<&[usize]>,
    cols: Option<&[usize]>,
) -> Result<Tensor> {
    let dims = big.dims().to_vec();
    let pdims = part.dims().to_vec();
    let d0 = dims[0];
    let d1 = if dims.len() > 1 { dims[1] } else { 1 };
    let rest: usize = dims.iter().skip(2).product();
    let p0 = pdims[0];
    let p1 = if pdims.len() > 1 { pdims[1] } else { 1 };
    let all0: Vec<usize> = (0..d0).collect();
    let all1: Vec<usize> = (0..d1).collect();
    let rows = rows.unwrap_or(&all0);
    let cols = if dims.len() > 1 {
        cols.unwrap_or(&all1)
    } else {
        &all1[..1]
    };
    if rows.len() != p0 || cols.len() != p1 || pdims.iter().skip(2).product::<usize>() != rest {
        return Err(CompressionError::Shape(format!(
            "cannot place {pdims:?} into {dims:?}"
        )));
    }
    let mut values = big.flatten_all()?.to_vec1::<f32>()?;
    let small = part.flatten_all()?.to_vec1::<f32>()?;
    for (i, &r) in rows.iter().enumerate() {
        for (j, &c) in cols.iter().enumerate() {
            let dst = (r * d1 + c) * rest;
            let src = (i * p1 + j) * rest;
            values[dst..dst + rest].copy_from_slice(&small[src..src + rest]);
        }
    }
    Ok(Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)?)
}

fn unreachable_rng() -> Result<Selection> {
    Err(CompressionError::Config(
        "random method without a seed".into(),
    ))
}

fn check_selection(selection: &Selection, site: &PruneSite, keep: usize) -> Result<()> {
    let sorted = selection.keep.windows(2).all(|w| w[0] < w[1]);
    let in_range = selection.keep.iter().all(|&k| k < site.width);
    let merges_ok = selection
        .merges
        .iter()
        .all(|&(n, p, s)| n < site.width && p < selection.keep.len() && s.is_finite() && s >= 0.0);
    if selection.keep.len() != keep || !sorted || !in_range || !merges_ok {
        return Err(CompressionError::Shape(format!(
            "internal selection error at site {}: kept {} of {} (wanted {keep})",
            site.producer,
            selection.keep.len(),
            site.width
        )));
    }
    Ok(())
}

/// Extracts the producer weights (and bias / batch-norm map) of a site.
pub fn site_weights(network: &Network, site: &PruneSite) -> Result<SiteWeights> {
    let (weight, bias, bn) = match site.location {
        SiteLocation::Sequential {
            producer,
            batch_norm,
            ..
        } => {
            let (w, b) = match &network.layers[producer] {
                Layer::Conv2d(c) => (&c.weight, &c.bias),
                Layer::Linear(l) => (&l.weight, &l.bias),
                other => {
                    return Err(CompressionError::Shape(format!(
                        "site {} points at a {} layer",
                        site.producer,
                        other.kind()
                    )));
                }
            };
            let bn = match batch_norm.map(|i| &network.layers[i]) {
                Some(Layer::BatchNorm(bn)) => Some(bn),
                _ => None,
            };
            (w, b, bn)
        }
        SiteLocation::Block { layer, inner } => match &network.layers[layer] {
            Layer::BasicBlock(b) if inner == 0 => (&b.conv1.weight, &b.conv1.bias, Some(&b.bn1)),
            Layer::BasicBlock(b) if inner == 1 && b.conv3.is_some() => {
                (&b.conv2.weight, &b.conv2.bias, Some(&b.bn2))
            }
            other => {
                return Err(CompressionError::Shape(format!(
                    "site {} points at a {} layer",
                    site.producer,
                    other.kind()
                )));
            }
        },
    };
    let dims = weight.dims().to_vec();
    let width = dims[0];
    let dim: usize = dims[1..].iter().product();
    let kernel_layout = if dims.len() == 4 {
        (dims[1], dims[2] * dims[3])
    } else {
        (dims[1], 1)
    };
    Ok(SiteWeights {
        producer: site.producer.clone(),
        width,
        filters: weight.flatten_all()?.to_vec1::<f32>()?,
        dim,
        bias: match bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        },
        batch_norm: match bn {
            Some(bn) => Some(bn.folded_scale_shift()?),
            None => None,
        },
        batch_norm_raw: match bn {
            Some(bn) => Some(raw_bn(bn)?),
            None => None,
        },
        kernel_layout,
    })
}

fn index_tensor(indices: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    Ok(Tensor::from_vec(idx, indices.len(), &Device::Cpu)?)
}

fn select_rows(t: &Tensor, keep: &Tensor) -> Result<Tensor> {
    Ok(t.index_select(keep, 0)?.contiguous()?)
}

/// New consumer weight: input channel groups restricted to `keep`, with merged
/// contributions added. `weight` is `out x (n * group)` (linear) or `out x n x kh x kw`.
fn merge_consumer_weight(weight: &Tensor, n: usize, selection: &Selection) -> Result<Tensor> {
    let dims = weight.dims().to_vec();
    let out = dims[0];
    let total: usize = dims[1..].iter().product();
    if n == 0 || !total.is_multiple_of(n) {
        return Err(CompressionError::Shape(format!(
            "consumer weight {dims:?} cannot be split into {n} input channels"
        )));
    }
    let group = total / n;
    let kept = selection.keep.len();
    let mut new_dims = dims.clone();
    if dims.len() == 4 {
        new_dims[1] = kept;
    } else {
        new_dims[1] = kept * group;
    }
    let w3 = weight.reshape((out, n, group))?;
    if selection.merges.is_empty() {
        let keep = index_tensor(&selection.keep)?;
        return Ok(w3
            .index_select(&keep, 1)?
            .reshape(new_dims.as_slice())?
            .contiguous()?);
    }
    // Z (n x kept): one-hot rows for kept channels, scales for merged ones.
    let mut z = vec![0f32; n * kept];
    for (pos, &k) in selection.keep.iter().enumerate() {
        z[k * kept + pos] = 1.0;
    }
    for &(pruned, pos, scale) in &selection.merges {
        z[pruned * kept + pos] += scale;
    }
    let z = Tensor::from_vec(z, (n, kept), &Device::Cpu)?;
    let merged = w3
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out * group, n))?
        .matmul(&z)?
        .reshape((out, group, kept))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(new_dims.as_slice())?;
    Ok(merged)
}

fn apply_selection(network: &mut Network, site: &PruneSite, selection: &Selection) -> Result<()> {
    if selection.keep.len() == site.width && selection.merges.is_empty() {
        return Ok(());
    }
    let keep = index_tensor(&selection.keep)?;
    match site.location {
        SiteLocation::Sequential {
            producer,
            batch_norm,
            consumer,
        } => {
            match &mut network.layers[producer] {
                Layer::Conv2d(c) => {
                    c.weight = select_rows(&c.weight, &keep)?;
                    if let Some(b) = c.bias.as_mut() {
                        *b = select_rows(b, &keep)?;
                    }
                }
                Layer::Linear(l) => {
                    l.weight = select_rows(&l.weight, &keep)?;
                    if let Some(b) = l.bias.as_mut() {
                        *b = select_rows(b, &keep)?;
                    }
                }
                _ => {}
            }
            if let Some(i) = batch_norm
                && let Layer::BatchNorm(bn) = &mut network.layers[i]
            {
                select_bn(bn, &keep)?;
            }
            match &mut network.layers[consumer] {
                Layer::Conv2d(c) => {
                    c.weight = merge_consumer_weight(&c.weight, site.width, selection)?
                }
                Layer::Linear(l) => {
                    l.weight = merge_consumer_weight(&l.weight, site.width, selection)?
                }
                _ => {}
            }
        }
        SiteLocation::Block { layer, inner } => {
            if let Layer::BasicBlock(b) = &mut network.layers[layer] {
                let b = &mut **b;
                let (producer, bn, consumer) = match (inner, b.conv3.as_mut()) {
                    (0, _) => (&mut b.conv1, &mut b.bn1, &mut b.conv2),
                    (_, Some(conv3)) => (&mut b.conv2, &mut b.bn2, conv3),
                    _ => {
                        return Err(CompressionError::Shape(format!(
                            "site {} points at a missing convolution",
                            site.producer
                        )));
                    }
                };
                producer.weight = select_rows(&producer.weight, &keep)?;
                if let Some(bias) = producer.bias.as_mut() {
                    *bias = select_rows(bias, &keep)?;
                }
                select_bn(bn, &keep)?;
                consumer.weight = merge_consumer_weight(&consumer.weight, site.width, selection)?;
            }
        }
    }
    Ok(())
}

fn select_bn(bn: &mut super::model::BatchNorm, keep: &Tensor) -> Result<()> {
    bn.weight = select_rows(&bn.weight, keep)?;
    bn.bias = select_rows(&bn.bias, keep)?;
    bn.running_mean = select_rows(&bn.running_mean, keep)?;
    bn.running_var = select_rows(&bn.running_var, keep)?;
    Ok(())
}

/// Importance of every filter of a site under `criterion` (larger = kept first): the L1 or
/// L2 norm, or for the geometric median the sum of Euclidean distances to all filters.
pub(crate) fn filter_scores(weights: &SiteWeights, criterion: SelectionCriterion) -> Vec<f32> {
    match criterion {
        SelectionCriterion::GeometricMedian => (0..weights.width)
            .map(|i| {
                let fi = weights.filter(i);
                (0..weights.width)
                    .map(|j| clustering::squared_distance(fi, weights.filter(j)).sqrt())
                    .sum::<f64>() as f32
            })
            .collect(),
        _ => filter_norms(weights, criterion),
    }
}

/// Norms of every filter of a site (L1 for `L1Norm`, L2 otherwise).
pub(crate) fn filter_norms(weights: &SiteWeights, criterion: SelectionCriterion) -> Vec<f32> {
    (0..weights.width)
        .map(|i| {
            let f = weights.filter(i);
            match criterion {
                SelectionCriterion::L1Norm => f.iter().map(|v| v.abs()).sum(),
                _ => f.iter().map(|v| v * v).sum::<f32>().sqrt(),
            }
        })
        .collect()
}

/// Indices of the `keep` largest scores (ties: lower index first), sorted ascending.
pub(crate) fn top_k(scores: &[f32], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(keep);
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_width_rule() {
        // Hand computed: floor(n * (1 - r)).
        assert_eq!(kept_width(64, 0.5), 32);
        assert_eq!(kept_width(10, 0.3), 7);
        assert_eq!(kept_width(10, 0.7), 3);
        assert_eq!(kept_width(3, 0.99), 1);
        assert_eq!(kept_width(16, 0.0), 16);
        assert_eq!(kept_width(16, 0.7), 4); // 4.8
        assert_eq!(kept_width(8, 0.3), 5); // 5.6
        assert_eq!(kept_width(10, 0.25), 7); // 7.5
    }

    #[test]
    fn method_names_round_trip() {
        for m in PruneMethod::all_defaults() {
            let parsed: PruneMethod = m.name().parse().unwrap();
            assert_eq!(parsed.name(), m.name());
        }
        assert!(matches!(
            "magnitude".parse::<PruneMethod>(),
            Err(CompressionError::UnknownMethod(_))
        ));
    }

    #[test]
    fn ratio_out_of_range_is_an_error() {
        let net = Network::vgg16_bn_cifar(1.0 / 16.0, 10, 0).unwrap();
        for r in [1.0, -0.1, f64::NAN] {
            let err = prune(&net, &PruneOptions::new(PruneMethod::L1, r)).unwrap_err();
            assert!(matches!(err, CompressionError::InvalidRatio(_)));
        }
    }

    #[test]
    fn sites_of_resnet_are_inner_convs() {
        let net = Network::resnet_cifar(20, 0.25, 10, 0).unwrap();
        let sites = prune_sites(&net);
        assert_eq!(sites.len(), 9);
        assert!(
            sites
                .iter()
                .all(|s| s.producer.ends_with("conv1") && s.producer.contains('.'))
        );
    }

    #[test]
    fn paper_default_for_vgg16_is_li_et_al_scheme() {
        let net = Network::vgg16_bn_cifar(1.0, 10, 0).unwrap();
        let mut options = PruneOptions::new(PruneMethod::L1, 0.5);
        options.layer_ratios = LayerRatios::PaperDefault;
        let counts = resolve_keep_counts(&net, &options).unwrap();
        assert_eq!(
            counts,
            vec![
                32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256
            ]
        );
        let pruned = prune(&net, &options).unwrap();
        let before = crate::compression::count_cost(&net, 32, 32).unwrap().params as f64;
        let after = crate::compression::count_cost(&pruned, 32, 32)
            .unwrap()
            .params as f64;
        let reduction = 1.0 - after / before;
        assert!((0.63..0.65).contains(&reduction), "{reduction}");
    }

    #[test]
    fn gamma_quantile_allocation_by_hand() {
        use crate::compression::model::{VggConfig, VggItem};
        // Two conv sites of 4 and 8 channels (both with batch norm) and a linear
        // classifier. Gammas: site 0: 0.1 0.9 0.2 0.8; site 1: 0.5 0.05 0.6 0.7 0.3 1.0 1.1
        // 0.4. Ratio 0.5 removes the 6 smallest of 12: 0.05 0.1 0.2 0.3 0.4 0.5, i.e. 2 of
        // site 0 and 4 of site 1: kept widths 2 and 4.
        let config = VggConfig {
            items: vec![
                VggItem::Conv(4),
                VggItem::MaxPool,
                VggItem::Conv(8),
                VggItem::MaxPool,
            ],
            batch_norm: true,
            classifier_hidden: vec![6],
            global_pool: false,
            conv_bias: false,
            classifier_batch_norm: true,
        };
        let mut net = Network::vgg_cifar(&config, 1.0, 10, 0).unwrap();
        // The classifier's hidden layer (6 units, BatchNorm1d) has the smallest gammas of
        // all; it is not ranked with the convolutions and keeps floor(6 * (1 - r)).
        let gammas = [
            vec![0.1f32, 0.9, 0.2, 0.8],
            vec![0.5, 0.05, 0.6, 0.7, 0.3, 1.0, 1.1, 0.4],
            vec![0.001; 6],
        ];
        let mut which = 0;
        for layer in &mut net.layers {
            if let Layer::BatchNorm(bn) = layer {
                let g = gammas[which].clone();
                let n = g.len();
                bn.weight = Tensor::from_vec(g, n, &Device::Cpu).unwrap();
                which += 1;
            }
        }
        let mut options = PruneOptions::new(PruneMethod::L1, 0.5);
        options.layer_ratios = LayerRatios::GammaQuantile;
        assert_eq!(resolve_keep_counts(&net, &options).unwrap(), vec![2, 4, 3]);
        // Ratio 0.25 removes floor(3) = 3: 0.05, 0.1, 0.2 -> kept 2 and 7; floor(4.5) = 4.
        options.ratio = 0.25;
        assert_eq!(resolve_keep_counts(&net, &options).unwrap(), vec![2, 7, 4]);
        let pruned = prune(&net, &options).unwrap();
        assert_eq!(pruned.layer_widths()[1].1, 7);
    }
}
