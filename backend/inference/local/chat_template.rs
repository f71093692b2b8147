//! A model's own chat template, rendered as transformers renders it.
//!
//! Hugging Face model directories carry their prompt format as a Jinja template: in
//! `chat_template.jinja`, `chat_template.json`, `processor_config.json` or
//! `tokenizer_config.json` (looked up in that order, as transformers does when it loads a
//! processor). [`ChatTemplate`] loads it and renders a conversation with minijinja in the
//! configuration transformers uses: `trim_blocks` and `lstrip_blocks`, loop controls, Python
//! string and dict methods (`.upper()`, `.strip()`, `.items()` ... through
//! minijinja-contrib's pycompat), a `tojson` that does not escape HTML (Python's
//! `json.dumps` output), `raise_exception` and `strftime_now`. transformers' `{% generation
//! %}` tag only marks assistant text for training masks; it is removed before compiling.
//!
//! Messages are passed in the processor form: `content` is a list of `{"type": "image"}`
//! and `{"type": "text", "text": ...}` parts ([`ContentStyle::Parts`]), or a plain string
//! for text-only models whose templates expect one ([`ContentStyle::Text`]).

use std::path::Path;

use minijinja::value::Value as JValue;
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Value, json};

use crate::inference::{ChatMessage, ContentPart, InferenceError, Role};

/// How message content reaches the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentStyle {
    /// A list of typed parts (what processors pass).
    Parts,
    /// The text of the message as one string (what text-only tokenizers pass).
    Text,
}

/// A compiled chat template and the special tokens it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token` of the tokenizer config, when it has one.
    pub bos_token: Option<String>,
    tokens: serde_json::Map<String, Value>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .finish_non_exhaustive()
    }
}

/// The template text of a model directory, if it has one.
pub fn find_template(dir: &Path) -> Result<Option<String>, InferenceError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| InferenceError::Load(format!("cannot read {}: {e}", jinja.display())));
    }
    for file in [
        "chat_template.json",
        "processor_config.json",
        "tokenizer_config.json",
    ] {
        if let Some(v) = super::read_json_opt(&dir.join(file))?
            && let Some(t) = template_of(v.get("chat_template"))
        {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// A `chat_template` value: a string, or a list of named templates ("default" wins).
fn template_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
            };
            named("default")
                .or_else(|| {
                    list.first()
                        .and_then(|t| t.get("template"))
                        .and_then(Value::as_str)
                })
                .map(str::to_string)
        }
        _ => None,
    }
}

/// A special token of `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Removes transformers' `{% generation %}` / `{% endgeneration %}` tags.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start + 2..start + len];
        let name = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if name != "generation" && name != "endgeneration" {
            out.push_str(&rest[start..start + len + 2]);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Python's `json.dumps` with its default separators (`", "`, `": "`) or an indent.
fn python_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                python_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `strftime` of the fixed date 2026-01-01 (a Thursday) for the directives chat
/// templates use; other directives are kept as written.
fn fixed_date(format: &str) -> String {
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str("01"),
            Some('-') if chars.clone().next() == Some('d') => {
                chars.next();
                out.push('1');
            }
            Some('m') => out.push_str("01"),
            Some('b') => out.push_str("Jan"),
            Some('B') => out.push_str("January"),
            Some('Y') => out.push_str("2026"),
            Some('y') => out.push_str("26"),
            Some('a') => out.push_str("Thu"),
            Some('A') => out.push_str("Thursday"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn tojson(value: JValue, kwargs: minijinja::value::Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let v: Value = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    python_json(&v, indent, 0, &mut out);
    Ok(out)
}

impl ChatTemplate {
    /// Compiles a template; `tokenizer_config` supplies the special tokens.
    pub fn new(source: &str, tokenizer_config: Option<&Value>) -> Result<Self, InferenceError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| InferenceError::UnsupportedConfig(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        // Templates use it for a "today is" line; a fixed date keeps prompts (and the
        // judgement cache) reproducible.
        env.add_function("strftime_now", |format: String| fixed_date(&format));
        env.add_template_owned("chat", strip_generation_tags(source))
            .map_err(|e| {
                InferenceError::UnsupportedConfig(format!(
                    "the chat template does not compile: {e}"
                ))
            })?;
        let mut tokens = serde_json::Map::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(t) = token_text(tokenizer_config.and_then(|c| c.get(key))) {
                tokens.insert(key.to_string(), Value::String(t));
            }
        }
        Ok(Self {
            env,
            bos_token: token_text(tokenizer_config.and_then(|c| c.get("bos_token"))),
            tokens,
        })
    }

    /// Loads the template of a model directory (`None` when it has none).
    pub fn load(dir: &Path) -> Result<Option<Self>, InferenceError> {
        let Some(source) = find_template(dir)? else {
            return Ok(None);
        };
        let config = super::read_json_opt(&dir.join("tokenizer_config.json"))?;
        Self::new(&source, config.as_ref()).map(Some)
    }

    /// Renders a conversation with the generation prompt appended.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        style: ContentStyle,
        extra: &[(&str, Value)],
    ) -> Result<String, InferenceError> {
        let msgs: Vec<Value> = messages.iter().map(|m| message_json(m, style)).collect();
        let mut ctx = self.tokens.clone();
        ctx.insert("messages".into(), Value::Array(msgs));
        ctx.insert("add_generation_prompt".into(), Value::Bool(true));
        for (k, v) in extra {
            ctx.insert((*k).to_string(), v.clone());
        }
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| InferenceError::Internal(e.to_string()))?;
        tmpl.render(JValue::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| {
                InferenceError::InvalidRequest(format!("the model's chat template refused: {e}"))
            })
    }

    /// Whether token ids should get the tokenizer's special tokens (BOS) added: not when
    /// the rendered prompt already starts with the BOS text (transformers' processor rule).
    pub fn add_special_tokens(&self, rendered: &str) -> bool {
        !self
            .bos_token
            .as_deref()
            .is_some_and(|b| !b.is_empty() && rendered.starts_with(b))
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

fn message_json(m: &ChatMessage, style: ContentStyle) -> Value {
    let content = match style {
        ContentStyle::Text => Value::String(m.text_content()),
        ContentStyle::Parts => Value::Array(
            m.content
                .iter()
                .map(|p| match p {
                    ContentPart::Image(_) => json!({"type": "image"}),
                    ContentPart::Text(t) => json!({"type": "text", "text": t}),
                })
                .collect(),
        ),
    };
    json!({"role": role_name(m.role), "content": content})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> ChatMessage {
        ChatMessage {
            role: Role::User,
            content: vec![ContentPart::Text(text.into())],
        }
    }

    #[test]
    fn renders_like_jinja_with_hf_settings() {
        // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation
        // before one; `.upper()` is a Python method; the generation tags disappear.
        // Expected output from Python's jinja2 with transformers' settings.
        let src = "{% for m in messages %}\n    {% if m['role'] %}{{ m['role'].upper() }}: \
                   {% endif %}{% generation %}{{ m['content'] | selectattr('type', 'equalto', \
                   'text') | map(attribute='text') | join(' ') }}{% endgeneration %}\n\
                   {% endfor %}\n{% if add_generation_prompt %}A:{% endif %}";
        let t = ChatTemplate::new(src, Some(&json!({"bos_token": {"content": "<s>"}}))).unwrap();
        let out = t
            .render(&[user("hi there")], ContentStyle::Parts, &[])
            .unwrap();
        assert_eq!(out, "USER: hi there\nA:");
        assert_eq!(t.bos_token.as_deref(), Some("<s>"));
        assert!(t.add_special_tokens(&out));
        assert!(!t.add_special_tokens("<s>USER"));
    }

    #[test]
    fn tojson_is_pythons_and_exceptions_are_errors() {
        let t = ChatTemplate::new(
            "{{ {'a': [1, 'x<y'], 'b': none} | tojson }}|{{ [1, 2] | tojson(indent=2) }}",
            None,
        )
        .unwrap();
        let out = t.render(&[], ContentStyle::Text, &[]).unwrap();
        assert_eq!(out, "{\"a\": [1, \"x<y\"], \"b\": null}|[\n  1,\n  2\n]");
        let t =
            ChatTemplate::new("{{ raise_exception('only user and assistant') }}", None).unwrap();
        let e = t.render(&[], ContentStyle::Text, &[]).unwrap_err();
        assert!(e.to_string().contains("only user and assistant"), "{e}");
    }

    #[test]
    fn strftime_now_formats_a_fixed_date() {
        // Python: datetime(2026, 1, 1).strftime("%d %b %Y") == "01 Jan 2026".
        let t = ChatTemplate::new(
            "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d (%A)') }}",
            None,
        )
        .unwrap();
        let out = t.render(&[], ContentStyle::Text, &[]).unwrap();
        assert_eq!(out, "01 Jan 2026|2026-01-01 (Thursday)");
    }

    #[test]
    fn named_templates_pick_default() {
        let v =
            json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]);
        assert_eq!(template_of(Some(&v)).as_deref(), Some("D"));
        assert_eq!(
            strip_generation_tags("a{%- generation -%}b{% endgeneration %}c{% if x %}"),
            "abc{% if x %}"
        );
    }
}
