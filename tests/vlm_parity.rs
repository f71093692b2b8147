//! Parity of the local VLM families with their reference implementation.
//!
//! `scripts/vlm_parity/generate.py` builds tiny random-weight models in PyTorch
//! transformers, saves them with `save_pretrained` and records what transformers
//! computes on fixed inputs (`tests/data/vlm_parity/<family>/`). Here the same
//! directories load through elite's own loaders and must give the same pixel values
//! (1e-5), input ids (equal), logits of the prefill's last position and of 8 greedy
//! decode steps (max abs difference 1e-4) and greedy tokens (equal). The batch case
//! holds three prompts of different lengths that transformers ran as one left-padded
//! batch: each row must match it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, IndexOp, Tensor};
use elite::inference::local::Family;
use elite::inference::local::llava::Llava;
use elite::inference::{ChatMessage, ChatRequest, ContentPart, ImageInput, Role};
use serde_json::Value;

const LOGIT_TOL: f32 = 1e-4;
const PIXEL_TOL: f32 = 1e-5;

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/vlm_parity")
        .join(family)
}

struct Fixture {
    dir: PathBuf,
    cases: Value,
    expected: HashMap<String, Tensor>,
}

impl Fixture {
    fn load(family: &str) -> Self {
        let dir = fixture(family);
        let cases: Value = match std::fs::read_to_string(dir.join("cases.json")) {
            Ok(text) => serde_json::from_str(&text).unwrap(),
            Err(_) => Value::Null,
        };
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        Self {
            dir,
            cases,
            expected,
        }
    }

    fn get(&self, key: &str) -> &Tensor {
        self.expected
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no {key}"))
    }

    fn has(&self, key: &str) -> bool {
        self.expected.contains_key(key)
    }

    /// A chat request from the processor-style messages of cases.json.
    fn request(&self, messages: &Value) -> ChatRequest {
        let msgs = messages
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let role = match m["role"].as_str().unwrap() {
                    "system" => Role::System,
                    "assistant" => Role::Assistant,
                    _ => Role::User,
                };
                let content = m["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| match p["type"].as_str().unwrap() {
                        "image" => {
                            let bytes =
                                std::fs::read(self.dir.join(p["image"].as_str().unwrap())).unwrap();
                            ContentPart::Image(ImageInput::from_bytes(bytes))
                        }
                        _ => ContentPart::Text(p["text"].as_str().unwrap().to_string()),
                    })
                    .collect();
                ChatMessage { role, content }
            })
            .collect();
        ChatRequest::new(msgs)
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    a.to_dtype(candle_core::DType::F32)
        .unwrap()
        .sub(&b.to_dtype(candle_core::DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// Compares the prefill's last logits, then feeds the reference's greedy tokens
/// for `steps` decode steps and compares every step's logits and choice.
fn check_decode<F: Family>(
    family: &mut F,
    input: &F::Input,
    prompt_len: usize,
    last: &Tensor,
    steps: &Tensor,
    tokens: &[u32],
    what: &str,
) {
    let logits = family.prefill(&[input]).unwrap().flatten_all().unwrap();
    let d = max_diff(&logits, last);
    assert!(d <= LOGIT_TOL, "{what}: prefill logits differ by {d}");
    let mut logits = logits;
    for (k, &tok) in tokens.iter().enumerate() {
        let ours = logits
            .argmax(D::Minus1)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        assert_eq!(ours, tok, "{what}: greedy token {k} differs");
        logits = family
            .step(&[tok], prompt_len + k)
            .unwrap()
            .flatten_all()
            .unwrap();
        let d = max_diff(&logits, &steps.get(k).unwrap());
        assert!(
            d <= LOGIT_TOL,
            "{what}: logits of decode step {k} differ by {d}"
        );
    }
}

/// What the parity check needs to see of a family's prepared input.
trait Inspect {
    fn ids(&self) -> &[u32];
    fn pixel_values(&self) -> Vec<&Tensor>;
    /// Families whose processor stacks every image's patches into one `pixel_values`
    /// (Qwen-VL) return that stack here.
    fn packed_pixels(&self) -> Option<Tensor> {
        None
    }
}

impl Inspect for elite::inference::local::llava::Input {
    fn ids(&self) -> &[u32] {
        self.ids()
    }
    fn pixel_values(&self) -> Vec<&Tensor> {
        self.pixel_values()
    }
}

impl Inspect for elite::inference::local::pixtral::Input {
    fn ids(&self) -> &[u32] {
        self.ids()
    }
    fn pixel_values(&self) -> Vec<&Tensor> {
        self.pixel_values()
    }
}

impl Inspect for elite::inference::local::qwen3::Input {
    fn ids(&self) -> &[u32] {
        self.ids()
    }
    fn pixel_values(&self) -> Vec<&Tensor> {
        Vec::new()
    }
}

impl Inspect for elite::inference::local::qwen_vl::Input {
    fn ids(&self) -> &[u32] {
        self.ids()
    }
    fn pixel_values(&self) -> Vec<&Tensor> {
        Vec::new()
    }
    fn packed_pixels(&self) -> Option<Tensor> {
        self.pixel_values().unwrap()
    }
}

impl Inspect for elite::inference::local::internvl::Input {
    fn ids(&self) -> &[u32] {
        self.ids()
    }
    fn pixel_values(&self) -> Vec<&Tensor> {
        Vec::new()
    }
    fn packed_pixels(&self) -> Option<Tensor> {
        self.pixel_values().unwrap()
    }
}

impl Inspect for elite::inference::local::paligemma::Input {
    fn ids(&self) -> &[u32] {
        self.ids()
    }
    fn pixel_values(&self) -> Vec<&Tensor> {
        self.pixel_values()
    }
}

type Loaded<F> = Result<(F, elite::inference::local::Common), elite::inference::InferenceError>;

/// Loads the fixture's model directory through the family's own loader (twice: once for
/// the single cases, once fresh for the padded batch) and checks both against the reference.
fn family_parity<F: Family>(family_name: &str, load: fn(&Path, &Device, Option<DType>) -> Loaded<F>)
where
    F::Input: Inspect,
{
    let fx = Fixture::load(family_name);
    let dir = fx.dir.join("model");
    let (model, _) = load(&dir, &Device::Cpu, None).unwrap();
    parity(&fx, model, family_name);
    let (model, _) = load(&dir, &Device::Cpu, None).unwrap();
    padded_batch(&fx, model, family_name);
}

/// The three prompts of different lengths in one left-padded forward pass, as
/// transformers ran them; then decode steps with the reference's tokens, where the
/// shortest row leaves the batch after 4 steps.
fn padded_batch<F: Family>(fx: &Fixture, mut model: F, family_name: &str) {
    assert!(model.pads_batches());
    let rows = fx.cases["batch"]["rows"].as_array().unwrap();
    let prepared: Vec<_> = rows
        .iter()
        .map(|r| model.prepare(&fx.request(r)).unwrap())
        .collect();
    let inputs: Vec<&F::Input> = prepared.iter().map(|p| &p.input).collect();
    let logits = model.prefill(&inputs).unwrap();
    let last = fx.get("batch.last_logits");
    let d = max_diff(&logits, last);
    assert!(
        d <= LOGIT_TOL,
        "{family_name}: padded prefill differs by {d}"
    );
    let tokens = fx.get("batch.tokens");
    let steps = fx.get("batch.step_logits");
    let mut active: Vec<usize> = (0..rows.len()).collect();
    for k in 0..tokens.dim(1).unwrap() {
        if k == 4 {
            let keep: Vec<usize> = (0..active.len()).filter(|&i| active[i] != 0).collect();
            assert!(model.retain_rows(&keep).unwrap());
            active = keep.iter().map(|&i| active[i]).collect();
        }
        let next: Vec<u32> = active
            .iter()
            .map(|&r| ids_of(&tokens.get(r).unwrap())[k])
            .collect();
        let logits = model.step(&next, 0).unwrap();
        for (i, &r) in active.iter().enumerate() {
            let d = max_diff(
                &logits.get(i).unwrap(),
                &steps.get(r).unwrap().get(k).unwrap(),
            );
            assert!(
                d <= LOGIT_TOL,
                "{family_name}: batch row {r} step {k} differs by {d}"
            );
        }
    }
}

fn parity<F: Family>(fx: &Fixture, mut model: F, family_name: &str)
where
    F::Input: Inspect,
{
    for case in fx.cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let p = model.prepare(&fx.request(&case["messages"])).unwrap();
        assert_eq!(
            p.input.ids(),
            ids_of(fx.get(&format!("{name}.input_ids"))).as_slice(),
            "{family_name}/{name}: input ids differ"
        );
        if let Some(ours) = p.input.packed_pixels() {
            let expected = fx.get(&format!("{name}.pixel_values"));
            let d = max_diff(&ours, expected);
            assert!(
                d <= PIXEL_TOL,
                "{family_name}/{name}: pixel values differ by {d}"
            );
        } else if fx.has(&format!("{name}.pixel_values")) {
            let expected = fx.get(&format!("{name}.pixel_values"));
            let ours = p.input.pixel_values();
            assert_eq!(ours.len(), expected.dim(0).unwrap(), "{name}: image count");
            for (i, px) in ours.iter().enumerate() {
                let e = expected.get(i).unwrap();
                // LLaVA-NeXT pads every image to the same number of crops.
                let e = if e.rank() == 4 {
                    e.narrow(0, 0, px.dim(0).unwrap()).unwrap()
                } else if px.rank() == 4 {
                    e.unsqueeze(0).unwrap()
                } else if e.dims() != px.dims() {
                    // Pixtral pads the images of a call to the largest (zeros right and
                    // below); each image keeps its own size here.
                    let (h, w) = (px.dim(1).unwrap(), px.dim(2).unwrap());
                    let zero = |t: Tensor| {
                        t.elem_count() == 0 || max_diff(&t, &t.zeros_like().unwrap()) == 0.0
                    };
                    let (eh, ew) = (e.dim(1).unwrap(), e.dim(2).unwrap());
                    assert!(
                        zero(e.narrow(1, h, eh - h).unwrap())
                            && zero(e.narrow(2, w, ew - w).unwrap()),
                        "{family_name}/{name}: image {i} is not padded with zeros"
                    );
                    e.narrow(1, 0, h).unwrap().narrow(2, 0, w).unwrap()
                } else {
                    e
                };
                let d = max_diff(px, &e);
                assert!(
                    d <= PIXEL_TOL,
                    "{family_name}/{name}: pixel values of image {i} differ by {d}"
                );
            }
        } else {
            assert!(p.input.pixel_values().is_empty());
        }
        let prefill = fx.get(&format!("{name}.prefill_logits"));
        let last = prefill.i(prefill.dim(0).unwrap() - 1).unwrap();
        let tokens = ids_of(fx.get(&format!("{name}.tokens")));
        check_decode(
            &mut model,
            &p.input,
            p.prompt_tokens,
            &last,
            fx.get(&format!("{name}.step_logits")),
            &tokens,
            &format!("{family_name}/{name}"),
        );
    }
    // The left-padded batch of transformers, row by row.
    let batch = &fx.cases["batch"];
    let ids = fx.get("batch.input_ids");
    let mask = fx.get("batch.attention_mask");
    for (r, row) in batch["rows"].as_array().unwrap().iter().enumerate() {
        let p = model.prepare(&fx.request(row)).unwrap();
        let row_ids = ids_of(&ids.get(r).unwrap());
        let row_mask = ids_of(&mask.get(r).unwrap());
        let unpadded: Vec<u32> = row_ids
            .iter()
            .zip(&row_mask)
            .filter(|(_, m)| **m == 1)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(
            p.input.ids(),
            unpadded.as_slice(),
            "batch row {r}: input ids"
        );
        check_decode(
            &mut model,
            &p.input,
            p.prompt_tokens,
            &fx.get("batch.last_logits").get(r).unwrap(),
            &fx.get("batch.step_logits").get(r).unwrap(),
            &ids_of(&fx.get("batch.tokens").get(r).unwrap()),
            &format!("{family_name}/batch row {r}"),
        );
    }
}

#[test]
fn qwen3_matches_transformers() {
    family_parity("qwen3", elite::inference::local::qwen3::Qwen3::load);
}

fn qwen_vl_parity(family_name: &str) {
    family_parity(family_name, elite::inference::local::qwen_vl::QwenVl::load);
}

#[test]
fn qwen3_vl_matches_transformers() {
    qwen_vl_parity("qwen3_vl");
}

#[test]
fn qwen2_vl_matches_transformers() {
    qwen_vl_parity("qwen2_vl");
}

/// Qwen2.5-VL's fixture has windows of 2×2 merged tokens, so the large image spans several
/// windows (and a partial one) in the windowed block.
#[test]
fn qwen2_5_vl_matches_transformers() {
    qwen_vl_parity("qwen2_5_vl");
}

#[test]
fn paligemma_matches_transformers() {
    family_parity(
        "paligemma",
        elite::inference::local::paligemma::PaliGemma::load,
    );
}

#[test]
fn pixtral_matches_transformers() {
    family_parity("pixtral", elite::inference::local::pixtral::Pixtral::load);
}

fn internvl_parity(family_name: &str) {
    family_parity(
        family_name,
        elite::inference::local::internvl::InternVl::load,
    );
}

/// InternVL 3 shape: LayerNorm InternViT with q/k/v biases, Qwen2 decoder. The images cut
/// into 2×1, 2×2 (a ratio tie the larger grid wins) and 1×2 tiles plus thumbnails.
#[test]
fn internvl_matches_transformers() {
    internvl_parity("internvl");
}

/// The InternViT-6B options (RMSNorm layers, query/key RMSNorm, a final vision norm) with a
/// Qwen3 decoder whose head is tied to the embeddings (no `lm_head` in the checkpoint).
#[test]
fn internvl_rms_qk_norm_qwen3_matches_transformers() {
    internvl_parity("internvl_big");
}

#[test]
fn llava_15_matches_transformers() {
    family_parity("llava", Llava::load);
}

#[test]
fn llava_next_matches_transformers() {
    family_parity("llava_next", Llava::load);
}

/// `pil_resize` equals Pillow's `Image.resize` byte for byte, down and up, both filters.
#[test]
fn image_resize_is_pillows() {
    use elite::inference::local::preprocess::{Resample, pil_resize};
    let fx = Fixture::load("pil_resize");
    let src = fx.get("source");
    let (h, w, _) = src.dims3().unwrap();
    let raw: Vec<u8> = src.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let img = image::RgbImage::from_raw(w as u32, h as u32, raw).unwrap();
    let mut checked = 0;
    for (key, expected) in &fx.expected {
        let Some((filter, size)) = key.split_once('.') else {
            continue;
        };
        let filter = if filter == "bilinear" {
            Resample::Bilinear
        } else {
            Resample::Bicubic
        };
        let (ow, oh) = size.split_once('x').unwrap();
        let out = pil_resize(&img, ow.parse().unwrap(), oh.parse().unwrap(), filter);
        let want: Vec<u8> = expected.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        assert_eq!(out.as_raw(), &want, "{key}: differs from Pillow");
        checked += 1;
    }
    assert_eq!(checked, 14);
}

/// `make-tiny pixtral` writes a complete model (tokenizer with Mistral's image tokens, chat
/// template, processor config) that `local` detection picks up and that loads the same
/// twice.
#[test]
fn tiny_pixtral_is_complete_and_deterministic() {
    use elite::inference::local::pixtral::Pixtral;
    let dir = tempfile::tempdir().unwrap();
    elite::inference::make_tiny_model("pixtral", dir.path(), 3).unwrap();
    assert_eq!(
        elite::inference::local::detect_family(dir.path()).unwrap(),
        elite::inference::AdapterKind::Pixtral
    );
    let fx = Fixture::load("pixtral");
    let request = fx.request(&fx.cases["cases"][3]["messages"]);
    let logits: Vec<Vec<f32>> = (0..2)
        .map(|_| {
            let (mut m, _) = Pixtral::load(dir.path(), &Device::Cpu, None).unwrap();
            let p = m.prepare(&request).unwrap();
            assert_eq!(p.input.pixel_values().len(), 2);
            m.prefill(&[&p.input])
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    assert_eq!(logits[0], logits[1], "two loads differ");
}

/// `make-tiny` writes complete models: two loads of the same LLaVA directory compute the
/// same logits (candle draws a random CLIP class embedding when the weight is missing).
#[test]
fn tiny_llava_loads_are_deterministic() {
    for arch in ["llava", "llava_next"] {
        let dir = tempfile::tempdir().unwrap();
        elite::inference::make_tiny_model(arch, dir.path(), 3).unwrap();
        let fx = Fixture::load("llava");
        let request = fx.request(&fx.cases["cases"][0]["messages"]);
        let logits: Vec<Vec<f32>> = (0..2)
            .map(|_| {
                let (mut m, _) = Llava::load(dir.path(), &Device::Cpu, None).unwrap();
                let p = m.prepare(&request).unwrap();
                m.prefill(&[&p.input])
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        assert_eq!(logits[0], logits[1], "{arch}: two loads differ");
    }
}
