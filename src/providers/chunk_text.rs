//! What the translated streams (Anthropic and Gemini upstreams → OpenAI chunks)
//! share to avoid JSON trees per event: a borrowed string for typed views of an
//! upstream event, and a writer of `chat.completion.chunk` text.
//!
//! Why: parsing every upstream event into a `serde_json::Value` (`preserve_order`
//! maps keyed with SipHash), building every chunk as another `Value` and serializing
//! it again was most of a translated stream's cost (bench/README.md, session 9).
//! The common events are now read into small typed views that borrow their strings
//! from the event's text, and chunks are written as text once per chunk, with the
//! part every chunk of a stream shares (id, object, created, model) written once.
//! The text is exactly what serializing the former tree gave (tests below and in
//! the translators compare the two).

use std::borrow::Cow;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, Visitor};

use crate::json_scan::TokenCounts;
use crate::payload::{Payload, RawJson};

/// A JSON string of an upstream event, borrowed from its text when it has no
/// escapes (serde only borrows a bare `Cow<str>` field, never one in an `Option`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'a> Text<'a> {
    /// Takes `null` or a string from a walk, as serde reads an `Option<Text>`;
    /// `None` for anything else.
    pub fn or_null(walk: &mut crate::json_scan::Walk<'a>) -> Option<Option<Text<'a>>> {
        if walk.null() {
            return Some(None);
        }
        walk.string().map(|text| Some(Text(text)))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// The text of an optional string field, `""` when absent or null.
pub fn text_or_empty<'b>(text: &'b Option<Text<'_>>) -> &'b str {
    text.as_ref().map_or("", Text::as_str)
}

/// Append `text` as a JSON string, escaped as serde_json escapes it.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    crate::json_scan::write_json_str(out, text);
}

/// Writes the `chat.completion.chunk`s of one stream as text.
#[derive(Debug, Default)]
pub struct ChunkWriter {
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`:
    /// written when the first chunk needs it, again only if the identity changes.
    head: Vec<u8>,
}

impl ChunkWriter {
    /// Forget the written head (the stream's id or model changed).
    pub fn reset(&mut self) {
        self.head.clear();
    }

    fn head(&mut self, id: &str, created: u64, model: &str) -> &[u8] {
        if self.head.is_empty() {
            let head = &mut self.head;
            head.extend_from_slice(b"{\"id\":");
            write_str(head, id);
            head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
            head.extend_from_slice(itoa::Buffer::new().format(created).as_bytes());
            head.extend_from_slice(b",\"model\":");
            write_str(head, model);
            head.extend_from_slice(b",\"choices\":[");
        }
        &self.head
    }

    /// One chunk with one choice: `{"index":…,"delta":<delta>,"logprobs":null,
    /// "finish_reason":…}`, the delta written by `delta` (a JSON object). `hint`: about
    /// how many bytes the delta takes.
    pub fn choice(
        &mut self,
        (id, created, model): (&str, u64, &str),
        index: u64,
        hint: usize,
        delta: impl FnOnce(&mut Vec<u8>),
        finish: Option<&str>,
    ) -> Payload {
        let head = self.head(id, created, model);
        let mut out = Vec::with_capacity(head.len() + hint + 80);
        out.extend_from_slice(head);
        out.extend_from_slice(b"{\"index\":");
        out.extend_from_slice(itoa::Buffer::new().format(index).as_bytes());
        out.extend_from_slice(b",\"delta\":");
        delta(&mut out);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(reason) => write_str(&mut out, reason),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}");
        Payload::Raw(RawJson::built(Bytes::from(out)))
    }

    /// The usage-only chunk that ends a stream whose client asked for usage:
    /// `{"id":…,…,"choices":[],"usage":<usage>}`, the usage object written by
    /// `usage`, which returns the counts metrics take from it.
    pub fn usage_only(
        &mut self,
        (id, created, model): (&str, u64, &str),
        usage: impl FnOnce(&mut Vec<u8>) -> TokenCounts,
    ) -> Payload {
        let head = self.head(id, created, model);
        let mut out = Vec::with_capacity(head.len() + 160);
        out.extend_from_slice(head);
        out.extend_from_slice(b"],");
        let member_start = out.len();
        out.extend_from_slice(b"\"usage\":");
        let counts = usage(&mut out);
        let member = (member_start, out.len());
        out.push(b'}');
        Payload::Raw(RawJson::built_usage_only(Bytes::from(out), counts, member))
    }
}

/// A delta with one string member: `{"<key>":<text>}` (`key` needs no escaping).
pub fn string_delta<'a>(key: &'a str, text: &'a str) -> impl FnOnce(&mut Vec<u8>) + 'a {
    move |out| {
        out.push(b'{');
        write_str(out, key);
        out.push(b':');
        write_str(out, text);
        out.push(b'}');
    }
}

/// The role delta every choice starts with.
pub fn role_delta(out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"role":"assistant","content":""}"#);
}

/// An empty delta (finish chunks).
pub fn empty_delta(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn text(payload: &Payload) -> String {
        let mut out = Vec::new();
        payload.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// The text is what serde_json writes for the tree the translators built before.
    #[test]
    fn chunks_are_written_as_their_trees_serialize() {
        let mut writer = ChunkWriter::default();
        let id = ("msg_\"1\"\u{2028}é", 17, "m\\odel");
        let tree = |delta: Value, finish: Value| {
            json!({"id": id.0, "object": "chat.completion.chunk", "created": id.1, "model": id.2,
                   "choices": [{"index": 3, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            .to_string()
        };
        let content = "a \"quoted\"\n\ttext \u{1}\u{7f} ünïcode 😀 </script>";
        let chunk = writer.choice(id, 3, 0, string_delta("content", content), None);
        assert_eq!(text(&chunk), tree(json!({"content": content}), Value::Null));
        let chunk = writer.choice(id, 3, 0, role_delta, None);
        assert_eq!(
            text(&chunk),
            tree(json!({"role": "assistant", "content": ""}), Value::Null)
        );
        let chunk = writer.choice(id, 3, 0, empty_delta, Some("stop"));
        assert_eq!(text(&chunk), tree(json!({}), json!("stop")));
        let chunk = writer.choice(id, 3, 0, string_delta("reasoning_content", ""), None);
        assert_eq!(
            text(&chunk),
            tree(json!({"reasoning_content": ""}), Value::Null)
        );
        // The usage-only chunk: the tree's text, and read as a raw usage chunk is.
        let counts = TokenCounts {
            prompt: Some(5),
            ..TokenCounts::default()
        };
        let usage_chunk = writer.usage_only(id, |out| {
            out.extend_from_slice(br#"{"prompt_tokens":5}"#);
            counts
        });
        let usage_tree = |usage: Option<Value>| {
            let mut tree = json!({"id": id.0, "object": "chat.completion.chunk", "created": id.1,
                                  "model": id.2, "choices": []});
            if let Some(usage) = usage {
                tree["usage"] = usage;
            }
            tree.to_string()
        };
        assert_eq!(
            text(&usage_chunk),
            usage_tree(Some(json!({"prompt_tokens": 5})))
        );
        assert!(usage_chunk.is_usage_only() && usage_chunk.has_usage_member());
        assert_eq!(usage_chunk.usage(), Some(counts));
        assert_eq!(text(&usage_chunk.clone().without_usage()), usage_tree(None));
        // Written chunks carry no usage: nothing to hide, nothing to count.
        assert!(!chunk.has_usage_member() && chunk.usage().is_none());
        assert!(!chunk.is_usage_only());
        assert_eq!(
            chunk.to_value()["choices"][0]["delta"],
            json!({"reasoning_content": ""})
        );
    }

    #[test]
    fn text_borrows_unless_escaped() {
        #[derive(serde::Deserialize)]
        struct View<'a> {
            #[serde(borrow)]
            a: Option<Text<'a>>,
            #[serde(borrow)]
            b: Option<Text<'a>>,
        }
        let view: View = serde_json::from_str(r#"{"a":"plain","b":"esc\"aped\n"}"#).unwrap();
        assert!(matches!(view.a.unwrap().0, Cow::Borrowed("plain")));
        assert_eq!(view.b.unwrap().as_str(), "esc\"aped\n");
        assert!(serde_json::from_str::<View>(r#"{"a":1}"#).is_err());
        assert!(serde_json::from_str::<View>(r#"{"a":"\ud800"}"#).is_err());
        let view: View = serde_json::from_str(r#"{"a":null}"#).unwrap();
        assert_eq!(text_or_empty(&view.a), "");
    }
}
