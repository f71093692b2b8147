//! Exact k-nearest-neighbour radii within one set.
//!
//! What it owns: the pass of a set against itself that keeps, for every row, the k smallest
//! squared distances to the *other* rows (a sample's distance to itself, 0, is the implicit
//! first entry, so the k-th kept value is the "(k+1)-th smallest of the row, self included" of
//! the spec). Each rayon worker keeps its own sorted lists, sized N x k, merged at the end;
//! the candidate bounds derived from them are shared between workers. Distances are exact f64
//! (see the distance engine in `distance.rs`).

use std::sync::atomic::{AtomicU32, Ordering};

use super::distance::{
    Frame, Isa, Packed, PairVisitor, Progress, TILE, diagonal_pass, off_diagonal_pass,
    self_pass_units,
};
use super::{Embeddings, Result, check_k, check_rows, check_set};

/// Distance from every sample to its k-th nearest other sample (exact, Euclidean).
///
/// Needs at least k + 2 samples, like the metrics.
pub fn knn_radii(set: &Embeddings, k: usize) -> Result<Vec<f64>> {
    check_set(set, "input")?;
    check_k(k)?;
    check_rows(set, "input", k)?;
    let frame = Frame::new(&[set]);
    let packed = Packed::new(set, &frame);
    let progress = Progress::new(None, self_pass_units(set.rows));
    let lists = knn_lists(Isa::detect(), &packed, &frame, k, &progress);
    Ok(lists.radii(k))
}

/// For every row, the `k` smallest squared distances to other rows, ascending.
pub(crate) struct KnnLists {
    k: usize,
    sq: Vec<f64>,
}

impl KnnLists {
    /// Squared distance from row `i` to its `kk`-th nearest other row (`1 <= kk <= k`).
    pub(crate) fn kth_sq(&self, i: usize, kk: usize) -> f64 {
        self.sq[i * self.k + kk - 1]
    }

    /// Squared `kk`-th neighbour distances of all rows.
    pub(crate) fn kth_sq_all(&self, kk: usize) -> Vec<f64> {
        (0..self.sq.len() / self.k)
            .map(|i| self.kth_sq(i, kk))
            .collect()
    }

    /// `kk`-th neighbour distances of all rows.
    pub(crate) fn radii(&self, kk: usize) -> Vec<f64> {
        self.kth_sq_all(kk).into_iter().map(f64::sqrt).collect()
    }
}

/// Runs the self pass of `packed`, keeping `k` neighbours per row.
///
/// Every worker keeps its own neighbour lists, but the candidate bounds are shared: any
/// worker's k-th distance for a row is an upper bound of the final one, so the smallest of them
/// (kept with atomic min-updates) never skips a true neighbour, and every worker profits from
/// the others' progress. The diagonal tiles run first (rows of different tiles share nothing
/// there), so the off-diagonal workers start from bounds given by each row's tile-mates rather
/// than from infinity. All lists are merged at the end.
pub(crate) fn knn_lists(
    isa: Isa,
    packed: &Packed,
    frame: &Frame,
    k: usize,
    progress: &Progress,
) -> KnnLists {
    let rows = packed.rows();
    let bounds: Vec<AtomicU32> = (0..rows)
        .map(|_| AtomicU32::new(f32::INFINITY.to_bits()))
        .collect();
    let diagonal = diagonal_pass(
        isa,
        packed,
        |tile| {
            let base = tile * TILE;
            let len = (rows - base).min(TILE);
            KnnVisitor::new(frame, &bounds, k, base, len)
        },
        progress,
    );
    let mut seed_sq = Vec::with_capacity(rows * k);
    for visitor in diagonal {
        seed_sq.extend_from_slice(&visitor.sq);
    }
    let make = || KnnVisitor::new(frame, &bounds, k, 0, rows);
    let mut merged = off_diagonal_pass(isa, packed, make, KnnVisitor::merge, progress);
    merged.merge_lists(&seed_sq);
    KnnLists { k, sq: merged.sq }
}

/// A worker's neighbour lists of rows `base..base + len`, and the shared candidate bounds.
struct KnnVisitor<'a> {
    frame: &'a Frame,
    /// Candidate bound per row of the whole set, as f32 bits (non-negative, so the bit
    /// patterns order like the values).
    bounds: &'a [AtomicU32],
    k: usize,
    base: usize,
    /// `k` squared distances per row, each row's slice ascending, `+inf` when unfilled.
    sq: Vec<f64>,
}

impl<'a> KnnVisitor<'a> {
    fn new(frame: &'a Frame, bounds: &'a [AtomicU32], k: usize, base: usize, len: usize) -> Self {
        Self {
            frame,
            bounds,
            k,
            base,
            sq: vec![f64::INFINITY; len * k],
        }
    }

    #[inline(always)]
    fn offer(&mut self, i: usize, d2: f64) {
        let k = self.k;
        let local = i - self.base;
        let list = &mut self.sq[local * k..(local + 1) * k];
        if d2 >= list[k - 1] {
            return;
        }
        let mut pos = k - 1;
        while pos > 0 && list[pos - 1] > d2 {
            list[pos] = list[pos - 1];
            pos -= 1;
        }
        list[pos] = d2;
        let bound = self.frame.bound(list[k - 1]).to_bits();
        if bound < self.bounds[i].load(Ordering::Relaxed) {
            self.bounds[i].fetch_min(bound, Ordering::Relaxed);
        }
    }

    fn merge(mut self, other: Self) -> Self {
        self.merge_lists(&other.sq);
        self
    }

    /// Keeps, per row, the k smallest of this visitor's list and `other`'s (same layout).
    fn merge_lists(&mut self, other: &[f64]) {
        let k = self.k;
        let mut merged = vec![0f64; k];
        for (mine, theirs) in self.sq.chunks_exact_mut(k).zip(other.chunks_exact(k)) {
            let (mut p, mut q) = (0, 0);
            for slot in merged.iter_mut() {
                if theirs[q] < mine[p] {
                    *slot = theirs[q];
                    q += 1;
                } else {
                    *slot = mine[p];
                    p += 1;
                }
            }
            mine.copy_from_slice(&merged);
        }
    }
}

impl PairVisitor for KnnVisitor<'_> {
    #[inline]
    fn row_bound(&self, i: usize) -> f32 {
        f32::from_bits(self.bounds[i].load(Ordering::Relaxed))
    }

    #[inline]
    fn col_bound(&self, j: usize) -> f32 {
        f32::from_bits(self.bounds[j].load(Ordering::Relaxed))
    }

    #[inline(always)]
    fn visit(&mut self, i: usize, j: usize, d2: f64) {
        self.offer(i, d2);
        self.offer(j, d2);
    }

    /// The k-th smallest upper bound among a row's tile-mates bounds its k-th distance among
    /// them, hence its final k-th distance: a valid starting bound that costs no exact work.
    fn seed_row(&mut self, i: usize, upper: &mut [f32]) {
        let k = self.k;
        if upper.len() >= k {
            let (_, kth, _) = upper.select_nth_unstable_by(k - 1, f32::total_cmp);
            let bound = self.frame.widen(*kth).to_bits();
            self.bounds[i].fetch_min(bound, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::distance::exact_sq_dist;
    use super::*;

    fn naive_radii(set: &Embeddings, k: usize) -> Vec<f64> {
        (0..set.rows)
            .map(|i| {
                let mut d: Vec<f64> = (0..set.rows)
                    .map(|j| exact_sq_dist(set.row(i), set.row(j)))
                    .collect();
                d.sort_by(f64::total_cmp);
                d[k].sqrt()
            })
            .collect()
    }

    fn set(rows: usize, dim: usize, seed: u64) -> Embeddings {
        let mut s = seed;
        let data = (0..rows * dim)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 10_000) as f32 / 1000.0
            })
            .collect();
        Embeddings::new(rows, dim, data).unwrap()
    }

    #[test]
    fn radii_match_naive_for_every_kernel() {
        for &(rows, dim, k) in &[(7, 3, 1), (300, 5, 4), (333, 17, 5), (150, 300, 3)] {
            let s = set(rows, dim, 99 + rows as u64);
            let want = naive_radii(&s, k);
            let frame = Frame::new(&[&s]);
            let packed = Packed::new(&s, &frame);
            for isa in Isa::all_supported() {
                let progress = Progress::new(None, 0);
                let got = knn_lists(isa, &packed, &frame, k, &progress).radii(k);
                // Kernels sum the squares in different orders: equal up to the last bits.
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-13 * w,
                        "{isa:?} rows={rows} dim={dim} k={k}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn duplicates_give_zero_radius() {
        let mut data = vec![0f32; 12];
        data[6..].copy_from_slice(&[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        // Rows 0, 1, 2 identical; rows 3..5 on a line.
        let s = Embeddings::new(6, 2, data).unwrap();
        let r = knn_radii(&s, 2).unwrap();
        assert_eq!(&r[..3], &[0.0, 0.0, 0.0]);
        assert!((r[4] - 2f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn too_few_samples_is_an_error() {
        let s = Embeddings::new(5, 2, vec![0.5; 10]).unwrap();
        assert!(knn_radii(&s, 4).is_err());
        assert!(knn_radii(&s, 3).is_ok());
        assert!(knn_radii(&s, 0).is_err());
    }
}
