//! Blocked pairwise-distance engine shared by the k-NN and real x fake passes.
//!
//! What it owns: the packed f32 copies of the sets, the SIMD micro-kernels (chosen at run
//! time: AVX-512, AVX2+FMA, or portable code), the candidate test with its rounding bound,
//! exact f64 distances, and the tiled rayon drivers with progress accounting.
//!
//! How a pass works. Both sets are translated by a common centre and scaled by a power of two
//! (so that every coordinate has magnitude at most 1), rounded to f32, and packed in panels of
//! [`PANEL`] rows stored k-major. A pass walks square tiles of [`TILE`] x [`TILE`] pairs;
//! for each tile the kernel computes the f32 dot products `x'.y'`, then tests every pair with
//!
//! ```text
//! (1 - c2) |x'|^2 + (1 - c2) |y'|^2 - 2 x'.y'  <  max(row_bound(i), col_bound(j))
//! ```
//!
//! where the bounds are the visitor's thresholds (squared distances, scaled and widened by
//! `1 + c1` plus a tiny absolute term). With `c2 = 2 (D + 8) u` (`u = 2^-24`) the left side,
//! computed in f32, stays below the true scaled squared distance: `2 x'.y'` in f32 errs by at
//! most `D u (|x'|^2 + |y'|^2)` (the dot product's error is at most `D u sum |x'_k y'_k|`,
//! and `2 sum |x'_k y'_k| <= |x'|^2 + |y'|^2`), the translation and rounding of the data move
//! the squared distance by at most `4.2 u (|x'|^2 + |y'|^2)`, and the epilogue's own roundings
//! by `4 u (|x'|^2 + |y'|^2)`, all within `c2 (|x'|^2 + |y'|^2)` with room to spare. So a pair
//! whose exact distance is under a threshold is always a candidate. The engine computes each
//! candidate's squared distance in f64 from the original values and hands it to the visitor,
//! which does every comparison on that exact value. Pairs that fail the test are never within
//! any threshold and are skipped. With `1 + c2` instead, the same expression is an upper
//! bound, which seeds the k-NN bounds of diagonal tiles without exact work.
//!
//! Memory: the packed copies (one f32 per input value), a `TILE x TILE` f32 buffer per worker,
//! and the visitors' per-row state. No N x M matrix exists.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::Embeddings;

/// Rows per packed panel; the kernels' row and column blocks divide it.
pub(crate) const PANEL: usize = 32;
/// Rows and columns of one tile of pairs (a multiple of [`PANEL`] and of [`SCAN_LANES`]).
pub(crate) const TILE: usize = 128;
/// Depth of one pass of the kernel over the dimensions (keeps panels in L1/L2 for wide data).
const DEPTH_BLOCK: usize = 256;
/// Width of the vectorised candidate scan.
const SCAN_LANES: usize = 16;
/// Unit roundoff of f32.
const F32_UNIT: f64 = 1.0 / (1u64 << 24) as f64;

/// Progress callback: `(done, total)` work units (distance pairs).
pub type ProgressFn<'a> = dyn Fn(u64, u64) + Sync + 'a;

/// Squared Euclidean distance computed in f64 from f32 values.
#[inline(always)]
pub(crate) fn exact_sq_dist(x: &[f32], y: &[f32]) -> f64 {
    let (xc, xr) = x.as_chunks::<8>();
    let (yc, yr) = y.as_chunks::<8>();
    let mut acc = [0f64; 8];
    for (a, b) in xc.iter().zip(yc) {
        for l in 0..8 {
            let d = f64::from(a[l]) - f64::from(b[l]);
            acc[l] += d * d;
        }
    }
    let mut tail = 0f64;
    for (a, b) in xr.iter().zip(yr) {
        let d = f64::from(*a) - f64::from(*b);
        tail += d * d;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Instruction set used by the f32 kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// AVX2 with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run (for tests comparing kernels).
    pub fn all_supported() -> Vec<Self> {
        let mut all = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let best = Self::detect();
            if best != Isa::Portable {
                all.push(Isa::Avx2);
            }
            if best == Isa::Avx512 {
                all.push(Isa::Avx512);
            }
        }
        all
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2+fma",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
        }
    }
}

/// The translation and scale shared by all sets of one computation, and the slack constants of
/// the candidate test.
pub(crate) struct Frame {
    center: Vec<f64>,
    scale: f64,
    scale_sq: f64,
    /// `1 - c2`, applied to squared norms for lower bounds of distances.
    norm_factor: f64,
    /// `1 + c2`, applied to squared norms for upper bounds of distances.
    norm_factor_hi: f64,
    /// `1 + c1`, applied to thresholds.
    bound_factor: f64,
    /// Absolute slack for underflow in the scaled data.
    abs_slack: f64,
}

impl Frame {
    /// Centre = mean of all rows of all sets; scale = power of two bringing the largest
    /// centred coordinate into [0.5, 1).
    pub(crate) fn new(sets: &[&Embeddings]) -> Self {
        let dim = sets[0].dim;
        let rows: usize = sets.iter().map(|s| s.rows).sum();
        let mut center = vec![0f64; dim];
        for set in sets {
            let sums = set
                .data
                .par_chunks(dim * 256)
                .map(|block| {
                    let mut s = vec![0f64; dim];
                    for row in block.chunks_exact(dim) {
                        for (acc, v) in s.iter_mut().zip(row) {
                            *acc += f64::from(*v);
                        }
                    }
                    s
                })
                .reduce(
                    || vec![0f64; dim],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                        a
                    },
                );
            center.iter_mut().zip(&sums).for_each(|(c, s)| *c += s);
        }
        center.iter_mut().for_each(|c| *c /= rows as f64);
        let mut max_dev = 0f64;
        for set in sets {
            let m = set
                .data
                .par_chunks(dim * 256)
                .map(|block| {
                    block
                        .chunks_exact(dim)
                        .flat_map(|row| row.iter().zip(&center))
                        .map(|(v, c)| (f64::from(*v) - c).abs())
                        .fold(0f64, f64::max)
                })
                .reduce(|| 0f64, f64::max);
            max_dev = max_dev.max(m);
        }
        let scale = if max_dev > 0.0 && max_dev.is_finite() {
            // 2^-e with max_dev * 2^-e in [0.5, 1) up to log2 rounding; powi of 2 is exact.
            let e = max_dev.log2().floor() as i32 + 1;
            2f64.powi(-e)
        } else {
            1.0
        };
        let c2 = 2.0 * (dim as f64 + 8.0) * F32_UNIT;
        Self {
            center,
            scale,
            scale_sq: scale * scale,
            norm_factor: 1.0 - c2,
            norm_factor_hi: 1.0 + c2,
            bound_factor: 1.0 + 8.0 * F32_UNIT,
            abs_slack: (dim as f64 + 1.0) * 2f64.powi(-100),
        }
    }

    /// A candidate bound from an upper bound `scaled` of a scaled squared distance (already in
    /// the kernel's units), widened like [`Frame::bound`].
    #[inline]
    pub(crate) fn widen(&self, scaled: f32) -> f32 {
        (f64::from(scaled) * self.bound_factor + self.abs_slack) as f32
    }

    /// The candidate bound for an exact squared distance `d2` in original units.
    #[inline]
    pub(crate) fn bound(&self, d2: f64) -> f32 {
        if d2.is_finite() {
            ((d2 * self.scale_sq) * self.bound_factor + self.abs_slack) as f32
        } else {
            f32::INFINITY
        }
    }
}

/// A set in the layout of the kernels, with the per-row terms of the candidate test.
pub(crate) struct Packed<'a> {
    /// The original values (exact distances are computed from these).
    pub(crate) set: &'a Embeddings,
    /// `ceil(rows / PANEL)` panels of `dim * PANEL` values: element `(r, k)` of a panel at
    /// `k * PANEL + r`; padding rows are zero.
    panels: Vec<f32>,
    /// `(1 - c2) |x'|^2` per row, then `+inf` for padding up to a whole number of tiles.
    norm_lo: Vec<f32>,
    /// `(1 + c2) |x'|^2` per row (same padding): `hi_i + hi_j - 2 x'.y'` in f32 is an upper
    /// bound of the scaled squared distance, by the same argument as the lower bound.
    norm_hi: Vec<f32>,
}

impl<'a> Packed<'a> {
    pub(crate) fn new(set: &'a Embeddings, frame: &Frame) -> Self {
        let dim = set.dim;
        let panel_count = set.rows.div_ceil(PANEL);
        let mut panels = vec![0f32; panel_count * dim * PANEL];
        let tiles = set.rows.div_ceil(TILE);
        let mut norm_lo = vec![f32::INFINITY; tiles * TILE];
        let mut norm_hi = vec![f32::INFINITY; tiles * TILE];
        panels
            .par_chunks_mut(dim * PANEL)
            .zip(norm_lo.par_chunks_mut(PANEL))
            .zip(norm_hi.par_chunks_mut(PANEL))
            .enumerate()
            .for_each(|(p, ((panel, norms), norms_hi))| {
                let first = p * PANEL;
                let last = (first + PANEL).min(set.rows);
                for ((r, norm), norm_hi) in (first..last).zip(norms.iter_mut()).zip(norms_hi) {
                    let row = set.row(r);
                    let mut sq = 0f64;
                    for (k, (v, c)) in row.iter().zip(&frame.center).enumerate() {
                        let scaled = ((f64::from(*v) - c) * frame.scale) as f32;
                        panel[k * PANEL + (r - first)] = scaled;
                        sq += f64::from(scaled) * f64::from(scaled);
                    }
                    *norm = (sq * frame.norm_factor) as f32;
                    *norm_hi = (sq * frame.norm_factor_hi) as f32;
                }
            });
        Self {
            set,
            panels,
            norm_lo,
            norm_hi,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.set.rows
    }

    pub(crate) fn tiles(&self) -> usize {
        self.set.rows.div_ceil(TILE)
    }

    fn panel(&self, p: usize) -> &[f32] {
        let size = self.set.dim * PANEL;
        &self.panels[p * size..(p + 1) * size]
    }
}

/// What a pass does with candidate pairs. Bounds are in the units of [`Frame::bound`]; they
/// may only decrease while a pass runs (stale values are then merely conservative).
pub(crate) trait PairVisitor {
    /// Candidate threshold of row `i` (of the row set).
    fn row_bound(&self, i: usize) -> f32;
    /// Candidate threshold of column `j` (of the column set).
    fn col_bound(&self, j: usize) -> f32;
    /// A pair that may lie within a threshold, with its exact squared distance `d2`.
    fn visit(&mut self, i: usize, j: usize, d2: f64);
    /// Called for every row of a diagonal tile before its candidates are scanned, with upper
    /// bounds (kernel units) of the row's squared distances to its tile-mates, in any order;
    /// the visitor may lower its bounds from them. The default ignores them.
    fn seed_row(&mut self, _i: usize, _upper: &mut [f32]) {}
}

/// One tile of a pass: row tile `row_tile` of `rows` against column tile `col_tile` of `cols`.
/// With `upper_only`, only pairs with `j > i` are visited (diagonal tiles of a set with itself).
pub(crate) struct TileJob<'p, 'a> {
    pub(crate) rows: &'p Packed<'a>,
    pub(crate) cols: &'p Packed<'a>,
    pub(crate) row_tile: usize,
    pub(crate) col_tile: usize,
    pub(crate) upper_only: bool,
}

impl TileJob<'_, '_> {
    fn pair_count(&self) -> u64 {
        let r = (self.rows.rows() - self.row_tile * TILE).min(TILE);
        let c = (self.cols.rows() - self.col_tile * TILE).min(TILE);
        (r * c) as u64
    }
}

/// Runs one tile with the given instruction set; `buf` must hold `TILE * TILE` values.
pub(crate) fn scan_tile<V: PairVisitor>(isa: Isa, job: &TileJob, visitor: &mut V, buf: &mut [f32]) {
    match isa {
        Isa::Portable => scan_tile_with::<V, PortableKernel>(job, visitor, buf),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced by `Isa::detect`/`all_supported` after
        // `is_x86_feature_detected!` confirmed AVX2 and FMA on this CPU.
        Isa::Avx2 => unsafe { x86::scan_tile_avx2(job, visitor, buf) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, `Isa::Avx512` is only produced after AVX-512F, AVX2 and FMA were
        // detected on this CPU.
        Isa::Avx512 => unsafe { x86::scan_tile_avx512(job, visitor, buf) },
    }
}

/// An MR x NR block of dot products: `out[r * TILE + l] (+)= sum_k a[k][roff + r] *
/// b[k][coff + l]`, where `a` and `b` hold the same number of panel rows of [`PANEL`] values
/// (`k` indexes panel rows) and `out` holds at least `(MR - 1) * TILE + NR` values. `first`
/// stores instead of adding.
trait MicroKernel {
    const MR: usize;
    const NR: usize;
    fn block(a: &[f32], roff: usize, b: &[f32], coff: usize, out: &mut [f32], first: bool);
    /// The squared distance in f64 (see [`exact_sq_dist`]).
    fn exact_sq_dist(x: &[f32], y: &[f32]) -> f64;
    /// Bit `l` set when `row_norm + norms[l] - 2 dots[l] < max(row_bound, bounds[l])`, for the
    /// [`SCAN_LANES`] lanes of the slices, computed exactly in that order in f32.
    fn candidate_mask(
        dots: &[f32],
        norms: &[f32],
        bounds: &[f32],
        row_norm: f32,
        row_bound: f32,
    ) -> u32;
}

/// The portable candidate test of [`MicroKernel::candidate_mask`].
#[inline(always)]
fn candidate_mask_portable(
    dots: &[f32],
    norms: &[f32],
    bounds: &[f32],
    row_norm: f32,
    row_bound: f32,
) -> u32 {
    let (d, n, t) = (
        &dots[..SCAN_LANES],
        &norms[..SCAN_LANES],
        &bounds[..SCAN_LANES],
    );
    let mut mask = 0u32;
    for l in 0..SCAN_LANES {
        let lhs = row_norm + n[l] - 2.0 * d[l];
        mask |= u32::from((lhs < row_bound) | (lhs < t[l])) << l;
    }
    mask
}

/// Plain Rust, for CPUs without the x86 extensions below.
struct PortableKernel;

impl MicroKernel for PortableKernel {
    const MR: usize = 4;
    const NR: usize = 8;

    #[inline(always)]
    fn exact_sq_dist(x: &[f32], y: &[f32]) -> f64 {
        exact_sq_dist(x, y)
    }

    #[inline(always)]
    fn candidate_mask(d: &[f32], n: &[f32], t: &[f32], row_norm: f32, row_bound: f32) -> u32 {
        candidate_mask_portable(d, n, t, row_norm, row_bound)
    }

    #[inline(always)]
    fn block(a: &[f32], roff: usize, b: &[f32], coff: usize, out: &mut [f32], first: bool) {
        const MR: usize = PortableKernel::MR;
        const NR: usize = PortableKernel::NR;
        let (a_rows, _) = a.as_chunks::<PANEL>();
        let (b_rows, _) = b.as_chunks::<PANEL>();
        let mut acc = [[0f32; NR]; MR];
        for (ak, bk) in a_rows.iter().zip(b_rows) {
            let av = &ak[roff..roff + MR];
            let bv = &bk[coff..coff + NR];
            for (acc_row, x) in acc.iter_mut().zip(av) {
                for (c, y) in acc_row.iter_mut().zip(bv) {
                    *c += x * y;
                }
            }
        }
        for (r, acc_row) in acc.iter().enumerate() {
            let o = &mut out[r * TILE..r * TILE + NR];
            if first {
                o.copy_from_slice(acc_row);
            } else {
                o.iter_mut().zip(acc_row).for_each(|(o, a)| *o += a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX-512 micro-kernels (explicit intrinsics: the compiler does not vectorise
    //! the register-blocked loop by itself).

    use std::arch::x86_64::*;

    use super::{MicroKernel, PANEL, PairVisitor, TILE, TileJob, scan_tile_with};

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn scan_tile_avx2<V: PairVisitor>(job: &TileJob, visitor: &mut V, buf: &mut [f32]) {
        scan_tile_with::<V, Avx2Kernel>(job, visitor, buf);
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn scan_tile_avx512<V: PairVisitor>(
        job: &TileJob,
        visitor: &mut V,
        buf: &mut [f32],
    ) {
        scan_tile_with::<V, Avx512Kernel>(job, visitor, buf);
    }

    /// 4 rows x 16 columns (two 8-lane registers per row).
    struct Avx2Kernel;

    impl MicroKernel for Avx2Kernel {
        const MR: usize = 4;
        const NR: usize = 16;

        #[inline(always)]
        fn exact_sq_dist(x: &[f32], y: &[f32]) -> f64 {
            // SAFETY: only reached through `scan_tile_avx2`, whose callers checked AVX2+FMA.
            unsafe { exact_avx2(x, y) }
        }

        #[inline(always)]
        fn candidate_mask(d: &[f32], n: &[f32], t: &[f32], row_norm: f32, row_bound: f32) -> u32 {
            // SAFETY: only reached through `scan_tile_avx2`, whose callers checked AVX2+FMA.
            unsafe { mask_avx2(d, n, t, row_norm, row_bound) }
        }

        #[inline(always)]
        fn block(a: &[f32], roff: usize, b: &[f32], coff: usize, out: &mut [f32], first: bool) {
            // SAFETY: only reached through `scan_tile_avx2`, whose callers checked AVX2+FMA.
            unsafe { block_avx2(a, roff, b, coff, out, first) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn block_avx2(a: &[f32], roff: usize, b: &[f32], coff: usize, out: &mut [f32], first: bool) {
        const MR: usize = 4;
        let depth = a.len() / PANEL;
        assert!(
            roff + MR <= PANEL
                && coff + 16 <= PANEL
                && b.len() >= depth * PANEL
                && out.len() >= (MR - 1) * TILE + 16
        );
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 2 * MR];
        for k in 0..depth {
            // SAFETY: `k * PANEL + coff + 16 <= depth * PANEL <= b.len()` and
            // `k * PANEL + roff + MR <= depth * PANEL <= a.len()` by the assertion above.
            unsafe {
                let b0 = _mm256_loadu_ps(bp.add(k * PANEL + coff));
                let b1 = _mm256_loadu_ps(bp.add(k * PANEL + coff + 8));
                for r in 0..MR {
                    let x = _mm256_broadcast_ss(&*ap.add(k * PANEL + roff + r));
                    acc[2 * r] = _mm256_fmadd_ps(x, b0, acc[2 * r]);
                    acc[2 * r + 1] = _mm256_fmadd_ps(x, b1, acc[2 * r + 1]);
                }
            }
        }
        for r in 0..MR {
            // SAFETY: `r * TILE + 16 <= out.len()` by the assertion above.
            unsafe {
                let o = out.as_mut_ptr().add(r * TILE);
                let (mut lo, mut hi) = (acc[2 * r], acc[2 * r + 1]);
                if !first {
                    lo = _mm256_add_ps(lo, _mm256_loadu_ps(o));
                    hi = _mm256_add_ps(hi, _mm256_loadu_ps(o.add(8)));
                }
                _mm256_storeu_ps(o, lo);
                _mm256_storeu_ps(o.add(8), hi);
            }
        }
    }

    /// 8 rows x 32 columns (two 16-lane registers per row).
    struct Avx512Kernel;

    impl MicroKernel for Avx512Kernel {
        const MR: usize = 8;
        const NR: usize = 32;

        #[inline(always)]
        fn exact_sq_dist(x: &[f32], y: &[f32]) -> f64 {
            // SAFETY: only reached through `scan_tile_avx512`, whose callers checked AVX-512F.
            unsafe { exact_avx512(x, y) }
        }

        #[inline(always)]
        fn candidate_mask(d: &[f32], n: &[f32], t: &[f32], row_norm: f32, row_bound: f32) -> u32 {
            // SAFETY: only reached through `scan_tile_avx512`, whose callers checked AVX-512F.
            unsafe { mask_avx512(d, n, t, row_norm, row_bound) }
        }

        #[inline(always)]
        fn block(a: &[f32], roff: usize, b: &[f32], coff: usize, out: &mut [f32], first: bool) {
            // SAFETY: only reached through `scan_tile_avx512`, whose callers checked AVX-512F.
            unsafe { block_avx512(a, roff, b, coff, out, first) }
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn block_avx512(a: &[f32], roff: usize, b: &[f32], coff: usize, out: &mut [f32], first: bool) {
        const MR: usize = 8;
        let depth = a.len() / PANEL;
        assert!(
            roff + MR <= PANEL
                && coff + 32 <= PANEL
                && b.len() >= depth * PANEL
                && out.len() >= (MR - 1) * TILE + 32
        );
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        for k in 0..depth {
            // SAFETY: `k * PANEL + coff + 32 <= depth * PANEL <= b.len()` and
            // `k * PANEL + roff + MR <= depth * PANEL <= a.len()` by the assertion above.
            unsafe {
                let b0 = _mm512_loadu_ps(bp.add(k * PANEL + coff));
                let b1 = _mm512_loadu_ps(bp.add(k * PANEL + coff + 16));
                for r in 0..MR {
                    let x = _mm512_set1_ps(*ap.add(k * PANEL + roff + r));
                    acc[2 * r] = _mm512_fmadd_ps(x, b0, acc[2 * r]);
                    acc[2 * r + 1] = _mm512_fmadd_ps(x, b1, acc[2 * r + 1]);
                }
            }
        }
        for r in 0..MR {
            // SAFETY: `r * TILE + 32 <= out.len()` by the assertion above.
            unsafe {
                let o = out.as_mut_ptr().add(r * TILE);
                let (mut lo, mut hi) = (acc[2 * r], acc[2 * r + 1]);
                if !first {
                    lo = _mm512_add_ps(lo, _mm512_loadu_ps(o));
                    hi = _mm512_add_ps(hi, _mm512_loadu_ps(o.add(16)));
                }
                _mm512_storeu_ps(o, lo);
                _mm512_storeu_ps(o.add(16), hi);
            }
        }
    }

    /// [`MicroKernel::candidate_mask`] with two 8-lane registers.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn mask_avx2(d: &[f32], n: &[f32], t: &[f32], row_norm: f32, row_bound: f32) -> u32 {
        assert!(d.len() >= 16 && n.len() >= 16 && t.len() >= 16);
        let rn = _mm256_set1_ps(row_norm);
        let rb = _mm256_set1_ps(row_bound);
        let mut mask = 0u32;
        for half in 0..2 {
            // SAFETY: `8 * half + 8 <= 16 <=` every slice's length, asserted above.
            unsafe {
                let dv = _mm256_loadu_ps(d.as_ptr().add(8 * half));
                let nv = _mm256_loadu_ps(n.as_ptr().add(8 * half));
                let tv = _mm256_loadu_ps(t.as_ptr().add(8 * half));
                let lhs = _mm256_sub_ps(_mm256_add_ps(rn, nv), _mm256_add_ps(dv, dv));
                let hit = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_LT_OQ>(lhs, rb),
                    _mm256_cmp_ps::<_CMP_LT_OQ>(lhs, tv),
                );
                mask |= (_mm256_movemask_ps(hit) as u32) << (8 * half);
            }
        }
        mask
    }

    /// [`MicroKernel::candidate_mask`] with one 16-lane register.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn mask_avx512(d: &[f32], n: &[f32], t: &[f32], row_norm: f32, row_bound: f32) -> u32 {
        assert!(d.len() >= 16 && n.len() >= 16 && t.len() >= 16);
        // SAFETY: every slice holds at least 16 values, asserted above.
        unsafe {
            let dv = _mm512_loadu_ps(d.as_ptr());
            let nv = _mm512_loadu_ps(n.as_ptr());
            let tv = _mm512_loadu_ps(t.as_ptr());
            let lhs = _mm512_sub_ps(
                _mm512_add_ps(_mm512_set1_ps(row_norm), nv),
                _mm512_add_ps(dv, dv),
            );
            let below_row = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(lhs, _mm512_set1_ps(row_bound));
            let below_col = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(lhs, tv);
            u32::from(below_row | below_col)
        }
    }

    /// Squared distance in f64, four lanes at a time.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exact_avx2(x: &[f32], y: &[f32]) -> f64 {
        let n = x.len().min(y.len());
        let mut acc0 = _mm256_setzero_pd();
        let mut acc1 = _mm256_setzero_pd();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n <= x.len(), y.len()`.
            unsafe {
                let x0 = _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i)));
                let y0 = _mm256_cvtps_pd(_mm_loadu_ps(y.as_ptr().add(i)));
                let x1 = _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i + 4)));
                let y1 = _mm256_cvtps_pd(_mm_loadu_ps(y.as_ptr().add(i + 4)));
                let d0 = _mm256_sub_pd(x0, y0);
                let d1 = _mm256_sub_pd(x1, y1);
                acc0 = _mm256_fmadd_pd(d0, d0, acc0);
                acc1 = _mm256_fmadd_pd(d1, d1, acc1);
            }
            i += 8;
        }
        let mut lanes = [0f64; 4];
        // SAFETY: `lanes` holds four f64.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(acc0, acc1)) };
        let mut sum = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
        for (a, b) in x[i..n].iter().zip(&y[i..n]) {
            let d = f64::from(*a) - f64::from(*b);
            sum += d * d;
        }
        sum
    }

    /// Squared distance in f64, eight lanes at a time.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn exact_avx512(x: &[f32], y: &[f32]) -> f64 {
        let n = x.len().min(y.len());
        let mut acc0 = _mm512_setzero_pd();
        let mut acc1 = _mm512_setzero_pd();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n <= x.len(), y.len()`.
            unsafe {
                let x0 = _mm512_cvtps_pd(_mm256_loadu_ps(x.as_ptr().add(i)));
                let y0 = _mm512_cvtps_pd(_mm256_loadu_ps(y.as_ptr().add(i)));
                let x1 = _mm512_cvtps_pd(_mm256_loadu_ps(x.as_ptr().add(i + 8)));
                let y1 = _mm512_cvtps_pd(_mm256_loadu_ps(y.as_ptr().add(i + 8)));
                let d0 = _mm512_sub_pd(x0, y0);
                let d1 = _mm512_sub_pd(x1, y1);
                acc0 = _mm512_fmadd_pd(d0, d0, acc0);
                acc1 = _mm512_fmadd_pd(d1, d1, acc1);
            }
            i += 16;
        }
        let mut sum = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
        for (a, b) in x[i..n].iter().zip(&y[i..n]) {
            let d = f64::from(*a) - f64::from(*b);
            sum += d * d;
        }
        sum
    }
}

/// Dot products of a tile into `buf`, then the candidate scan.
#[inline(always)]
fn scan_tile_with<V: PairVisitor, K: MicroKernel>(job: &TileJob, visitor: &mut V, buf: &mut [f32]) {
    let (a, b) = (job.rows, job.cols);
    let dim = a.set.dim;
    let row0 = job.row_tile * TILE;
    let col0 = job.col_tile * TILE;
    let rows_here = (a.rows() - row0).min(TILE);
    let cols_here = (b.rows() - col0).min(TILE);
    let row_panels = rows_here.div_ceil(PANEL);
    let col_panels = cols_here.div_ceil(PANEL);
    let buf = &mut buf[..TILE * TILE];

    let mut k0 = 0;
    while k0 < dim {
        let kc = DEPTH_BLOCK.min(dim - k0);
        let first = k0 == 0;
        for cp in 0..col_panels {
            let bk = &b.panel(col0 / PANEL + cp)[k0 * PANEL..(k0 + kc) * PANEL];
            for cs in (0..PANEL).step_by(K::NR) {
                for rp in 0..row_panels {
                    let ak = &a.panel(row0 / PANEL + rp)[k0 * PANEL..(k0 + kc) * PANEL];
                    for rs in (0..PANEL).step_by(K::MR) {
                        if rp * PANEL + rs >= rows_here {
                            break;
                        }
                        let out = &mut buf[(rp * PANEL + rs) * TILE + cp * PANEL + cs..];
                        K::block(ak, rs, bk, cs, out, first);
                    }
                }
            }
        }
        k0 += kc;
    }

    if job.upper_only {
        seed_diagonal(a, row0, rows_here, buf, visitor);
    }

    // Columns beyond the tile's last panel keep stale dots, but their norm term is +inf.
    let mut col_norm = [f32::INFINITY; TILE];
    let mut col_bound = [f32::NEG_INFINITY; TILE];
    col_norm.copy_from_slice(&b.norm_lo[col0..col0 + TILE]);
    for (jj, bound) in col_bound.iter_mut().enumerate().take(cols_here) {
        *bound = visitor.col_bound(col0 + jj);
    }
    let mut hits = [0u16; TILE];
    for ii in 0..rows_here {
        let i = row0 + ii;
        let row_norm = a.norm_lo[i];
        let row_bound = visitor.row_bound(i);
        let dots = &buf[ii * TILE..(ii + 1) * TILE];
        // Pass 1: the candidate columns of the row, from one bit mask per chunk.
        let mut hit_count = 0;
        for c in (0..TILE).step_by(SCAN_LANES) {
            let mut mask = K::candidate_mask(
                &dots[c..c + SCAN_LANES],
                &col_norm[c..c + SCAN_LANES],
                &col_bound[c..c + SCAN_LANES],
                row_norm,
                row_bound,
            );
            while mask != 0 {
                hits[hit_count] = (c + mask.trailing_zeros() as usize) as u16;
                hit_count += 1;
                mask &= mask - 1;
            }
        }
        // Pass 2: exact distances of the candidates.
        let x = a.set.row(i);
        for &jj in &hits[..hit_count] {
            let j = col0 + usize::from(jj);
            if !job.upper_only || j > i {
                visitor.visit(i, j, K::exact_sq_dist(x, b.set.row(j)));
            }
        }
    }
}

/// Hands every row of a diagonal tile the upper bounds of its distances to its tile-mates
/// (see [`PairVisitor::seed_row`]); `buf` holds the tile's dot products.
#[inline(always)]
fn seed_diagonal<V: PairVisitor>(
    set: &Packed,
    row0: usize,
    rows_here: usize,
    buf: &[f32],
    visitor: &mut V,
) {
    let mut upper = [0f32; TILE];
    for ii in 0..rows_here {
        let hi_i = set.norm_hi[row0 + ii];
        let dots = &buf[ii * TILE..ii * TILE + rows_here];
        let mut count = 0;
        for (jj, dot) in dots.iter().enumerate() {
            if jj != ii {
                upper[count] = hi_i + set.norm_hi[row0 + jj] - 2.0 * dot;
                count += 1;
            }
        }
        visitor.seed_row(row0 + ii, &mut upper[..count]);
    }
}

/// Shared progress counter. Reports are serialised and strictly increasing, whichever worker
/// finishes a tile.
pub(crate) struct Progress<'c> {
    callback: Option<&'c ProgressFn<'c>>,
    done: AtomicU64,
    reported: Mutex<u64>,
    total: u64,
}

impl<'c> Progress<'c> {
    pub(crate) fn new(callback: Option<&'c ProgressFn<'c>>, total: u64) -> Self {
        Self {
            callback,
            done: AtomicU64::new(0),
            reported: Mutex::new(0),
            total,
        }
    }

    fn add(&self, units: u64) {
        if let Some(cb) = self.callback {
            let done = (self.done.fetch_add(units, Ordering::Relaxed) + units).min(self.total);
            self.report(cb, done);
        }
    }

    fn report(&self, cb: &ProgressFn, done: u64) {
        // A poisoned lock only means another report panicked; the counter is still valid.
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        if done > *reported {
            *reported = done;
            cb(done, self.total);
        }
    }

    /// Reports completion (once, if not already reported).
    pub(crate) fn finish(&self) {
        if let Some(cb) = self.callback {
            self.report(cb, self.total);
        }
    }
}

/// Work units of a pass of a set with itself (unordered pairs, diagonal tiles counted whole).
pub(crate) fn self_pass_units(rows: usize) -> u64 {
    if rows == 0 {
        return 0;
    }
    let tiles = rows.div_ceil(TILE) as u64;
    let last = (rows - (rows.div_ceil(TILE) - 1) * TILE) as u64;
    let full = (TILE * TILE) as u64;
    // Tile pairs (ti <= tj): every pair with the last tile has `last` columns or rows.
    let pairs_full = (tiles - 1) * tiles / 2;
    pairs_full * full + (tiles - 1) * TILE as u64 * last + last * last
}

/// Work units of a pass of one set against another.
pub(crate) fn cross_pass_units(rows: usize, cols: usize) -> u64 {
    rows as u64 * cols as u64
}

/// Visits the pairs `{i, j}` (`i < j`) of `set` within each diagonal tile (both samples in the
/// same tile) that may lie within the visitors' bounds. Tiles are independent, so each gets
/// its own visitor from `make(tile)` and the visitors are returned in tile order.
pub(crate) fn diagonal_pass<V, Make>(
    isa: Isa,
    set: &Packed,
    make: Make,
    progress: &Progress,
) -> Vec<V>
where
    V: PairVisitor + Send,
    Make: Fn(usize) -> V + Sync,
{
    (0..set.tiles())
        .into_par_iter()
        .map_init(
            || vec![0f32; TILE * TILE],
            |buf, tile| {
                let mut visitor = make(tile);
                let job = TileJob {
                    rows: set,
                    cols: set,
                    row_tile: tile,
                    col_tile: tile,
                    upper_only: true,
                };
                scan_tile(isa, &job, &mut visitor, buf);
                progress.add(job.pair_count());
                visitor
            },
        )
        .collect()
}

/// Visits the pairs `(i, j)` of `set` with `i` and `j` in different tiles (`i`'s tile before
/// `j`'s) that may lie within the visitors' bounds, spreading tiles over rayon workers; each
/// worker folds into its own visitor made by `make`, and the visitors are merged with `merge`.
pub(crate) fn off_diagonal_pass<V, Make, Merge>(
    isa: Isa,
    set: &Packed,
    make: Make,
    merge: Merge,
    progress: &Progress,
) -> V
where
    V: PairVisitor + Send,
    Make: Fn() -> V + Sync,
    Merge: Fn(V, V) -> V + Sync,
{
    let tiles = set.tiles();
    (0..tiles * tiles)
        .into_par_iter()
        .filter(|t| t % tiles > t / tiles)
        .fold(
            || (make(), vec![0f32; TILE * TILE]),
            |(mut visitor, mut buf), t| {
                let job = TileJob {
                    rows: set,
                    cols: set,
                    row_tile: t / tiles,
                    col_tile: t % tiles,
                    upper_only: false,
                };
                scan_tile(isa, &job, &mut visitor, &mut buf);
                progress.add(job.pair_count());
                (visitor, buf)
            },
        )
        .map(|(visitor, _)| visitor)
        .reduce_with(&merge)
        .unwrap_or_else(make)
}

/// Visits every pair `(i, j)` of `rows x cols` that may lie within the visitors' bounds (see
/// [`off_diagonal_pass`]).
pub(crate) fn cross_pass<V, Make, Merge>(
    isa: Isa,
    rows: &Packed,
    cols: &Packed,
    make: Make,
    merge: Merge,
    progress: &Progress,
) -> V
where
    V: PairVisitor + Send,
    Make: Fn() -> V + Sync,
    Merge: Fn(V, V) -> V + Sync,
{
    let col_tiles = cols.tiles();
    (0..rows.tiles() * col_tiles)
        .into_par_iter()
        .fold(
            || (make(), vec![0f32; TILE * TILE]),
            |(mut visitor, mut buf), t| {
                let job = TileJob {
                    rows,
                    cols,
                    row_tile: t / col_tiles,
                    col_tile: t % col_tiles,
                    upper_only: false,
                };
                scan_tile(isa, &job, &mut visitor, &mut buf);
                progress.add(job.pair_count());
                (visitor, buf)
            },
        )
        .map(|(visitor, _)| visitor)
        .reduce_with(&merge)
        .unwrap_or_else(make)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every visited pair; bounds are fixed.
    struct Collect {
        row_bounds: Vec<f32>,
        col_bounds: Vec<f32>,
        pairs: Vec<(usize, usize)>,
    }

    impl PairVisitor for Collect {
        fn row_bound(&self, i: usize) -> f32 {
            self.row_bounds[i]
        }
        fn col_bound(&self, j: usize) -> f32 {
            self.col_bounds[j]
        }
        fn visit(&mut self, i: usize, j: usize, _d2: f64) {
            self.pairs.push((i, j));
        }
    }

    fn lcg_set(rows: usize, dim: usize, seed: u64, offset: f32) -> Embeddings {
        let mut s = seed;
        let data = (0..rows * dim)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0 + offset
            })
            .collect();
        Embeddings::new(rows, dim, data).unwrap()
    }

    #[test]
    fn exact_sq_dist_matches_naive() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let y: Vec<f32> = (0..37).map(|i| (i as f32).sqrt()).collect();
        let naive: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum();
        assert!((exact_sq_dist(&x, &y) - naive).abs() < 1e-12 * naive);
        assert_eq!(exact_sq_dist(&x, &x), 0.0);
    }

    /// Every pair within the threshold is a candidate, for every kernel, dims around the
    /// block sizes, and data far from the origin (the centring matters there).
    #[test]
    fn candidates_cover_every_pair_within_threshold() {
        for &(rows, cols, dim) in &[(5, 3, 1), (130, 200, 7), (64, 300, 33), (40, 50, 300)] {
            let a = lcg_set(rows, dim, 1 + dim as u64, 1000.0);
            let b = lcg_set(cols, dim, 2 + dim as u64, 1000.5);
            let frame = Frame::new(&[&a, &b]);
            let (pa, pb) = (Packed::new(&a, &frame), Packed::new(&b, &frame));
            // Threshold: the median exact distance, so about half the pairs are inside.
            let mut all: Vec<f64> = (0..rows)
                .flat_map(|i| (0..cols).map(move |j| (i, j)))
                .map(|(i, j)| exact_sq_dist(a.row(i), b.row(j)))
                .collect();
            all.sort_by(f64::total_cmp);
            let thr = all[all.len() / 2];
            let inside: Vec<(usize, usize)> = (0..rows)
                .flat_map(|i| (0..cols).map(move |j| (i, j)))
                .filter(|&(i, j)| exact_sq_dist(a.row(i), b.row(j)) < thr)
                .collect();
            for isa in Isa::all_supported() {
                let mut v = Collect {
                    row_bounds: vec![frame.bound(thr); rows],
                    col_bounds: vec![f32::NEG_INFINITY; cols],
                    pairs: vec![],
                };
                let mut buf = vec![0f32; TILE * TILE];
                for rt in 0..pa.tiles() {
                    for ct in 0..pb.tiles() {
                        let job = TileJob {
                            rows: &pa,
                            cols: &pb,
                            row_tile: rt,
                            col_tile: ct,
                            upper_only: false,
                        };
                        scan_tile(isa, &job, &mut v, &mut buf);
                    }
                }
                let found: std::collections::HashSet<_> = v.pairs.iter().copied().collect();
                for p in &inside {
                    assert!(
                        found.contains(p),
                        "{isa:?} missed {p:?} ({rows}x{cols}x{dim})"
                    );
                }
                // The test is tight: few candidates beyond the true ones.
                assert!(
                    v.pairs.len() <= inside.len() + inside.len() / 20 + 8,
                    "{isa:?}: {} candidates for {} inside",
                    v.pairs.len(),
                    inside.len()
                );
            }
        }
    }

    #[test]
    fn unit_counts_match_tiles() {
        for rows in [1usize, 5, 127, 128, 129, 300, 1000] {
            let tiles = rows.div_ceil(TILE);
            let mut sum = 0u64;
            for ti in 0..tiles {
                for tj in ti..tiles {
                    let r = (rows - ti * TILE).min(TILE);
                    let c = (rows - tj * TILE).min(TILE);
                    sum += (r * c) as u64;
                }
            }
            assert_eq!(self_pass_units(rows), sum, "rows = {rows}");
        }
    }
}
