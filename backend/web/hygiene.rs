//! Input hygiene before any handler runs: the path, JSON bodies and form bodies may not carry
//! NUL bytes or other control characters, and the query string may not carry NUL. Such text can
//! never be stored (PostgreSQL refuses NUL in `text`) and has no business in names, prompts or
//! templates, so it is refused with 422 and nothing is stored. Tab, line feed and carriage
//! return stay allowed in bodies (free text such as prompts, guidelines and comments is
//! multi-line); the path allows none. Query values are search terms and redirect targets that
//! their handlers check (a `next` with a tab simply falls back to `/`), so only NUL is refused
//! there. The policy is the same for every field: refuse, never strip, so what is stored is
//! exactly what was sent.
//!
//! Multipart bodies are files and are not inspected here; their text fields reach the handlers,
//! and the database error mapping in [`super::error`] turns a NUL that slips through into 422.
//! Bodies larger than [`super::BODY_LIMIT`] (the upload routes' own limits) pass untouched.

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppError, BODY_LIMIT};

/// Whether a character is refused in request text; `multiline` allows tab, LF and CR.
fn refused(c: char, multiline: bool) -> bool {
    c.is_control() && !(multiline && matches!(c, '\t' | '\n' | '\r'))
}

fn clean(text: &str, multiline: bool) -> bool {
    !text.chars().any(|c| refused(c, multiline))
}

/// Every string and key of a JSON document is clean.
fn json_clean(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => clean(s, true),
        serde_json::Value::Array(items) => items.iter().all(json_clean),
        serde_json::Value::Object(map) => map.iter().all(|(k, v)| clean(k, false) && json_clean(v)),
        _ => true,
    }
}

fn form_clean(bytes: &[u8], multiline: bool) -> bool {
    form_urlencoded::parse(bytes).all(|(k, v)| clean(&k, false) && clean(&v, multiline))
}

fn control_error() -> Response {
    AppError::Invalid(
        "text must not contain NUL bytes or control characters (tab and line breaks are allowed in free text)"
            .into(),
    )
    .into_response()
}

/// The middleware: refuse control characters in the path, query, and JSON or form bodies.
pub async fn refuse_control_characters(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let path_ok = percent_decode(uri.path()).is_some_and(|p| clean(&p, false));
    let query_ok = uri.query().is_none_or(|q| {
        form_urlencoded::parse(q.as_bytes()).all(|(k, v)| !k.contains('\0') && !v.contains('\0'))
    });
    if !path_ok || !query_ok {
        return control_error();
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_json = content_type.starts_with("application/json")
        || (content_type.starts_with("application/") && content_type.contains("+json"));
    let is_form = content_type.starts_with("application/x-www-form-urlencoded");
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| request.body().size_hint().upper());
    let small = declared.is_some_and(|n| n <= BODY_LIMIT as u64);
    if !(is_json || is_form) || !small {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(_) => return AppError::PayloadTooLarge(BODY_LIMIT).into_response(),
    };
    let ok = if is_json {
        // Unparseable JSON is left to the handler's extractor, which explains the error.
        serde_json::from_slice::<serde_json::Value>(&bytes).map_or(true, |v| json_clean(&v))
    } else {
        form_clean(&bytes, true)
    };
    if !ok {
        return control_error();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Percent-decode a path; None when the result is not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_nul_or_escape_is_refused() {
        let ok: serde_json::Value =
            serde_json::from_str(r#"{"a": "line\nnext\ttab", "b": [1, "x"]}"#).unwrap();
        assert!(json_clean(&ok));
        for bad in [
            r#"{"a": "x\u0000y"}"#,
            r#"{"a": ["\u001b[31m"]}"#,
            r#"{"k\u0000": 1}"#,
            r#"{"k\n": 1}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(bad).unwrap();
            assert!(!json_clean(&v), "{bad}");
        }
    }

    #[test]
    fn forms_paths_and_queries() {
        assert!(form_clean(b"a=1&b=two+words%0Anext", true));
        assert!(!form_clean(b"a=1&b=two%0Anext", false));
        assert!(!form_clean(b"a=%00", true));
        assert_eq!(percent_decode("/a%20b/%00").as_deref(), Some("/a b/\0"));
        assert_eq!(percent_decode("/a%2").as_deref(), Some("/a%2"));
        assert_eq!(percent_decode("/%ff"), None);
    }
}
