//! Local inference benchmark (not run in CI).
//!
//! For every local family, with its tiny config and a mid-size random-weight
//! config (0.3–0.45B parameters, tiny 272-token vocabulary), prints load
//! time, prefill and decode throughput and peak memory (VmHWM) on CPU. Each
//! measurement runs in a child process so that VmHWM belongs to one model.
//! When `python3 -c "import torch, transformers"` works, decode throughput of
//! PyTorch transformers on the same config and weights is measured by
//! `benches/torch_decode.py` and the ratio printed.
//!
//! ```text
//! cargo bench --bench inference_bench              # tiny + mid
//! cargo bench --bench inference_bench -- --tiny    # tiny only
//! cargo bench --bench inference_bench -- --arch qwen3
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use candle_core::Device;
use elite::inference::tiny::{ModelSize, make_random_model};
use elite::inference::{
    AdapterKind, ChatMessage, ChatRequest, GenerationSettings, ImageInput, ModelSpec, load_model,
};

const ARCHS: [(&str, AdapterKind, bool); 6] = [
    ("qwen3_vl", AdapterKind::Qwen3Vl, true),
    ("llava", AdapterKind::Llava, true),
    ("llava_next", AdapterKind::Llava, true),
    ("pixtral", AdapterKind::Pixtral, true),
    ("paligemma", AdapterKind::Paligemma, true),
    ("qwen3", AdapterKind::Qwen3, false),
];

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

/// Child: load + generate once (warm-up) + generate measured; prints one
/// tab-separated line.
fn child(arch: &str, dir: &Path, new_tokens: usize) {
    let (_, adapter, vision) = ARCHS.iter().find(|a| a.0 == arch).copied().expect("arch");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spec = ModelSpec::local(arch, adapter, dir.to_string_lossy());
        let t0 = Instant::now();
        let model = load_model(&spec, &Device::Cpu).await.expect("load");
        let load_s = t0.elapsed().as_secs_f64();
        let text =
            "Describe everything in this picture that could be dangerous for a child, in detail.";
        let msg = if vision {
            ChatMessage::user_with_image(ImageInput::from_bytes(image()), text)
        } else {
            ChatMessage::user(text)
        };
        let settings = GenerationSettings {
            max_new_tokens: Some(new_tokens),
            ignore_eos: true,
            ..Default::default()
        };
        let req = ChatRequest::new(vec![msg]).with_settings(settings);
        let _ = model.generate(req.clone()).await.expect("warm-up");
        let r = model.generate(req).await.expect("generate");
        let prefill = r.prefill_latency.unwrap().as_secs_f64();
        let decode = (r.latency.as_secs_f64() - prefill).max(1e-9);
        println!(
            "RESULT\t{load_s:.3}\t{}\t{:.1}\t{}\t{:.1}\t{:.0}",
            r.prompt_tokens,
            r.prompt_tokens as f64 / prefill,
            r.completion_tokens,
            (r.completion_tokens.saturating_sub(1)) as f64 / decode,
            vm_hwm_mb()
        );
    });
}

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, transformers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let n: usize = args[i + 3].parse().unwrap();
        child(&args[i + 1], Path::new(&args[i + 2]), n);
        return;
    }
    let tiny_only = args.iter().any(|a| a == "--tiny");
    let only = args
        .iter()
        .position(|a| a == "--arch")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let torch = torch_available();
    let exe = std::env::current_exe().unwrap();
    println!(
        "CPU, {} threads, f32; prompt: 1 image (448x336) + ~90 text tokens; greedy, EOS ignored",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<11} {:<5} {:>8} {:>7} {:>8} {:>11} {:>7} {:>10} {:>9} {:>12}",
        "family",
        "size",
        "params",
        "load s",
        "prompt",
        "prefill t/s",
        "new",
        "decode t/s",
        "VmHWM MB",
        "torch ratio"
    );
    for (arch, _, _) in ARCHS {
        if only.as_deref().is_some_and(|o| o != arch) {
            continue;
        }
        let sizes: &[ModelSize] = if tiny_only {
            &[ModelSize::Tiny]
        } else {
            &[ModelSize::Tiny, ModelSize::Mid]
        };
        for &size in sizes {
            let dir = tempfile::tempdir().unwrap();
            make_random_model(arch, size, dir.path(), 0).unwrap();
            let bytes = std::fs::metadata(dir.path().join("model.safetensors"))
                .map(|m| m.len())
                .unwrap_or(0);
            let params = bytes as f64 / 4.0;
            let new_tokens = if size == ModelSize::Tiny { 64 } else { 16 };
            let out = Command::new(&exe)
                .args([
                    "--child",
                    arch,
                    &dir.path().to_string_lossy(),
                    &new_tokens.to_string(),
                ])
                .output()
                .expect("spawn child");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT")) else {
                println!(
                    "{arch:<11} {size:?}: failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            };
            let f: Vec<&str> = line.split('\t').collect();
            let ratio = if torch {
                let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_decode.py");
                let o = Command::new("python3")
                    .args([
                        py.to_string_lossy().as_ref(),
                        &dir.path().to_string_lossy(),
                        &new_tokens.to_string(),
                    ])
                    .output();
                match o {
                    Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .map(|t| format!("{:.2}x", f[5].parse::<f64>().unwrap_or(0.0) / t))
                        .unwrap_or_else(|| "error".into()),
                    _ => "error".into(),
                }
            } else {
                "n/a".into()
            };
            println!(
                "{:<11} {:<5} {:>7.1}M {:>7} {:>8} {:>11} {:>7} {:>10} {:>9} {:>12}",
                arch,
                format!("{size:?}").to_lowercase(),
                params / 1e6,
                f[1],
                f[2],
                f[3],
                f[4],
                f[5],
                f[6],
                ratio
            );
        }
    }
    if !torch {
        println!(
            "PyTorch comparison unavailable: `python3 -c \"import torch, transformers\"` failed \
             (install with `python3 -m pip install torch transformers --index-url https://download.pytorch.org/whl/cpu`)."
        );
    }
}
