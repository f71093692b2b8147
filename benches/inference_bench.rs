//! Local inference benchmark, side by side with PyTorch transformers (not run in CI).
//!
//! For every local family, with its tiny config and a mid-size random-weight config
//! (0.3–0.45B parameters, 272-token vocabulary), and for each batch size: prefill and decode
//! throughput and peak memory (VmHWM / ru_maxrss) of elite's candle implementation and of
//! transformers on the same model directory and the same inputs. The inputs are made once by
//! elite's own preprocessing (chat template, tokenizer, image processor; the parity tests
//! prove these equal transformers' processors) and written to `inputs.safetensors`, which
//! `benches/torch_bench.py` feeds to transformers; both sides run `batch` copies of the
//! request with greedy decoding and end-of-sequence ignored. Every measurement runs in its
//! own process, so the peak memory belongs to one model and one batch; `load MB` is elite's
//! peak right after loading, to compare with the f32 weights (`params` × 4 bytes).
//!
//! ```text
//! cargo bench --bench inference_bench                          # everything
//! cargo bench --bench inference_bench -- --tiny --batch 1,8    # tiny models only
//! cargo bench --bench inference_bench -- --arch qwen2_vl --new 16
//! ```
//!
//! transformers runs under `ELITE_BENCH_PYTHON`, else the generator's environment
//! (`scripts/vlm_parity/.venv`, made by `scripts/vlm_parity/generate.py`), else `python3`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use elite::inference::local::{Family, MAX_BATCH};
use elite::inference::local::{internvl, llava, paligemma, pixtral, qwen_vl, qwen3};
use elite::inference::tiny::{ModelSize, make_random_model};
use elite::inference::{
    AdapterKind, ChatMessage, ChatRequest, GenerationSettings, ImageInput, ModelSpec, load_model,
};

const ARCHS: [(&str, AdapterKind, bool); 9] = [
    ("qwen3_vl", AdapterKind::Qwen3Vl, true),
    ("qwen2_vl", AdapterKind::Qwen2Vl, true),
    ("qwen2_5_vl", AdapterKind::Qwen2Vl, true),
    ("llava", AdapterKind::Llava, true),
    ("llava_next", AdapterKind::Llava, true),
    ("pixtral", AdapterKind::Pixtral, true),
    ("paligemma", AdapterKind::Paligemma, true),
    ("qwen3", AdapterKind::Qwen3, false),
    ("internvl", AdapterKind::Local, true),
];

const TEXT: &str =
    "Describe everything in this picture that could be dangerous for a child, in detail.";

fn vm_hwm_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn image() -> Vec<u8> {
    let img = image::RgbImage::from_fn(448, 336, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut c = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut c, image::ImageFormat::Png)
        .unwrap();
    c.into_inner()
}

fn request(vision: bool, new_tokens: usize) -> ChatRequest {
    let msg = if vision {
        ChatMessage::user_with_image(ImageInput::from_bytes(image()), TEXT)
    } else {
        ChatMessage::user(TEXT)
    };
    ChatRequest::new(vec![msg]).with_settings(GenerationSettings {
        max_new_tokens: Some(new_tokens),
        ignore_eos: true,
        ..Default::default()
    })
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    let v: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let n = v.len();
    Tensor::from_vec(v, (1, n), &Device::Cpu).unwrap()
}

fn i64_rows(rows: &[Vec<i64>]) -> Tensor {
    let w = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), w), &Device::Cpu).unwrap()
}

/// Writes the model inputs of one request, as transformers' processor names them, to
/// `dir/inputs.safetensors`.
fn dump_inputs(arch: &str, dir: &Path) {
    let req = request(arch != "qwen3", 1);
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let image_token = |dir: &Path| -> u32 {
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        cfg["image_token_id"].as_u64().unwrap() as u32
    };
    match arch {
        "qwen3_vl" | "qwen2_vl" | "qwen2_5_vl" => {
            let (m, _) = qwen_vl::QwenVl::load(dir, &dev, None).unwrap();
            let p = m.prepare(&req).unwrap();
            let ids = p.input.ids();
            let img = image_token(dir);
            t.insert("input_ids".into(), ids_tensor(ids));
            let types: Vec<i64> = ids.iter().map(|&i| i64::from(i == img)).collect();
            t.insert("mm_token_type_ids".into(), i64_rows(&[types]));
            t.insert(
                "pixel_values".into(),
                p.input.pixel_values().unwrap().unwrap(),
            );
            let grids: Vec<Vec<i64>> = p
                .input
                .grids()
                .iter()
                .map(|g| g.iter().map(|&x| i64::from(x)).collect())
                .collect();
            t.insert("image_grid_thw".into(), i64_rows(&grids));
        }
        "llava" | "llava_next" => {
            let (m, _) = llava::Llava::load(dir, &dev, None).unwrap();
            let p = m.prepare(&req).unwrap();
            t.insert("input_ids".into(), ids_tensor(p.input.ids()));
            let px: Vec<Tensor> = p.input.pixel_values().into_iter().cloned().collect();
            let px = Tensor::stack(&px, 0).unwrap();
            let px = if arch == "llava" {
                px.squeeze(1).unwrap()
            } else {
                let sizes: Vec<Vec<i64>> = p
                    .input
                    .image_sizes()
                    .iter()
                    .map(|&(h, w)| vec![i64::from(h), i64::from(w)])
                    .collect();
                t.insert("image_sizes".into(), i64_rows(&sizes));
                px
            };
            t.insert("pixel_values".into(), px);
        }
        "pixtral" => {
            let (m, _) = pixtral::Pixtral::load(dir, &dev, None).unwrap();
            let p = m.prepare(&req).unwrap();
            t.insert("input_ids".into(), ids_tensor(p.input.ids()));
            let px: Vec<Tensor> = p.input.pixel_values().into_iter().cloned().collect();
            let sizes: Vec<Vec<i64>> = px
                .iter()
                .map(|x| vec![x.dim(1).unwrap() as i64, x.dim(2).unwrap() as i64])
                .collect();
            t.insert("image_sizes".into(), i64_rows(&sizes));
            t.insert("pixel_values".into(), Tensor::stack(&px, 0).unwrap());
        }
        "internvl" => {
            let (m, _) = internvl::InternVl::load(dir, &dev, None).unwrap();
            let p = m.prepare(&req).unwrap();
            t.insert("input_ids".into(), ids_tensor(p.input.ids()));
            t.insert(
                "pixel_values".into(),
                p.input.pixel_values().unwrap().unwrap(),
            );
        }
        "paligemma" => {
            let (m, _) = paligemma::PaliGemma::load(dir, &dev, None).unwrap();
            let p = m.prepare(&req).unwrap();
            let ids = p.input.ids();
            t.insert("input_ids".into(), ids_tensor(ids));
            t.insert("token_type_ids".into(), i64_rows(&[vec![0; ids.len()]]));
            let px: Vec<Tensor> = p.input.pixel_values().into_iter().cloned().collect();
            t.insert("pixel_values".into(), Tensor::stack(&px, 0).unwrap());
        }
        "qwen3" => {
            let (m, _) = qwen3::Qwen3::load(dir, &dev, None).unwrap();
            let p = m.prepare(&req).unwrap();
            t.insert("input_ids".into(), ids_tensor(p.input.ids()));
        }
        other => panic!("no input dump for {other}"),
    }
    let t: HashMap<String, Tensor> = t
        .into_iter()
        .map(|(k, v)| {
            let v = if v.dtype().is_float() {
                v.to_dtype(DType::F32).unwrap()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    candle_core::safetensors::save(&t, dir.join("inputs.safetensors")).unwrap();
}

/// Child: load, one short warm-up batch, then the measured batch; prints one line.
fn child(arch: &str, dir: &Path, batch: usize, new_tokens: usize) {
    let (_, adapter, vision) = ARCHS.iter().find(|a| a.0 == arch).copied().expect("arch");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spec = ModelSpec::local(arch, adapter, dir.to_string_lossy());
        let t0 = Instant::now();
        let model = load_model(&spec, &Device::Cpu).await.expect("load");
        let load_s = t0.elapsed().as_secs_f64();
        let load_peak = vm_hwm_mb();
        let warm = vec![request(vision, 2); batch];
        for r in model.generate_batch(warm).await {
            r.expect("warm-up");
        }
        let t0 = Instant::now();
        let replies: Vec<_> = model
            .generate_batch(vec![request(vision, new_tokens); batch])
            .await
            .into_iter()
            .map(|r| r.expect("generate"))
            .collect();
        let wall = t0.elapsed().as_secs_f64();
        let r = &replies[0];
        // A call of more than MAX_BATCH requests runs as consecutive forward-pass groups of
        // MAX_BATCH rows; every reply carries its group's prefill time.
        let prefill: f64 = replies
            .iter()
            .step_by(MAX_BATCH)
            .map(|r| r.prefill_latency.unwrap().as_secs_f64())
            .sum();
        let decode = (wall - prefill).max(1e-9);
        let tokens: usize = replies.iter().map(|r| r.completion_tokens).sum();
        println!(
            "RESULT\t{load_s:.3}\t{load_peak:.0}\t{}\t{:.1}\t{:.1}\t{:.0}",
            r.prompt_tokens,
            (batch * r.prompt_tokens) as f64 / prefill,
            tokens.saturating_sub(batch) as f64 / decode,
            vm_hwm_mb()
        );
    });
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ELITE_BENCH_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vlm_parity/.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn torch_available(py: &Path) -> bool {
    Command::new(py)
        .args(["-c", "import torch, transformers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `(prompt, prefill t/s, decode t/s, peak MB)` from a RESULT line (after `skip` fields).
fn parse(stdout: &str, skip: usize) -> Option<(usize, f64, f64, f64)> {
    let line = stdout.lines().find(|l| l.starts_with("RESULT"))?;
    let f: Vec<&str> = line.split('\t').skip(1 + skip).collect();
    Some((
        f.first()?.parse().ok()?,
        f.get(1)?.parse().ok()?,
        f.get(2)?.parse().ok()?,
        f.get(3)?.parse().ok()?,
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(
            &args[i + 1],
            Path::new(&args[i + 2]),
            args[i + 3].parse().unwrap(),
            args[i + 4].parse().unwrap(),
        );
        return;
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let tiny_only = args.iter().any(|a| a == "--tiny");
    let mid_only = args.iter().any(|a| a == "--mid");
    let only = flag("--arch");
    let batches: Vec<usize> = flag("--batch")
        .map(|b| b.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32]);
    let new_override: Option<usize> = flag("--new").and_then(|n| n.parse().ok());
    let py = python();
    let torch = torch_available(&py);
    let exe = std::env::current_exe().unwrap();
    let bench_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_bench.py");
    println!(
        "CPU, {} threads, f32; one image (448x336) + {} characters of text per request; greedy, \
         EOS ignored; batch = copies of the same request. ratio = elite / transformers.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        TEXT.len()
    );
    println!(
        "{:<10} {:<4} {:>7} {:>7} {:>5} {:>6} | {:>9} {:>8} {:>7} | {:>9} {:>8} {:>7} | {:>7} {:>7} {:>6}",
        "family",
        "size",
        "params",
        "load MB",
        "batch",
        "prompt",
        "prefill/s",
        "decode/s",
        "peak MB",
        "prefill/s",
        "decode/s",
        "peak MB",
        "prefill",
        "decode",
        "memory"
    );
    println!(
        "{:<44} | {:^27} | {:^27} | {:^22}",
        "", "elite (candle)", "transformers", "ratio"
    );
    for (arch, _, _) in ARCHS {
        if only.as_deref().is_some_and(|o| o != arch) {
            continue;
        }
        let sizes: Vec<ModelSize> = if tiny_only {
            vec![ModelSize::Tiny]
        } else if mid_only {
            vec![ModelSize::Mid]
        } else {
            vec![ModelSize::Tiny, ModelSize::Mid]
        };
        for size in sizes {
            let dir = tempfile::tempdir().unwrap();
            if let Err(e) = make_random_model(arch, size, dir.path(), 0) {
                println!("{arch:<10} {size:?}: cannot make the model: {e}");
                continue;
            }
            let bytes: u64 = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum();
            let params = bytes as f64 / 4.0;
            let dumped = std::panic::catch_unwind(|| dump_inputs(arch, dir.path())).is_ok();
            let new_tokens = new_override.unwrap_or(if size == ModelSize::Tiny { 32 } else { 8 });
            for &batch in &batches {
                let out = Command::new(&exe)
                    .args([
                        "--child",
                        arch,
                        &dir.path().to_string_lossy(),
                        &batch.to_string(),
                        &new_tokens.to_string(),
                    ])
                    .output()
                    .expect("spawn child");
                let stdout = String::from_utf8_lossy(&out.stdout);
                let load_peak = stdout
                    .lines()
                    .find(|l| l.starts_with("RESULT"))
                    .and_then(|l| l.split('\t').nth(2))
                    .unwrap_or("-")
                    .to_string();
                let Some(ours) = parse(&stdout, 2) else {
                    let err = String::from_utf8_lossy(&out.stderr);
                    println!(
                        "{arch:<10} {size:?} batch {batch}: failed: {}",
                        err.lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())
                            .unwrap_or("")
                    );
                    continue;
                };
                let mut their_error = None;
                let theirs = if torch && dumped {
                    Command::new(&py)
                        .args([
                            bench_py.to_string_lossy().as_ref(),
                            &dir.path().to_string_lossy(),
                            &batch.to_string(),
                            &new_tokens.to_string(),
                        ])
                        .output()
                        .ok()
                        .and_then(|o| {
                            let parsed = parse(&String::from_utf8_lossy(&o.stdout), 0);
                            if parsed.is_none() {
                                their_error = String::from_utf8_lossy(&o.stderr)
                                    .lines()
                                    .rev()
                                    .find(|l| !l.trim().is_empty())
                                    .map(str::to_string);
                            }
                            parsed
                        })
                } else {
                    None
                };
                let (tp, td, tm) = theirs
                    .map(|t| {
                        (
                            format!("{:.1}", t.1),
                            format!("{:.1}", t.2),
                            format!("{:.0}", t.3),
                        )
                    })
                    .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
                let ratio = |a: f64, b: Option<f64>| {
                    b.map(|b| format!("{:.2}x", a / b))
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "{:<10} {:<4} {:>6.1}M {:>7} {:>5} {:>6} | {:>9.1} {:>8.1} {:>7.0} | {:>9} {:>8} {:>7} | {:>7} {:>7} {:>6}",
                    arch,
                    format!("{size:?}").to_lowercase(),
                    params / 1e6,
                    load_peak,
                    batch,
                    ours.0,
                    ours.1,
                    ours.2,
                    ours.3,
                    tp,
                    td,
                    tm,
                    ratio(ours.1, theirs.map(|t| t.1)),
                    ratio(ours.2, theirs.map(|t| t.2)),
                    ratio(ours.3, theirs.map(|t| t.3)),
                );
                if let Some(e) = their_error {
                    println!("{:<44} | transformers failed: {e}", "");
                }
            }
        }
    }
    if !torch {
        println!(
            "transformers comparison unavailable: `{} -c \"import torch, transformers\"` failed \
             (run scripts/vlm_parity/generate.py once to create its environment, or set \
             ELITE_BENCH_PYTHON).",
            py.display()
        );
    }
}
