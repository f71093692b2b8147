//! 1,000 malformed bodies generated from the OpenAPI document's request schemas (wrong types,
//! huge and negative numbers, NUL bytes and control characters, long strings, deep nesting,
//! missing and unknown fields, broken JSON), posted as a researcher to every JSON endpoint.
//! No answer may be a 5xx, and a refused request must leave every table's row count as it was.

use axum::http::StatusCode;
use elite::accounts::Role;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::common::*;

const BODIES: usize = 1000;

/// An endpoint taking a JSON body, with its request schema (refs resolved lazily).
struct Endpoint {
    method: String,
    path: String,
    schema: Value,
}

fn json_endpoints(doc: &Value) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if !matches!(method.as_str(), "post" | "put" | "patch") {
                continue;
            }
            if let Some(schema) = op["requestBody"]["content"]["application/json"].get("schema") {
                out.push(Endpoint {
                    method: method.to_uppercase(),
                    path: path.clone(),
                    schema: schema.clone(),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
    out
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or_default();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Every property name of every schema, for bodies whose schema is a bare object.
fn field_names(doc: &Value) -> Vec<String> {
    let mut names: Vec<String> = doc["components"]["schemas"]
        .as_object()
        .map(|schemas| {
            schemas
                .values()
                .filter_map(|s| s["properties"].as_object())
                .flat_map(|p| p.keys().cloned())
                .collect()
        })
        .unwrap_or_default();
    names.extend(
        [
            "name",
            "adapter",
            "base_url",
            "model_id",
            "local_path",
            "api_key_env",
            "model",
            "benchmark_id",
            "judge",
            "limit",
            "data",
            "method",
            "ratio",
            "csv",
            "images",
            "k",
        ]
        .map(String::from),
    );
    names.sort();
    names.dedup();
    names
}

fn hostile_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..16) {
        0 => json!(18_446_744_073_709_551_615u64),
        1 => json!(-9_223_372_036_854_775_808i64),
        2 => json!(1e308),
        3 => json!(-1),
        4 => json!(0),
        5 => json!("\u{0}"),
        6 => json!(format!("a\u{0}b{}", "\u{1b}[2J")),
        7 => json!("x".repeat(rng.random_range(1_000..200_000))),
        8 => Value::Null,
        9 => json!(true),
        10 => json!([]),
        11 => json!({}),
        12 => {
            let mut v = json!(1);
            for _ in 0..rng.random_range(10..100) {
                v = json!([v]);
            }
            v
        }
        13 => json!("../../../../etc/passwd"),
        14 => json!("http://169.254.169.254/latest/meta-data"),
        _ => json!(rng.random_range(-1000i64..1000)),
    }
}

/// A plausible value for a schema, so that bodies get past the first field.
fn plausible(doc: &Value, schema: &Value, rng: &mut StdRng, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if depth > 4 {
        return Value::Null;
    }
    if let Some(variants) = schema
        .get("oneOf")
        .or(schema.get("anyOf"))
        .and_then(Value::as_array)
        && let Some(first) = variants.first()
    {
        return plausible(doc, first, rng, depth + 1);
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !values.is_empty()
    {
        return values[rng.random_range(0..values.len())].clone();
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds
            .iter()
            .find(|k| *k != "null")
            .and_then(Value::as_str)
            .unwrap_or("string")
            .to_string(),
        Value::String(k) => k.clone(),
        _ => "object".into(),
    };
    match kind.as_str() {
        "integer" => json!(rng.random_range(0..5)),
        "number" => json!(rng.random_range(0.0..1.0)),
        "boolean" => json!(rng.random_bool(0.5)),
        "array" => json!([plausible(doc, &schema["items"], rng, depth + 1)]),
        "string" => json!(["x", "demo", "synthetic", "S1", "l1"][rng.random_range(0..5)]),
        _ => {
            let mut map = Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in props {
                    map.insert(k.clone(), plausible(doc, v, rng, depth + 1));
                }
            }
            Value::Object(map)
        }
    }
}

/// One malformed body for an endpoint, as text (it may not even be JSON).
fn malformed(doc: &Value, endpoint: &Endpoint, names: &[String], rng: &mut StdRng) -> String {
    let schema = resolve(doc, &endpoint.schema);
    let mut body = plausible(doc, schema, rng, 0);
    if !body.is_object() {
        body = json!({});
    }
    let map = body.as_object_mut().expect("object");
    if map.is_empty() || rng.random_bool(0.3) {
        for _ in 0..rng.random_range(1..6) {
            let name = &names[rng.random_range(0..names.len())];
            map.insert(
                name.clone(),
                plausible(doc, &json!({"type": "string"}), rng, 0),
            );
        }
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    match rng.random_range(0..10) {
        // Broken or non-object JSON.
        0 => {
            return [
                "{",
                "[]",
                "\"text\"",
                "null",
                "{\"a\": 1e999}",
                "{\"a\": \"\\ud800\"}",
                "\u{0}",
            ][rng.random_range(0..7)]
            .to_string();
        }
        // A required field missing.
        1 if !keys.is_empty() => {
            map.remove(&keys[rng.random_range(0..keys.len())]);
        }
        // A hostile key.
        2 => {
            map.insert("k\u{0}ey".into(), json!(1));
        }
        // One to three fields replaced by hostile values.
        _ => {
            for _ in 0..rng.random_range(1..4) {
                if keys.is_empty() {
                    break;
                }
                let key = &keys[rng.random_range(0..keys.len())];
                map.insert(key.clone(), hostile_value(rng));
            }
        }
    }
    body.to_string()
}

fn fill_path(path: &str, rng: &mut StdRng) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|e| start + e + 1)
            .unwrap_or(rest.len());
        out.push_str(
            ["1", "2", "0", "-1", "9223372036854775807", "x", "%00"][rng.random_range(0..7)],
        );
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn malformed_bodies_from_the_openapi_schemas_never_give_5xx_or_partial_writes() {
    let app = TestApp::with_config(test_config()).await;
    let user = app.user("fuzzer", Role::Researcher).await;
    let token = app.token(&user).await;
    crate::bounds::small_benchmark(&app).await;
    let doc = body_json(app.send(get("/api/openapi.json", None)).await).await;
    let endpoints = json_endpoints(&doc);
    assert!(
        endpoints.len() >= 15,
        "only {} JSON endpoints",
        endpoints.len()
    );
    let names = field_names(&doc);
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut counts = table_counts(&app.pool).await;
    let mut refused = 0;
    for i in 0..BODIES {
        let endpoint = &endpoints[i % endpoints.len()];
        let body = malformed(&doc, endpoint, &names, &mut rng);
        let path = fill_path(&endpoint.path, &mut rng);
        let response = app
            .send(api(&endpoint.method, &path, Some(&token), Some(&body)))
            .await;
        let status = response.status();
        let shown = &body[..body.floor_char_boundary(300)];
        assert!(
            !status.is_server_error(),
            "{} {path} -> {status}: {}\nbody: {shown}",
            endpoint.method,
            body_text(response).await
        );
        let now = table_counts(&app.pool).await;
        if status.is_client_error() {
            refused += 1;
            assert_eq!(
                now, counts,
                "{} {path} -> {status} but rows changed; body: {shown}",
                endpoint.method
            );
        }
        counts = now;
        assert_ne!(status, StatusCode::NOT_IMPLEMENTED);
    }
    // Malformed bodies are overwhelmingly refused.
    assert!(
        refused > BODIES * 9 / 10,
        "only {refused} of {BODIES} refused"
    );
}
