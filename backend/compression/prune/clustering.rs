//! Agglomerative (hierarchical) clustering with Ward linkage on Euclidean distances, as
//! used by both REPrune variants.
//!
//! The dendrogram is built with the nearest-neighbour-chain algorithm (exact for Ward,
//! which is a reducible linkage) and Lance-Williams updates on squared distances, in
//! `O(n^2)` time and memory. Cutting it into `k` clusters applies the `n - k` lowest merges,
//! which gives the same partition as SciPy's `fcluster(..., 'maxclust')` /
//! scikit-learn's `AgglomerativeClustering(n_clusters=k, linkage="ward")` up to ties.

/// Cluster labels `0..k` of `n` points (row-major `n x dim`), Ward linkage, cut at
/// `k` clusters (`k` is clamped to `1..=n`). Labels are numbered in order of first
/// appearance, so the result is deterministic.
pub fn ward_clusters(points: &[f32], n: usize, dim: usize, k: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let k = k.clamp(1, n);
    let mut merges = ward_dendrogram(points, n, dim);
    // Stable sort by height keeps a cluster's creation before its later merges.
    merges.sort_by(|a, b| a.2.total_cmp(&b.2));
    let mut parent: Vec<usize> = (0..n).collect();
    for &(a, b, _) in merges.iter().take(n - k) {
        let ra = find(&mut parent, a);
        let rb = find(&mut parent, b);
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    let mut label_of_root = vec![usize::MAX; n];
    let mut next = 0usize;
    (0..n)
        .map(|i| {
            let r = find(&mut parent, i);
            if label_of_root[r] == usize::MAX {
                label_of_root[r] = next;
                next += 1;
            }
            label_of_root[r]
        })
        .collect()
}

/// Merge heights of a Ward dendrogram in increasing order (`n - 1` values, on the squared
/// scale of [`ward_dendrogram`], a monotone transform of SciPy's heights, so comparisons
/// and maxima agree).
pub fn ward_heights(points: &[f32], n: usize, dim: usize) -> Vec<f64> {
    let mut heights: Vec<f64> = ward_dendrogram(points, n, dim)
        .into_iter()
        .map(|m| m.2)
        .collect();
    heights.sort_by(f64::total_cmp);
    heights
}

/// Cluster labels of `n` points after applying every Ward merge of height at most `height`
/// (a dendrogram cut at that height; labels in order of first appearance).
pub fn ward_cut_at_height(points: &[f32], n: usize, dim: usize, height: f64) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let mut merges = ward_dendrogram(points, n, dim);
    merges.sort_by(|a, b| a.2.total_cmp(&b.2));
    let applied = merges.iter().take_while(|m| m.2 <= height).count();
    labels_after(n, &merges[..applied])
}

fn labels_after(n: usize, merges: &[(usize, usize, f64)]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..n).collect();
    for &(a, b, _) in merges {
        let ra = find(&mut parent, a);
        let rb = find(&mut parent, b);
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    let mut label_of_root = vec![usize::MAX; n];
    let mut next = 0usize;
    (0..n)
        .map(|i| {
            let r = find(&mut parent, i);
            if label_of_root[r] == usize::MAX {
                label_of_root[r] = next;
                next += 1;
            }
            label_of_root[r]
        })
        .collect()
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// The `n - 1` merges `(a, b, height)` of a Ward dendrogram, in discovery order. A merged
/// cluster keeps the index `min(a, b)`.
pub fn ward_dendrogram(points: &[f32], n: usize, dim: usize) -> Vec<(usize, usize, f64)> {
    // d[i][j]: Ward dissimilarity on squared distances (initially ||x_i - x_j||^2).
    let mut d = vec![0f64; n * n];
    for i in 0..n {
        let xi = &points[i * dim..(i + 1) * dim];
        for j in (i + 1)..n {
            let xj = &points[j * dim..(j + 1) * dim];
            let dist: f64 = xi
                .iter()
                .zip(xj)
                .map(|(a, b)| {
                    let t = (*a - *b) as f64;
                    t * t
                })
                .sum();
            d[i * n + j] = dist;
            d[j * n + i] = dist;
        }
    }
    let mut size = vec![1usize; n];
    let mut active = vec![true; n];
    let mut remaining = n;
    let mut chain: Vec<usize> = Vec::with_capacity(n);
    let mut merges = Vec::with_capacity(n.saturating_sub(1));
    while remaining > 1 {
        if chain.is_empty()
            && let Some(first) = (0..n).find(|&i| active[i])
        {
            chain.push(first);
        }
        let a = chain[chain.len() - 1];
        let prev = if chain.len() >= 2 {
            Some(chain[chain.len() - 2])
        } else {
            None
        };
        // Nearest active neighbour of `a`; ties prefer the previous chain element, which
        // guarantees termination, then the lowest index.
        let mut best = prev;
        let mut best_d = prev.map_or(f64::INFINITY, |p| d[a * n + p]);
        for j in 0..n {
            if j != a && active[j] && d[a * n + j] < best_d {
                best = Some(j);
                best_d = d[a * n + j];
            }
        }
        let Some(b) = best else { break };
        if Some(b) == prev {
            chain.pop();
            chain.pop();
            let (keep, gone) = (a.min(b), a.max(b));
            let (si, sj) = (size[keep] as f64, size[gone] as f64);
            let dij = d[keep * n + gone];
            for k in 0..n {
                if !active[k] || k == keep || k == gone {
                    continue;
                }
                let sk = size[k] as f64;
                let updated = ((si + sk) * d[keep * n + k] + (sj + sk) * d[gone * n + k]
                    - sk * dij)
                    / (si + sj + sk);
                d[keep * n + k] = updated;
                d[k * n + keep] = updated;
            }
            size[keep] += size[gone];
            active[gone] = false;
            remaining -= 1;
            merges.push((keep, gone, dij));
        } else {
            chain.push(b);
        }
    }
    merges
}

/// Centroids (row-major `k x dim`) of the clusters given by `labels` (values `0..k`).
pub fn centroids(points: &[f32], dim: usize, labels: &[usize], k: usize) -> Vec<f32> {
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (i, &l) in labels.iter().enumerate() {
        counts[l] += 1;
        for t in 0..dim {
            sums[l * dim + t] += points[i * dim + t] as f64;
        }
    }
    sums.iter()
        .enumerate()
        .map(|(idx, s)| (s / counts[idx / dim].max(1) as f64) as f32)
        .collect()
}

/// Squared Euclidean distance.
pub fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let t = (*x - *y) as f64;
            t * t
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn separates_obvious_groups() {
        // Three tight groups on a line.
        let pts = [0.0, 0.1, 0.2, 10.0, 10.1, 20.0, 20.2, 20.1];
        let labels = ward_clusters(&pts, 8, 1, 3);
        assert_eq!(labels, vec![0, 0, 0, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn cut_at_height_applies_the_merges_below_it() {
        // Points 0, 1, 10 on a line: merges at squared Ward heights 1 (0 with 1) and
        // 2 * (2 * 1 / 3) * 9.5^2 = 120.33 (the pair with 10).
        let pts = [0.0, 1.0, 10.0];
        let h = ward_heights(&pts, 3, 1);
        assert!((h[0] - 1.0).abs() < 1e-9);
        assert!((h[1] - 2.0 * (2.0 / 3.0) * 9.5 * 9.5).abs() < 1e-6);
        assert_eq!(ward_cut_at_height(&pts, 3, 1, 0.5), vec![0, 1, 2]);
        assert_eq!(ward_cut_at_height(&pts, 3, 1, 1.0), vec![0, 0, 1]);
        assert_eq!(ward_cut_at_height(&pts, 3, 1, 1e9), vec![0, 0, 0]);
    }

    #[test]
    fn ward_merge_height_matches_definition() {
        // Two points at distance 2: squared Ward height 4 (= 2 * 1*1/2 * 2^2).
        let merges = ward_dendrogram(&[0.0, 2.0], 2, 1);
        assert_eq!(merges.len(), 1);
        assert!((merges[0].2 - 4.0).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn produces_exactly_k_clusters(values in proptest::collection::vec(-5.0f32..5.0, 2..40), k in 1usize..10) {
            let n = values.len() / 2;
            prop_assume!(n >= 1);
            let labels = ward_clusters(&values[..n * 2], n, 2, k);
            let distinct = labels.iter().copied().max().map_or(0, |m| m + 1);
            prop_assert_eq!(distinct, k.min(n));
            prop_assert_eq!(labels.len(), n);
        }
    }
}
