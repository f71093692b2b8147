//! Mixing augmentations as pure functions on batches.
//!
//! This module owns the batch-level arithmetic of the mixing recipes: partner choice
//! (GuidedMixup's greedy single cycle, or a random permutation), GuidedMixup's pixel-wise masks
//! and their label weights, Input Mixup, CutMix and SaliencyMix boxes, soft targets, and
//! Catch-up Mix's channel choice and channel mixing. Batches are row-major `f32` slices,
//! batch-major (`B x C x H x W`, or `B x C x HW` for activations); saliency maps are one
//! `H x W` vector per image. Randomness comes only from the generator passed in; everything
//! else is deterministic. Length mismatches are programming errors and panic.
//!
//! Following the spec (`specs/training.md`, sections 1 and 2) and the papers:
//! - greedy pairing: `D[i][j]` = L2 distance of the maps, `D[i][i] = -inf`; the global argmax
//!   `(r, c)` gives `partner(r) = c`; then from row `c` the best column not yet used (column `r`
//!   is kept for the end), and so on for `B - 1` edges; `partner(last) = r` closes one cycle;
//! - GuidedMixup masks `M_i = s_i / (s_i + s_j + eps)`, `j = partner(i)`, one mask for all
//!   channels, `x~_i = M_i x_i + (1 - M_i) x_j`, label weight `lam_i = mean(M_i)`;
//! - CutMix: box side ratio `sqrt(1 - lam)` at a uniform centre, clipped; label weight = kept
//!   area fraction; SaliencyMix: the same box centred on the argmax of the source's map;
//! - Catch-up Mix: `q[i][c] = n[i][c] / sum_c n[i][c]` with `n` the spatial L2 norm of a
//!   channel, `RFI[i][c] = q[i][c] - q[partner(i)][c]`; sample `i` keeps its `floor(lam C)`
//!   channels of lowest RFI and takes the rest from its partner; label weight = kept fraction.
//!
//! The platform's choices:
//! - ties are broken towards the lowest index everywhere (argmax over `(row, column)` in
//!   row-major order, lowest channel index among equal RFI); NaN distances count as `-inf`;
//! - [`MASK_EPS`] = 1e-8; a pixel where both maps are zero takes the partner's pixel;
//! - the random pairing is a uniform permutation, as the authors' fallback is, so it may map
//!   an image to itself (that sample is then not mixed);
//! - CutMix's box is exactly `floor(H sqrt(1 - lam)) x floor(W sqrt(1 - lam))` before clipping
//!   (starting `side / 2` before the centre), where the common reference code makes it the
//!   even number `2 * floor(side / 2)`;
//! - `q` of a sample whose channel norms are all zero is uniform;
//! - [`sample_beta`] returns 1 (no mixing) for `alpha <= 0`, as Mixup's reference code does.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::Distribution;

/// Added to `s_i + s_j` in GuidedMixup's mask.
pub const MASK_EPS: f32 = 1e-8;

/// L2 distances between the flattened maps; the diagonal is `-inf`.
pub fn pair_distances(maps: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let b = maps.len();
    let mut d = vec![vec![f32::NEG_INFINITY; b]; b];
    for i in 0..b {
        for j in i + 1..b {
            let v = l2(&maps[i], &maps[j]);
            d[i][j] = v;
            d[j][i] = v;
        }
    }
    d
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "maps of different sizes: {} and {}",
        a.len(),
        b.len()
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (*x - *y) as f64;
            d * d
        })
        .sum::<f64>()
        .sqrt() as f32
}

/// NaN ranks as `-inf`.
fn key(v: f32) -> f32 {
    if v.is_nan() { f32::NEG_INFINITY } else { v }
}

/// GuidedMixup's greedy pairing: a permutation that is one cycle through the whole batch (no
/// fixed points for `B >= 2`), chosen to keep each image far, in saliency, from its partner.
/// `B = 0` gives `[]`, `B = 1` gives `[0]`.
pub fn greedy_pairing(maps: &[Vec<f32>]) -> Vec<usize> {
    let b = maps.len();
    if b <= 1 {
        return (0..b).collect();
    }
    let d = pair_distances(maps);
    let (mut r, mut c) = (0, 1);
    let mut best = f32::NEG_INFINITY;
    let mut found = false;
    for (i, row) in d.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            if i != j && (!found || key(v) > best) {
                (r, c, best, found) = (i, j, key(v), true);
            }
        }
    }
    let mut partner = vec![usize::MAX; b];
    let mut used = vec![false; b];
    used[r] = true;
    used[c] = true;
    partner[r] = c;
    let mut current = c;
    for _ in 1..b - 1 {
        let mut next = None;
        let mut best = f32::NEG_INFINITY;
        for j in 0..b {
            if !used[j] && (next.is_none() || key(d[current][j]) > best) {
                next = Some(j);
                best = key(d[current][j]);
            }
        }
        let j = next.expect("an unused column remains");
        partner[current] = j;
        used[j] = true;
        current = j;
    }
    partner[current] = r;
    partner
}

/// A uniformly random permutation of `0..n` (the authors' fallback pairing; it may have
/// fixed points).
pub fn random_pairing(n: usize, rng: &mut (impl Rng + ?Sized)) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(rng);
    p
}

/// Mean over `i` of the L2 distance between map `i` and map `partner[i]` (0 for an empty
/// batch).
pub fn mean_pair_distance(maps: &[Vec<f32>], partner: &[usize]) -> f32 {
    assert_eq!(maps.len(), partner.len(), "maps and partner lengths differ");
    if maps.is_empty() {
        return 0.0;
    }
    let total: f64 = partner
        .iter()
        .enumerate()
        .map(|(i, &j)| l2(&maps[i], &maps[j]) as f64)
        .sum();
    (total / maps.len() as f64) as f32
}

/// GuidedMixup's pixel-wise masks `M_i = s_i / (s_i + s_j + eps)` with `j = partner[i]`, and
/// the label weights `lam_i = mean(M_i)`.
pub fn guided_masks(saliency: &[Vec<f32>], partner: &[usize]) -> (Vec<Vec<f32>>, Vec<f32>) {
    assert_eq!(
        saliency.len(),
        partner.len(),
        "saliency and partner lengths differ"
    );
    let masks: Vec<Vec<f32>> = partner
        .iter()
        .enumerate()
        .map(|(i, &j)| {
            let (si, sj) = (&saliency[i], &saliency[j]);
            assert_eq!(si.len(), sj.len(), "saliency maps of different sizes");
            si.iter()
                .zip(sj)
                .map(|(a, b)| a / (a + b + MASK_EPS))
                .collect()
        })
        .collect();
    let lams = masks
        .iter()
        .map(|m| {
            if m.is_empty() {
                1.0
            } else {
                (m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64) as f32
            }
        })
        .collect();
    (masks, lams)
}

fn batch_of(images: &[f32], b: usize) -> usize {
    assert!(
        b == 0 || images.len().is_multiple_of(b),
        "{} values do not split into {b} samples",
        images.len()
    );
    images.len().checked_div(b).unwrap_or(0)
}

/// `x~_i = M_i x_i + (1 - M_i) x_partner(i)` per pixel, the same `H x W` mask for every
/// channel. `images` is `B x C x H x W`.
pub fn mix_pixelwise(
    images: &[f32],
    c: usize,
    h: usize,
    w: usize,
    masks: &[Vec<f32>],
    partner: &[usize],
) -> Vec<f32> {
    let b = partner.len();
    let hw = h * w;
    let per = c * hw;
    assert_eq!(images.len(), b * per, "images are not {b}x{c}x{h}x{w}");
    assert_eq!(masks.len(), b, "{} masks for {b} samples", masks.len());
    let mut out = vec![0.0f32; images.len()];
    for (i, &j) in partner.iter().enumerate() {
        let m = &masks[i];
        assert_eq!(m.len(), hw, "mask {i} is not {h}x{w}");
        for ch in 0..c {
            let base_i = i * per + ch * hw;
            let base_j = j * per + ch * hw;
            for p in 0..hw {
                out[base_i + p] = m[p] * images[base_i + p] + (1.0 - m[p]) * images[base_j + p];
            }
        }
    }
    out
}

/// Input Mixup with one weight for the batch: `x~_i = lam x_i + (1 - lam) x_partner(i)`.
/// The sample size is `images.len() / partner.len()`.
pub fn mixup(images: &[f32], partner: &[usize], lam: f32) -> Vec<f32> {
    let per = batch_of(images, partner.len());
    let mut out = vec![0.0f32; images.len()];
    for (i, &j) in partner.iter().enumerate() {
        for p in 0..per {
            out[i * per + p] = lam * images[i * per + p] + (1.0 - lam) * images[j * per + p];
        }
    }
    out
}

/// A half-open pixel box: rows `y0..y1`, columns `x0..x1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Box {
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
}

impl Box {
    /// Fraction of an `h x w` image the box covers.
    pub fn area_fraction(&self, h: usize, w: usize) -> f32 {
        if h == 0 || w == 0 {
            return 0.0;
        }
        let area = self.y1.saturating_sub(self.y0) * self.x1.saturating_sub(self.x0);
        area as f32 / (h * w) as f32
    }

    /// The label weight of the image the box is pasted into: `1 - area_fraction`.
    pub fn kept_fraction(&self, h: usize, w: usize) -> f32 {
        1.0 - self.area_fraction(h, w)
    }
}

/// Box sides for a kept fraction `lam`: `floor(side * sqrt(1 - lam))`.
fn box_sides(h: usize, w: usize, lam: f32) -> (usize, usize) {
    let ratio = (1.0 - lam.clamp(0.0, 1.0) as f64).sqrt();
    (
        ((h as f64 * ratio).floor() as usize).min(h),
        ((w as f64 * ratio).floor() as usize).min(w),
    )
}

/// A box of `cut_h x cut_w` centred (rounded down) on `(cy, cx)`, clipped to the image.
fn box_around(cy: usize, cx: usize, cut_h: usize, cut_w: usize, h: usize, w: usize) -> Box {
    let span = |centre: usize, side: usize, n: usize| {
        let start = centre as i64 - (side / 2) as i64;
        let end = start + side as i64;
        (
            start.clamp(0, n as i64) as usize,
            end.clamp(0, n as i64) as usize,
        )
    };
    let (y0, y1) = span(cy, cut_h, h);
    let (x0, x1) = span(cx, cut_w, w);
    Box { y0, y1, x0, x1 }
}

/// CutMix's box for a kept fraction `lam`: area `(1 - lam) H W` before clipping, centre
/// uniform over the pixels.
pub fn cutmix_box(h: usize, w: usize, lam: f32, rng: &mut (impl Rng + ?Sized)) -> Box {
    if h == 0 || w == 0 {
        return Box {
            y0: 0,
            y1: 0,
            x0: 0,
            x1: 0,
        };
    }
    let (cut_h, cut_w) = box_sides(h, w, lam);
    let cy = rng.random_range(0..h);
    let cx = rng.random_range(0..w);
    box_around(cy, cx, cut_h, cut_w, h, w)
}

/// SaliencyMix's box: CutMix's size, centred on the argmax (lowest index among ties) of the
/// source image's `h x w` saliency map, clipped.
pub fn saliency_box(saliency_of_source: &[f32], h: usize, w: usize, lam: f32) -> Box {
    assert_eq!(
        saliency_of_source.len(),
        h * w,
        "saliency map is not {h}x{w}"
    );
    if h == 0 || w == 0 {
        return Box {
            y0: 0,
            y1: 0,
            x0: 0,
            x1: 0,
        };
    }
    let mut arg = 0;
    for (p, &v) in saliency_of_source.iter().enumerate() {
        if key(v) > key(saliency_of_source[arg]) {
            arg = p;
        }
    }
    let (cut_h, cut_w) = box_sides(h, w, lam);
    box_around(arg / w, arg % w, cut_h, cut_w, h, w)
}

/// Pastes `partner(i)`'s pixels inside box `i` into image `i`, all channels. `boxes` holds one
/// box for the whole batch or one per image. `images` is `B x C x H x W`.
pub fn paste_box(
    images: &[f32],
    c: usize,
    h: usize,
    w: usize,
    partner: &[usize],
    boxes: &[Box],
) -> Vec<f32> {
    let b = partner.len();
    let (hw, per) = (h * w, c * h * w);
    assert_eq!(images.len(), b * per, "images are not {b}x{c}x{h}x{w}");
    assert!(
        boxes.len() == 1 || boxes.len() == b,
        "{} boxes for {b} samples",
        boxes.len()
    );
    let mut out = images.to_vec();
    for (i, &j) in partner.iter().enumerate() {
        let bx = if boxes.len() == 1 { boxes[0] } else { boxes[i] };
        let (y1, x1) = (bx.y1.min(h), bx.x1.min(w));
        for ch in 0..c {
            for y in bx.y0..y1 {
                for x in bx.x0..x1 {
                    let p = ch * hw + y * w + x;
                    out[i * per + p] = images[j * per + p];
                }
            }
        }
    }
    out
}

/// Soft targets `lam_i onehot(y_i) + (1 - lam_i) onehot(y_partner(i))`, `B x classes`.
pub fn soft_targets(
    labels: &[u32],
    partner: &[usize],
    lambdas: &[f32],
    classes: usize,
) -> Vec<f32> {
    let b = labels.len();
    assert_eq!(partner.len(), b, "partner and labels lengths differ");
    assert_eq!(lambdas.len(), b, "lambdas and labels lengths differ");
    let mut out = vec![0.0f32; b * classes];
    for i in 0..b {
        let (yi, yj) = (labels[i] as usize, labels[partner[i]] as usize);
        assert!(
            yi < classes && yj < classes,
            "label out of range 0..{classes}"
        );
        out[i * classes + yi] += lambdas[i];
        out[i * classes + yj] += 1.0 - lambdas[i];
    }
    out
}

/// Spatial L2 norm of every channel of `B x C x HW` activations, `B x C`.
pub fn channel_norms(acts: &[f32], b: usize, c: usize, hw: usize) -> Vec<f32> {
    assert_eq!(acts.len(), b * c * hw, "activations are not {b}x{c}x{hw}");
    (0..b * c)
        .map(|k| {
            acts[k * hw..(k + 1) * hw]
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect()
}

/// Catch-up Mix's relative filter influence: per sample `q = n / sum_c n` (uniform when the
/// sum is zero), `RFI[i][c] = q[i][c] - q[partner(i)][c]`. `B x C`.
pub fn relative_influence(norms: &[f32], b: usize, c: usize, partner: &[usize]) -> Vec<f32> {
    assert_eq!(norms.len(), b * c, "norms are not {b}x{c}");
    assert_eq!(partner.len(), b, "partner length is not {b}");
    let mut q = vec![0.0f64; b * c];
    for i in 0..b {
        let row = &norms[i * c..(i + 1) * c];
        let total: f64 = row.iter().map(|&v| v as f64).sum();
        for ch in 0..c {
            q[i * c + ch] = if total > 0.0 && total.is_finite() {
                row[ch] as f64 / total
            } else {
                1.0 / c as f64
            };
        }
    }
    (0..b * c)
        .map(|k| {
            let (i, ch) = (k / c, k % c);
            (q[k] - q[partner[i] * c + ch]) as f32
        })
        .collect()
}

/// Number of channels a sample keeps for a mixing weight `lam`: `floor(lam C)`.
pub fn keep_count(c: usize, lam: f32) -> usize {
    ((lam.clamp(0.0, 1.0) as f64 * c as f64).floor() as usize).min(c)
}

/// Per sample, `true` for the `keep` channels with the lowest RFI (ties: lowest index).
/// `keep` above `c` keeps every channel.
pub fn catchup_keep(rfi: &[f32], b: usize, c: usize, keep: usize) -> Vec<bool> {
    assert_eq!(rfi.len(), b * c, "rfi is not {b}x{c}");
    let mut mask = vec![false; b * c];
    for i in 0..b {
        let row = &rfi[i * c..(i + 1) * c];
        let mut order: Vec<usize> = (0..c).collect();
        // Stable sort: equal values keep index order. NaN sorts last (never preferred).
        order.sort_by(|&a, &b| {
            let (x, y) = (row[a], row[b]);
            match (x.is_nan(), y.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => x.partial_cmp(&y).expect("not NaN"),
            }
        });
        for &ch in order.iter().take(keep.min(c)) {
            mask[i * c + ch] = true;
        }
    }
    mask
}

/// Catch-up Mix's mixed activations: channel `ch` of sample `i` comes from `i` where
/// `keep_mask[i][ch]`, otherwise from `partner(i)`.
pub fn mix_channels(
    acts: &[f32],
    b: usize,
    c: usize,
    hw: usize,
    keep_mask: &[bool],
    partner: &[usize],
) -> Vec<f32> {
    assert_eq!(acts.len(), b * c * hw, "activations are not {b}x{c}x{hw}");
    assert_eq!(keep_mask.len(), b * c, "keep mask is not {b}x{c}");
    assert_eq!(partner.len(), b, "partner length is not {b}");
    let mut out = vec![0.0f32; acts.len()];
    for i in 0..b {
        for ch in 0..c {
            let src = if keep_mask[i * c + ch] { i } else { partner[i] };
            let (to, from) = ((i * c + ch) * hw, (src * c + ch) * hw);
            out[to..to + hw].copy_from_slice(&acts[from..from + hw]);
        }
    }
    out
}

/// `lam ~ Beta(alpha, alpha)`; 1 (no mixing) when `alpha` is not positive and finite.
pub fn sample_beta(alpha: f32, rng: &mut (impl Rng + ?Sized)) -> f32 {
    if !(alpha > 0.0 && alpha.is_finite()) {
        return 1.0;
    }
    match rand_distr::Beta::new(alpha, alpha) {
        Ok(dist) => dist.sample(rng),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn random_maps(b: usize, n: usize, rng: &mut StdRng) -> Vec<Vec<f32>> {
        (0..b)
            .map(|_| {
                let raw: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
                crate::training::saliency::normalize_sum(&raw)
            })
            .collect()
    }

    fn is_single_cycle(partner: &[usize]) -> bool {
        let b = partner.len();
        let mut seen = vec![false; b];
        let mut at = 0;
        for _ in 0..b {
            if at >= b || seen[at] {
                return false;
            }
            seen[at] = true;
            at = partner[at];
        }
        at == 0 && seen.iter().all(|&s| s)
    }

    #[test]
    fn greedy_pairing_is_one_cycle() {
        assert_eq!(greedy_pairing(&[]), Vec::<usize>::new());
        assert_eq!(greedy_pairing(&[vec![1.0]]), vec![0]);
        assert_eq!(greedy_pairing(&[vec![1.0], vec![2.0]]), vec![1, 0]);
        for seed in 0..5 {
            let mut rng = StdRng::seed_from_u64(seed);
            for b in 2..=16 {
                let maps = random_maps(b, 16, &mut rng);
                let p = greedy_pairing(&maps);
                assert!(is_single_cycle(&p), "seed {seed} B {b}: {p:?}");
                assert!(p.iter().enumerate().all(|(i, &j)| i != j));
            }
        }
        // Identical maps (all distances tie) still give one cycle.
        assert!(is_single_cycle(&greedy_pairing(&vec![vec![0.5; 4]; 7])));
    }

    #[test]
    fn greedy_pairing_beats_random_pairing() {
        let mut rng = StdRng::seed_from_u64(7);
        for b in [4, 8, 16, 32] {
            let maps = random_maps(b, 64, &mut rng);
            let greedy = mean_pair_distance(&maps, &greedy_pairing(&maps));
            let runs = 20;
            let random: f32 = (0..runs)
                .map(|_| mean_pair_distance(&maps, &random_pairing(b, &mut rng)))
                .sum::<f32>()
                / runs as f32;
            assert!(greedy > random, "B {b}: greedy {greedy} <= random {random}");
        }
    }

    #[test]
    fn greedy_pairing_hand_example() {
        // Points on a line, as 1-pixel maps: 0, 1, 3, 7.
        // D: d01=1 d02=3 d03=7 d12=2 d13=6 d23=4.
        // Global argmax (0,3): partner(0)=3, columns 0 and 3 used.
        // Row 3 among {1, 2}: d31=6 > d32=4 -> partner(3)=1. Row 1 among {2}: partner(1)=2.
        // Close: partner(2)=0.
        let maps = vec![vec![0.0], vec![1.0], vec![3.0], vec![7.0]];
        assert_eq!(greedy_pairing(&maps), vec![3, 2, 0, 1]);
        assert!(
            (mean_pair_distance(&maps, &[3, 2, 0, 1]) - (7.0 + 2.0 + 3.0 + 6.0) / 4.0).abs() < 1e-6
        );
        // Three points 0, 1, 5: argmax (0,2); row 2 -> 1; close partner(1)=0.
        assert_eq!(
            greedy_pairing(&[vec![0.0], vec![1.0], vec![5.0]]),
            vec![2, 0, 1]
        );
        let d = pair_distances(&[vec![0.0, 0.0], vec![3.0, 4.0]]);
        assert_eq!(d[0][1], 5.0);
        assert_eq!(d[0][0], f32::NEG_INFINITY);
    }

    #[test]
    fn random_pairing_is_a_permutation() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut p = random_pairing(10, &mut rng);
        p.sort_unstable();
        assert_eq!(p, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn guided_masks_weights_sum_to_one_and_labels_are_mask_means() {
        let mut rng = StdRng::seed_from_u64(11);
        let (b, c, h, w) = (5, 3, 4, 6);
        let sal = random_maps(b, h * w, &mut rng);
        let partner = greedy_pairing(&sal);
        let (masks, lams) = guided_masks(&sal, &partner);
        for (i, &j) in partner.iter().enumerate() {
            for p in 0..h * w {
                let partner_weight = sal[j][p] / (sal[i][p] + sal[j][p] + MASK_EPS);
                assert!((masks[i][p] + partner_weight - 1.0).abs() < 1e-4);
                assert!((0.0..=1.0).contains(&masks[i][p]));
            }
            let mean = masks[i].iter().sum::<f32>() / (h * w) as f32;
            assert!((lams[i] - mean).abs() < 1e-6);
        }
        // Image i all ones, every other image zero: mixed image i equals M_i in each channel;
        // its partner's pixels contribute exactly 1 - M_i (tested with the roles swapped).
        for i in 0..b {
            let mut images = vec![0.0f32; b * c * h * w];
            images[i * c * h * w..(i + 1) * c * h * w].fill(1.0);
            let mixed = mix_pixelwise(&images, c, h, w, &masks, &partner);
            let from = |k: usize, ch: usize, p: usize| mixed[(k * c + ch) * h * w + p];
            let k = partner.iter().position(|&j| j == i).unwrap();
            for ch in 0..c {
                for (p, (mi, mk)) in masks[i].iter().zip(&masks[k]).enumerate() {
                    assert!((from(i, ch, p) - mi).abs() < 1e-6);
                    assert!((from(k, ch, p) - (1.0 - mk)).abs() < 1e-6);
                }
            }
        }
        // An involution pair: M_0 + M_1 = 1 per pixel (up to eps).
        let (pair, _) = guided_masks(&sal[..2], &[1, 0]);
        for (m0, m1) in pair[0].iter().zip(&pair[1]) {
            assert!((m0 + m1 - 1.0).abs() < 1e-4);
        }
        let labels = [0u32, 3, 3, 1, 2];
        let t = soft_targets(&labels, &partner, &lams, 4);
        for i in 0..b {
            let row = &t[i * 4..(i + 1) * 4];
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn soft_targets_by_hand() {
        let t = soft_targets(&[0, 1, 1], &[1, 2, 0], &[0.7, 0.4, 0.25], 3);
        assert_eq!(t, vec![0.7, 0.3, 0.0, 0.0, 1.0, 0.0, 0.75, 0.25, 0.0]);
    }

    #[test]
    fn mixup_by_hand() {
        let out = mixup(&[1.0, 2.0, 10.0, 20.0], &[1, 0], 0.25);
        assert_eq!(out, vec![7.75, 15.5, 3.25, 6.5]);
    }

    #[test]
    fn cutmix_box_area_matches_lam() {
        let mut rng = StdRng::seed_from_u64(5);
        let (h, w) = (32, 32);
        let mut unclipped = 0;
        for _ in 0..200 {
            let lam: f32 = rng.random();
            let bx = cutmix_box(h, w, lam, &mut rng);
            assert!(bx.y0 <= bx.y1 && bx.y1 <= h && bx.x0 <= bx.x1 && bx.x1 <= w);
            let side = (32.0 * (1.0 - lam).sqrt()).floor();
            let full = side * side / 1024.0;
            let got = bx.area_fraction(h, w);
            assert!(got <= full + 1e-6);
            if bx.y1 - bx.y0 == side as usize && bx.x1 - bx.x0 == side as usize {
                unclipped += 1;
                // floor costs under one row and one column: 2 * 32 / 1024.
                assert!((got - (1.0 - lam)).abs() <= 2.0 * 32.0 / 1024.0 + 1e-6);
                assert!((bx.kept_fraction(h, w) - lam).abs() <= 2.0 * 32.0 / 1024.0 + 1e-6);
            }
        }
        assert!(unclipped > 10, "too few unclipped boxes: {unclipped}");
        // lam = 0.75 on 8x8: side 4, centre (4, 4) unclipped area 16 / 64.
        assert_eq!(
            box_around(4, 4, 4, 4, 8, 8),
            Box {
                y0: 2,
                y1: 6,
                x0: 2,
                x1: 6
            }
        );
        assert_eq!(box_sides(8, 8, 0.75), (4, 4));
    }

    #[test]
    fn saliency_box_centres_on_argmax() {
        let mut s = vec![0.0f32; 8 * 8];
        s[5 * 8 + 6] = 1.0;
        // lam 0.75 -> 4x4 box around (5, 6): rows 3..7, columns 4..8.
        assert_eq!(
            saliency_box(&s, 8, 8, 0.75),
            Box {
                y0: 3,
                y1: 7,
                x0: 4,
                x1: 8
            }
        );
        // Clipped at the corner: argmax (0, 0) -> rows 0..2, columns 0..2.
        let mut s = vec![0.0f32; 64];
        s[0] = 2.0;
        let bx = saliency_box(&s, 8, 8, 0.75);
        assert_eq!(
            bx,
            Box {
                y0: 0,
                y1: 2,
                x0: 0,
                x1: 2
            }
        );
        assert!((bx.area_fraction(8, 8) - 4.0 / 64.0).abs() < 1e-7);
    }

    #[test]
    fn paste_box_copies_exactly_the_box() {
        let (b, c, h, w) = (3, 2, 5, 6);
        let images: Vec<f32> = (0..b * c * h * w).map(|v| v as f32).collect();
        let partner = [2, 0, 1];
        let boxes = [
            Box {
                y0: 1,
                y1: 3,
                x0: 2,
                x1: 5,
            },
            Box {
                y0: 0,
                y1: 5,
                x0: 0,
                x1: 1,
            },
            Box {
                y0: 4,
                y1: 4,
                x0: 0,
                x1: 6,
            },
        ];
        for per_image in [false, true] {
            let used: &[Box] = if per_image { &boxes } else { &boxes[..1] };
            let out = paste_box(&images, c, h, w, &partner, used);
            for i in 0..b {
                let bx = used[if per_image { i } else { 0 }];
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            let inside = y >= bx.y0 && y < bx.y1 && x >= bx.x0 && x < bx.x1;
                            let src = if inside { partner[i] } else { i };
                            let at = |k: usize| ((k * c + ch) * h + y) * w + x;
                            assert_eq!(out[at(i)], images[at(src)]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn catchup_keeps_the_relatively_weak_channels() {
        // B = 2, C = 4, HW = 2. Channel values chosen for round norms:
        // sample 0 norms [5, 1, 2, 2] (sum 10) -> q0 = [.5, .1, .2, .2]
        // sample 1 norms [1, 3, 4, 2] (sum 10) -> q1 = [.1, .3, .4, .2]
        let acts = vec![
            3.0, 4.0, 1.0, 0.0, 0.0, 2.0, 2.0, 0.0, // sample 0
            0.0, 1.0, 3.0, 0.0, 0.0, 4.0, 0.0, -2.0, // sample 1
        ];
        let norms = channel_norms(&acts, 2, 4, 2);
        assert_eq!(norms, vec![5.0, 1.0, 2.0, 2.0, 1.0, 3.0, 4.0, 2.0]);
        let rfi = relative_influence(&norms, 2, 4, &[1, 0]);
        let want = [0.4, -0.2, -0.2, 0.0, -0.4, 0.2, 0.2, 0.0];
        for (g, e) in rfi.iter().zip(want) {
            assert!((g - e).abs() < 1e-6, "{rfi:?}");
        }
        // keep 2: sample 0 keeps channels 1 and 2 (RFI -0.2, tie -> both); sample 1 keeps
        // channel 0 (-0.4) and channel 3 (0.0).
        let keep = catchup_keep(&rfi, 2, 4, 2);
        assert_eq!(
            keep,
            vec![false, true, true, false, true, false, false, true]
        );
        // keep 1: tie at -0.2 in sample 0 goes to the lower index, channel 1.
        let keep1 = catchup_keep(&rfi, 2, 4, 1);
        assert_eq!(
            keep1,
            vec![false, true, false, false, true, false, false, false]
        );
        // keep 2: sample 0 takes channels 0 and 3 from sample 1; sample 1 takes channels 1
        // and 2 from sample 0 (with C/2 kept in a swapped pair both end up alike).
        let mixed = mix_channels(&acts, 2, 4, 2, &keep, &[1, 0]);
        let both = [0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 0.0, -2.0];
        assert_eq!(mixed, [both, both].concat());
        // keep 1: sample 0 keeps only channel 1, sample 1 only channel 0.
        let mixed1 = mix_channels(&acts, 2, 4, 2, &keep1, &[1, 0]);
        assert_eq!(
            mixed1,
            vec![
                0.0, 1.0, 1.0, 0.0, 0.0, 4.0, 0.0, -2.0, // sample 0
                0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 0.0, // sample 1
            ]
        );
        assert_eq!(keep_count(4, 0.6), 2);
        assert_eq!(keep_count(4, 1.0), 4);
    }

    #[test]
    fn sample_beta_is_in_range_and_handles_alpha_zero() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sample_beta(0.0, &mut rng), 1.0);
        let draws: Vec<f32> = (0..2000).map(|_| sample_beta(1.0, &mut rng)).collect();
        assert!(draws.iter().all(|v| (0.0..=1.0).contains(v)));
        let mean = draws.iter().sum::<f32>() / draws.len() as f32;
        assert!((mean - 0.5).abs() < 0.03, "Beta(1,1) mean {mean}");
    }
}
