//! A chat message's content, typed: plain text, or a list of parts (text and audio clips);
//! and, once a template has rendered it, the [`Span`]s that tell its text from the markup.
//!
//! The JSON shapes are the ones HF chat templates and processors take, so conversations written
//! by earlier versions (and HF-style data) still load: a string, or a list of
//! `{"type": "text", "text": …}` and `{"type": "audio", "audio_url": PATH}` parts (`"audio"` or
//! `"path"` are accepted for the audio part's key). An audio part is written back with
//! `audio_url`, which every Qwen2-Audio template recognises.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Keys an audio part may name its file under, in the order they are looked up.
const AUDIO_KEYS: [&str; 3] = ["audio_url", "audio", "path"];

/// What one message says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One part of a multimodal message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Audio(AudioRef),
}

/// An audio clip a message refers to (decoded and encoded when the prompt is built).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AudioRef {
    pub path: PathBuf,
}

impl AudioRef {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl Content {
    /// The text of a plain-text message (None for a list of parts).
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Content::Text(t) => Some(t),
            Content::Parts(_) => None,
        }
    }

    /// The audio clips of this message, in order.
    pub fn audio(&self) -> impl Iterator<Item = &AudioRef> {
        let parts: &[Part] = match self {
            Content::Text(_) => &[],
            Content::Parts(p) => p,
        };
        parts.iter().filter_map(|p| match p {
            Part::Audio(a) => Some(a),
            Part::Text(_) => None,
        })
    }

    /// Every piece of text, in order, for editing in place.
    pub fn texts_mut(&mut self) -> Vec<&mut String> {
        match self {
            Content::Text(t) => vec![t],
            Content::Parts(parts) => parts
                .iter_mut()
                .filter_map(|p| match p {
                    Part::Text(t) => Some(t),
                    Part::Audio(_) => None,
                })
                .collect(),
        }
    }

    /// This content with every piece of text replaced by `f(text)`.
    pub fn map_text(&self, mut f: impl FnMut(&str) -> String) -> Content {
        match self {
            Content::Text(t) => Content::Text(f(t)),
            Content::Parts(parts) => Content::Parts(
                parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => Part::Text(f(t)),
                        Part::Audio(a) => Part::Audio(a.clone()),
                    })
                    .collect(),
            ),
        }
    }
}

impl From<&str> for Content {
    fn from(text: &str) -> Self {
        Content::Text(text.to_owned())
    }
}

impl From<String> for Content {
    fn from(text: String) -> Self {
        Content::Text(text)
    }
}

impl From<Content> for Value {
    fn from(c: Content) -> Value {
        match c {
            Content::Text(t) => Value::String(t),
            Content::Parts(parts) => Value::Array(parts.into_iter().map(Value::from).collect()),
        }
    }
}

impl From<Part> for Value {
    fn from(p: Part) -> Value {
        match p {
            Part::Text(text) => json!({"type": "text", "text": text}),
            Part::Audio(a) => json!({"type": "audio", "audio_url": a.path.to_string_lossy()}),
        }
    }
}

impl TryFrom<Value> for Content {
    type Error = String;

    fn try_from(v: Value) -> Result<Self, String> {
        match v {
            Value::String(t) => Ok(Content::Text(t)),
            Value::Array(parts) => parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| Part::try_from(p).map_err(|e| format!("content part {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Content::Parts),
            other => Err(format!(
                "message content must be a string or a list of parts, not {other}"
            )),
        }
    }
}

impl TryFrom<Value> for Part {
    type Error = String;

    fn try_from(v: Value) -> Result<Self, String> {
        let kind = v.get("type").and_then(Value::as_str);
        match kind {
            Some("text") => v
                .get("text")
                .and_then(Value::as_str)
                .map(|t| Part::Text(t.to_owned()))
                .ok_or_else(|| "a text part needs a \"text\" string".to_string()),
            Some("audio") => AUDIO_KEYS
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str))
                .map(|p| Part::Audio(AudioRef::new(p)))
                .ok_or_else(|| {
                    format!(
                        "an audio part needs its file under one of {}",
                        AUDIO_KEYS.join(", ")
                    )
                }),
            Some(other) => Err(format!(
                "unsupported part type '{other}' (supported: text, audio)"
            )),
            None => Err(format!("a part needs a \"type\" (text or audio): {v}")),
        }
    }
}

/// A piece of a rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// Text the template wrote: its special-token strings are turn markers.
    Markup(String),
    /// Text of a message: data, never markup.
    Content(String),
}

impl Span {
    pub fn text(&self) -> &str {
        match self {
            Span::Markup(t) | Span::Content(t) => t,
        }
    }
}

/// The text of a rendered prompt.
pub fn spans_text(spans: &[Span]) -> String {
    spans.iter().map(Span::text).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape earlier versions and HF processors write loads, and is written back in the
    /// one canonical shape.
    #[test]
    fn hf_shapes_load_and_round_trip() {
        let c: Content = serde_json::from_value(json!("hi")).unwrap();
        assert_eq!(c, Content::Text("hi".into()));
        assert_eq!(serde_json::to_value(&c).unwrap(), json!("hi"));
        for key in AUDIO_KEYS {
            let c: Content = serde_json::from_value(json!([
                {"type": "audio", key: "a.wav"},
                {"type": "text", "text": "What is said?"}
            ]))
            .unwrap();
            assert_eq!(
                c,
                Content::Parts(vec![
                    Part::Audio(AudioRef::new("a.wav")),
                    Part::Text("What is said?".into())
                ])
            );
            assert_eq!(c.audio().count(), 1);
            assert_eq!(
                serde_json::to_value(&c).unwrap(),
                json!([
                    {"type": "audio", "audio_url": "a.wav"},
                    {"type": "text", "text": "What is said?"}
                ])
            );
        }
    }

    #[test]
    fn malformed_parts_are_refused_with_the_reason() {
        let err = |v: Value| {
            serde_json::from_value::<Content>(v)
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!([{"type": "image", "url": "x"}])).contains("unsupported part type"));
        assert!(err(json!([{"type": "audio"}])).contains("audio_url"));
        assert!(err(json!([{"text": "x"}])).contains("needs a \"type\""));
        assert!(err(json!(3)).contains("string or a list of parts"));
    }
}
