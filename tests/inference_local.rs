//! End-to-end tests of the local adapters on tiny random-weight models
//! written by `make_tiny_model` and loaded through `load_model`.

use std::path::Path;

use candle_core::Device;
use elite::inference::{
    AdapterKind, ChatMessage, ChatModel, ChatRequest, ContentPart, FinishReason,
    GenerationSettings, ImageInput, InferenceError, ModelSpec, load_model, make_tiny_model,
};

fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 + u32::from(seed) * 31) as u8,
            (y * 13) as u8,
            ((x ^ y) * 5) as u8,
        ])
    });
    let mut c = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut c, image::ImageFormat::Png)
        .unwrap();
    c.into_inner()
}

fn greedy(n: usize) -> GenerationSettings {
    GenerationSettings {
        max_new_tokens: Some(n),
        ..Default::default()
    }
}

fn req(image: Option<Vec<u8>>, text: &str, settings: GenerationSettings) -> ChatRequest {
    let msg = match image {
        Some(b) => ChatMessage::user_with_image(ImageInput::from_bytes(b), text),
        None => ChatMessage::user(text),
    };
    ChatRequest::new(vec![
        ChatMessage::system("You are a careful assistant."),
        msg,
    ])
    .with_settings(settings)
}

async fn load(arch: &str, dir: &Path, adapter: AdapterKind) -> std::sync::Arc<dyn ChatModel> {
    make_tiny_model(arch, dir, 42).unwrap();
    let path = if arch == "qwen3_gguf" {
        dir.join("model.gguf")
    } else {
        dir.to_path_buf()
    };
    let mut spec = ModelSpec::local(arch, adapter, path.to_string_lossy());
    spec.price_input_per_million = Some(1.0);
    spec.price_output_per_million = Some(2.0);
    load_model(&spec, &Device::Cpu).await.unwrap()
}

fn ids(r: &Result<elite::inference::ChatReply, InferenceError>) -> Vec<u32> {
    r.as_ref().unwrap().token_ids.clone().unwrap()
}

/// Load, preprocess an image, deterministic greedy and seeded generation,
/// batch vs single agreement (same-shape rows batched, others sequential).
async fn exercise(arch: &str, adapter: AdapterKind, vision: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let model = load(arch, tmp.path(), adapter).await;
    assert_eq!(model.info().accepts_images, vision);
    let img = |s: u8| vision.then(|| png(40, 28, s));

    let a = model
        .generate(req(img(1), "Describe the image.", greedy(8)))
        .await
        .unwrap();
    assert!(
        a.completion_tokens <= 8 && a.prompt_tokens > 5,
        "{arch}: {a:?}"
    );
    if a.finish_reason == FinishReason::Length {
        assert_eq!(a.completion_tokens, 8);
    }
    let expected_cost = a.prompt_tokens as f64 * 1e-6 + a.completion_tokens as f64 * 2e-6;
    assert!((a.cost.unwrap() - expected_cost).abs() < 1e-12);
    let b = model
        .generate(req(img(1), "Describe the image.", greedy(8)))
        .await
        .unwrap();
    assert_eq!(
        a.token_ids, b.token_ids,
        "{arch}: greedy output differs between runs"
    );
    assert_eq!(a.text, b.text);

    let sampled = GenerationSettings {
        max_new_tokens: Some(8),
        temperature: Some(1.0),
        top_p: Some(0.95),
        seed: Some(7),
        ..Default::default()
    };
    let s1 = model
        .generate(req(img(2), "What is unsafe here?", sampled.clone()))
        .await
        .unwrap();
    let s2 = model
        .generate(req(img(2), "What is unsafe here?", sampled.clone()))
        .await
        .unwrap();
    assert_eq!(
        s1.token_ids, s2.token_ids,
        "{arch}: seeded sampling differs between runs"
    );

    // Batch: rows 0, 1 and 3 share a shape (same text, images of one size)
    // and run as one forward pass; row 2 differs and runs on its own.
    let batch = vec![
        req(img(1), "Describe the image.", greedy(8)),
        req(img(3), "Describe the image.", greedy(8)),
        req(img(4), "A different, longer question about it?", greedy(6)),
        req(img(2), "Describe the image.", sampled.clone()),
    ];
    let singles: Vec<_> = {
        let mut v = Vec::new();
        for r in batch.clone() {
            v.push(model.generate(r).await);
        }
        v
    };
    let batched = model.generate_batch(batch).await;
    assert_eq!(batched.len(), 4);
    for (i, (s, b)) in singles.iter().zip(&batched).enumerate() {
        assert_eq!(
            ids(s),
            ids(b),
            "{arch}: row {i} differs between batch and single"
        );
        assert_eq!(
            s.as_ref().unwrap().prompt_tokens,
            b.as_ref().unwrap().prompt_tokens
        );
    }
    assert_eq!(ids(&batched[0]), a.token_ids.clone().unwrap());
}

#[tokio::test]
async fn qwen3_vl_end_to_end() {
    exercise("qwen3_vl", AdapterKind::Qwen3Vl, true).await;
}

#[tokio::test]
async fn qwen2_vl_end_to_end() {
    exercise("qwen2_vl", AdapterKind::Qwen2Vl, true).await;
}

#[tokio::test]
async fn qwen2_5_vl_end_to_end() {
    exercise("qwen2_5_vl", AdapterKind::Local, true).await;
}

#[tokio::test]
async fn llava_15_end_to_end() {
    exercise("llava", AdapterKind::Llava, true).await;
}

#[tokio::test]
async fn llava_next_end_to_end() {
    exercise("llava_next", AdapterKind::Local, true).await;
}

#[tokio::test]
async fn pixtral_end_to_end() {
    exercise("pixtral", AdapterKind::Local, true).await;
}

#[tokio::test]
async fn internvl_end_to_end() {
    exercise("internvl", AdapterKind::Local, true).await;
}

#[tokio::test]
async fn paligemma_end_to_end() {
    exercise("paligemma", AdapterKind::Paligemma, true).await;
}

#[tokio::test]
async fn qwen3_text_end_to_end() {
    exercise("qwen3", AdapterKind::Qwen3, false).await;
}

#[tokio::test]
async fn qwen3_gguf_end_to_end() {
    exercise("qwen3_gguf", AdapterKind::Qwen3, false).await;
}

#[tokio::test]
async fn stop_strings_and_schema_and_multi_image() {
    let tmp = tempfile::tempdir().unwrap();
    let model = load("qwen3_vl", tmp.path(), AdapterKind::Qwen3Vl).await;
    let full = model
        .generate(req(Some(png(32, 32, 1)), "hi", greedy(12)))
        .await
        .unwrap();
    // Use a piece of the greedy output as a stop string: generation must end
    // there, with the text cut before it.
    let chars: Vec<char> = full.text.chars().collect();
    if chars.len() >= 4 {
        let stop: String = chars[2..4].iter().collect();
        let mut s = greedy(12);
        s.stop = vec![stop.clone()];
        let r = model
            .generate(req(Some(png(32, 32, 1)), "hi", s))
            .await
            .unwrap();
        assert_eq!(r.finish_reason, FinishReason::Stop);
        assert!(!r.text.contains(&stop));
        assert!(full.text.starts_with(&r.text));
    }
    // JSON schema on a local model: accepted (instruction appended).
    let mut s = greedy(3);
    s.json_schema = Some(serde_json::json!({"type": "object"}));
    let r = model
        .generate(req(Some(png(32, 32, 1)), "hi", s))
        .await
        .unwrap();
    assert!(r.prompt_tokens > full.prompt_tokens);
    // Two images in one message.
    let two = ChatRequest::new(vec![ChatMessage {
        role: elite::inference::Role::User,
        content: vec![
            ContentPart::Image(ImageInput::from_bytes(png(32, 32, 1))),
            ContentPart::Image(ImageInput::from_image(image::DynamicImage::new_rgb8(
                20, 50,
            ))),
            ContentPart::Text("compare".into()),
        ],
    }])
    .with_settings(greedy(3));
    let r = model.generate(two).await.unwrap();
    assert!(r.completion_tokens <= 3);
}

#[tokio::test]
async fn bad_inputs_are_typed_errors_and_do_not_sink_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let model = load("llava", tmp.path(), AdapterKind::Llava).await;
    let huge = {
        let img = image::GrayImage::new(20_000, 1);
        let mut c = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageLuma8(img)
            .write_to(&mut c, image::ImageFormat::Png)
            .unwrap();
        c.into_inner()
    };
    let long = "word ".repeat(200);
    let bad_settings = GenerationSettings {
        temperature: Some(-1.0),
        ..greedy(2)
    };
    let batch = vec![
        req(Some(b"definitely not an image".to_vec()), "x", greedy(4)),
        req(Some(png(16, 16, 1)), "fine", greedy(4)),
        req(Some(huge), "x", greedy(4)),
        req(Some(png(16, 16, 1)), &long, greedy(4)),
        req(Some(png(16, 16, 1)), "x", bad_settings),
        ChatRequest::new(vec![]),
        req(Some(png(16, 16, 1)), "fine", greedy(4)),
    ];
    let out = model.generate_batch(batch).await;
    assert!(
        matches!(out[0], Err(InferenceError::Image(_))),
        "{:?}",
        out[0]
    );
    assert!(out[1].is_ok());
    assert!(
        matches!(out[2], Err(InferenceError::ImageTooLarge(_))),
        "{:?}",
        out[2]
    );
    assert!(
        matches!(
            out[3],
            Err(InferenceError::ContextLength { limit: 512, .. })
        ),
        "{:?}",
        out[3]
    );
    assert!(
        matches!(out[4], Err(InferenceError::InvalidRequest(_))),
        "{:?}",
        out[4]
    );
    assert!(
        matches!(out[5], Err(InferenceError::InvalidRequest(_))),
        "{:?}",
        out[5]
    );
    assert_eq!(ids(&out[1]), ids(&out[6]));
    for e in out.iter().filter_map(|r| r.as_ref().err()) {
        assert!(!e.to_string().is_empty());
    }

    // Text-only model given an image.
    let t = tempfile::tempdir().unwrap();
    let judge = load("qwen3", t.path(), AdapterKind::Qwen3).await;
    let r = judge
        .generate(req(Some(png(8, 8, 1)), "x", greedy(2)))
        .await;
    assert!(matches!(r, Err(InferenceError::InvalidRequest(_))), "{r:?}");
}

#[tokio::test]
async fn load_errors_are_typed() {
    let dev = Device::Cpu;
    // Missing directory.
    let spec = ModelSpec::local("m", AdapterKind::Qwen3Vl, "/nonexistent/elite-model");
    let e = load_model(&spec, &dev).await.err().unwrap();
    assert!(matches!(e, InferenceError::MissingFile { .. }), "{e}");

    // Missing weight file.
    let tmp = tempfile::tempdir().unwrap();
    make_tiny_model("paligemma", tmp.path(), 1).unwrap();
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let spec = ModelSpec::local("m", AdapterKind::Paligemma, tmp.path().to_string_lossy());
    let e = load_model(&spec, &dev).await.err().unwrap();
    assert!(
        matches!(e, InferenceError::MissingFile { ref path, .. } if path.ends_with("model.safetensors")),
        "{e}"
    );
    assert!(e.to_string().contains("safetensors"));

    // A shard listed in the index is missing.
    let tmp = tempfile::tempdir().unwrap();
    make_tiny_model("qwen3", tmp.path(), 1).unwrap();
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let spec = ModelSpec::local("m", AdapterKind::Qwen3, tmp.path().to_string_lossy());
    let e = load_model(&spec, &dev).await.err().unwrap();
    assert!(matches!(e, InferenceError::MissingFile { .. }), "{e}");

    // A weight missing inside the file (LLaVA: candle's Llama would panic).
    let tmp = tempfile::tempdir().unwrap();
    make_tiny_model("llava", tmp.path(), 1).unwrap();
    let f = tmp.path().join("model.safetensors");
    let mut ts = candle_core::safetensors::load(&f, &dev).unwrap();
    ts.retain(|k, _| !k.contains("layers.1."));
    candle_core::safetensors::save(&ts, &f).unwrap();
    let spec = ModelSpec::local("m", AdapterKind::Llava, tmp.path().to_string_lossy());
    let e = load_model(&spec, &dev).await.err().unwrap();
    assert!(matches!(e, InferenceError::Load(_)), "{e}");

    // Unsupported configurations.
    let tmp = tempfile::tempdir().unwrap();
    make_tiny_model("paligemma", tmp.path(), 1).unwrap();
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["text_config"]["model_type"] = "gemma2".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let spec = ModelSpec::local("m", AdapterKind::Paligemma, tmp.path().to_string_lossy());
    let e = load_model(&spec, &dev).await.err().unwrap();
    assert!(matches!(e, InferenceError::UnsupportedConfig(_)), "{e}");
    cfg["model_type"] = "mllama".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let spec = ModelSpec::local("m", AdapterKind::Local, tmp.path().to_string_lossy());
    let e = load_model(&spec, &dev).await.err().unwrap();
    assert!(matches!(e, InferenceError::UnsupportedConfig(_)), "{e}");
    std::fs::write(&cfg_path, "{not json").unwrap();
    let e = load_model(&spec, &dev).await.err().unwrap();
    assert!(matches!(e, InferenceError::Load(_)), "{e}");

    // hf: reference that is not cached, offline.
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: this test is the only one in this binary that reads HF_HUB_CACHE.
    unsafe { std::env::set_var("HF_HUB_CACHE", cache.path()) };
    let r = elite::inference::registry::cached_snapshot(cache.path(), "org/none", None);
    assert!(r.is_none());
    let spec = ModelSpec::local("m", AdapterKind::Qwen3Vl, "hf:not-an-org/not-a-model");
    let e = tokio::time::timeout(std::time::Duration::from_secs(60), load_model(&spec, &dev))
        .await
        .expect("hub lookup must fail quickly offline")
        .err()
        .unwrap();
    assert!(matches!(e, InferenceError::Hub { .. }), "{e}");
    assert!(e.to_string().contains("local_path"), "{e}");

    // A cached snapshot is used without network.
    let snap = cache.path().join("models--org--tiny/snapshots/abc123");
    make_tiny_model("qwen3", &snap, 3).unwrap();
    std::fs::create_dir_all(cache.path().join("models--org--tiny/refs")).unwrap();
    std::fs::write(cache.path().join("models--org--tiny/refs/main"), "abc123").unwrap();
    let spec = ModelSpec::local("m", AdapterKind::Qwen3, "hf:org/tiny");
    let m = load_model(&spec, &dev).await.unwrap();
    assert!(m.generate(req(None, "hello", greedy(2))).await.is_ok());
}

/// A padded batch decodes at the longest prompt's positions: a short row whose budget would
/// run past the context ends with `Length` at the context instead of failing the batch.
#[tokio::test]
async fn padded_rows_end_at_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let model = load("llava", dir.path(), AdapterKind::Llava).await;
    let context = model.info().context_length.unwrap();
    let settings = |n| GenerationSettings {
        max_new_tokens: Some(n),
        ignore_eos: true,
        ..Default::default()
    };
    let long = "a".repeat(context - 80);
    let out = model
        .generate_batch(vec![
            req(None, &long, settings(4)),
            req(None, "hi", settings(context)),
        ])
        .await;
    let long_reply = out[0].as_ref().unwrap();
    let short_reply = out[1].as_ref().unwrap();
    assert_eq!(long_reply.completion_tokens, 4);
    assert_eq!(short_reply.finish_reason, FinishReason::Length);
    // Prefill yields one token and each decode step one more, at positions L .. context-1:
    // 1 + (context - L) tokens, far fewer than the row's own budget.
    let longest = long_reply.prompt_tokens;
    assert_eq!(short_reply.completion_tokens, 1 + context - longest);
    assert!(short_reply.prompt_tokens + short_reply.completion_tokens < context);
}
