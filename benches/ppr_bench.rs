//! Speed and memory of `genmetrics::evaluate` on the spec's speed case: real ~ N(0, I),
//! fake ~ N(0.5, I), D = 64, N = M = 20,000; and N = M = 100,000 when `PPR_BENCH_LARGE=1` (or
//! `--large`) is given. Each case runs in a fresh child process (this binary re-executed with
//! `--case N`) so that its peak RSS (VmHWM) is its own. If `python3` (or `$PPR_BENCH_PYTHON`)
//! can import numpy and sklearn, a straightforward NumPy implementation of the same metrics is
//! timed on the 20,000 case for comparison.
//!
//! Run: `cargo bench --bench ppr_bench [-- --large]`. "CPU s" is user + system time of the
//! evaluation over all threads: on a busy machine wall time overstates the cost, CPU time less so.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use elite::genmetrics::{Embeddings, Isa, Params, evaluate};

const DIM: usize = 64;
const SMALL: usize = 20_000;
const LARGE: usize = 100_000;

/// SplitMix64 with Box-Muller normals.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn gaussian(rows: usize, mean: f64, seed: u64) -> Embeddings {
    let mut rng = Rng(seed);
    let data = (0..rows * DIM)
        .map(|_| (mean + rng.normal()) as f32)
        .collect();
    Embeddings::new(rows, DIM, data).expect("finite data")
}

fn speed_case(n: usize) -> (Embeddings, Embeddings) {
    (gaussian(n, 0.0, 1), gaussian(n, 0.5, 2))
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User + system CPU seconds of this process (all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        // Linux reports these in USER_HZ, 100 per second on every mainstream configuration.
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// Child: one case, one line
/// `RESULT n seconds cpu_seconds rss_mib pp pr precision recall density coverage`.
fn run_case(n: usize) {
    let (real, fake) = speed_case(n);
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let s = evaluate(&real, &fake, &Params::default(), None).expect("evaluate");
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    println!(
        "RESULT {n} {secs:.3} {cpu:.2} {:.1} {} {} {} {} {} {}",
        peak_rss_mib(),
        s.ppr.p_precision,
        s.ppr.p_recall,
        s.prdc.precision,
        s.prdc.recall,
        s.prdc.density,
        s.prdc.coverage
    );
}

fn run_child(n: usize) -> Option<Vec<String>> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .args(["--case", &n.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("RESULT "))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect(),
    )
}

const NUMPY_SCRIPT: &str = r#"
import sys, time
import numpy as np
import sklearn  # noqa: F401  (availability check only)
n, dim, real_path, fake_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
X = np.fromfile(real_path, dtype='<f4').reshape(n, dim).astype(np.float64)
Y = np.fromfile(fake_path, dtype='<f4').reshape(n, dim).astype(np.float64)
a, k, pk, chunk = 1.2, 4, 5, 2000

def sqd(A, B):
    return np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T, 0.0)

def kth(Z, kk):
    out = np.empty(len(Z))
    for s in range(0, len(Z), chunk):
        d = sqd(Z[s:s + chunk], Z)
        out[s:s + chunk] = np.sqrt(np.partition(d, kk, axis=1)[:, kk])
    return out

t0, c0 = time.time(), time.process_time()
RX, RY = a * kth(X, k).mean(), a * kth(Y, k).mean()
rX, rY = kth(X, pk), kth(Y, pk)
lp, lr = np.zeros(len(Y)), np.zeros(len(X))
prec, dens, rec, cov = np.zeros(len(Y), bool), np.zeros(len(Y)), np.zeros(len(X), bool), np.zeros(len(X), bool)
with np.errstate(divide='ignore'):
    for s in range(0, len(X), chunk):
        d = np.sqrt(sqd(X[s:s + chunk], Y))
        lp += np.where(d < RX, np.log(d / RX), 0.0).sum(0)
        lr[s:s + chunk] = np.where(d < RY, np.log(d / RY), 0.0).sum(1)
        inx = d < rX[s:s + chunk, None]
        prec |= inx.any(0); dens += inx.sum(0); cov[s:s + chunk] = inx.any(1)
        rec[s:s + chunk] = (d < rY[None, :]).any(1)
pp, pr = np.mean(1 - np.exp(lp)), np.mean(1 - np.exp(lr))
secs, cpu = time.time() - t0, time.process_time() - c0
print("NUMPY", f"{secs:.3f}", f"{cpu:.2f}", pp, pr, prec.mean(), rec.mean(), dens.mean() / pk, cov.mean())
"#;

fn numpy_comparison(python: &str) -> Option<Vec<String>> {
    let ok = Command::new(python)
        .args(["-c", "import numpy, sklearn"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("ppr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let (real, fake) = speed_case(SMALL);
    let write = |name: &str, set: &Embeddings| {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).ok()?;
        for v in &set.data {
            f.write_all(&v.to_le_bytes()).ok()?;
        }
        Some(path)
    };
    let real_path = write("real.f32", &real)?;
    let fake_path = write("fake.f32", &fake)?;
    drop((real, fake));
    let out = Command::new(python)
        .arg("-c")
        .arg(NUMPY_SCRIPT)
        .arg(SMALL.to_string())
        .arg(DIM.to_string())
        .arg(&real_path)
        .arg(&fake_path)
        .output()
        .ok();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out?.stdout).to_string();
    let line = text.lines().find(|l| l.starts_with("NUMPY "))?.to_string();
    Some(
        line.split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--case") {
        let n = args
            .get(pos + 1)
            .and_then(|v| v.parse().ok())
            .expect("--case N");
        run_case(n);
        return;
    }
    let large = args.iter().any(|a| a == "--large")
        || std::env::var("PPR_BENCH_LARGE").is_ok_and(|v| v == "1");
    let mut cases = vec![SMALL];
    if large {
        cases.push(LARGE);
    }
    println!(
        "genmetrics::evaluate  D = {DIM}, real ~ N(0, I), fake ~ N(0.5, I), a = 1.2, k = 4, \
         prdc k = 5, {} rayon threads, {} kernel",
        rayon::current_num_threads(),
        Isa::detect().name()
    );
    println!(
        "{:>8} {:>9} {:>8} {:>13} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "N = M",
        "seconds",
        "CPU s",
        "peak RSS MiB",
        "PP",
        "PR",
        "prec",
        "recall",
        "density",
        "coverage"
    );
    let mut rust_small = None;
    for &n in &cases {
        match run_child(n) {
            Some(r) if r.len() == 10 => {
                let num = |i: usize| r[i].parse::<f64>().unwrap_or(f64::NAN);
                println!(
                    "{:>8} {:>9} {:>8} {:>13} {:>10.6} {:>10.6} {:>8.4} {:>8.4} {:>8.4} {:>8.4}",
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    num(4),
                    num(5),
                    num(6),
                    num(7),
                    num(8),
                    num(9),
                );
                if n == SMALL {
                    rust_small = Some(r);
                }
            }
            _ => println!("{n:>8} failed"),
        }
    }
    if !large {
        println!("(N = M = {LARGE} skipped; set PPR_BENCH_LARGE=1 or pass --large)");
    }
    let python = std::env::var("PPR_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    match numpy_comparison(&python) {
        Some(r) if r.len() == 8 => {
            let num = |i: usize| r[i].parse::<f64>().unwrap_or(f64::NAN);
            println!(
                "numpy (chunked, f64) N = M = {SMALL}: {:.3} s ({:.2} CPU s), PP {} PR {} prec {} \
                 recall {} density {} coverage {}",
                num(0),
                num(1),
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7]
            );
            if let Some(rs) = rust_small {
                let rust = |i: usize| rs[i].parse::<f64>().unwrap_or(f64::NAN);
                println!(
                    "speed-up over numpy: {:.1}x wall, {:.1}x CPU; |PP diff| {:.1e}, |PR diff| {:.1e}",
                    num(0) / rust(1),
                    num(1) / rust(2),
                    (rust(4) - num(2)).abs(),
                    (rust(5) - num(3)).abs()
                );
            }
        }
        _ => println!("numpy comparison skipped ({python} cannot import numpy and sklearn)"),
    }
}
