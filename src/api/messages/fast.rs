//! Cheap reads for the Anthropic door's streams, where every event counts
//! (bench/README.md, "Session 9"):
//!
//! - [`event_type`]: the `type` of an Anthropic event, which names its SSE event.
//!   Anthropic writes it first (`{"type":"content_block_delta",...`), so it is read
//!   straight off the front of the text; anything else takes [`member_str`].
//! - [`Chunk`]: what the translation to Anthropic events reads from an OpenAI
//!   chunk, read from the upstream's text by one walk (`json_scan::Walk`: strings
//!   point into the text unless they hold escapes; members nobody reads are
//!   skipped) instead of a `serde_json::Value` tree, which was about 40 % of a
//!   translated stream's instructions, or serde's typed parse, which was still
//!   4,400 instructions a chunk (bench/README.md, session 19). The view reads
//!   exactly what the tree reads ([`Chunk::from_value`] is the tree reading, used
//!   for chunks that are trees already): where the text has a shape the tree
//!   reading would tolerate but the view does not (a number where a string was
//!   expected, a member twice), the view fails and the caller falls back to the
//!   tree.

use std::borrow::Cow;
use std::ops::{Deref, Range};

use bytes::Bytes;

use serde_json::Value;

use crate::json_scan::{first_time, has_escape, member_str, StringMemo, Walk};

/// The value of an event's first top-level `type` member, when it is a string.
/// `text` must be a JSON object already checked to be valid (and so UTF-8).
pub fn event_type(text: &[u8]) -> Option<Cow<'_, str>> {
    const HEAD: &[u8] = br#"{"type":""#;
    /// Anthropic's event types, the most frequent first.
    const KNOWN: [&str; 8] = [
        "content_block_delta",
        "content_block_start",
        "content_block_stop",
        "message_start",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    ];
    if let Some(rest) = text.strip_prefix(HEAD) {
        for kind in KNOWN {
            if rest.starts_with(kind.as_bytes()) && rest.get(kind.len()) == Some(&b'"') {
                return Some(Cow::Borrowed(kind));
            }
        }
        // Another type: it ends at the first quote unless an escape or a control
        // character (which the slow path rejects) comes first.
        if let Some(end) = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        {
            if rest[end] == b'"' {
                // Cut at ASCII bytes of UTF-8 text: still UTF-8.
                return std::str::from_utf8(&rest[..end]).ok().map(Cow::Borrowed);
            }
        }
    }
    member_str(std::str::from_utf8(text).ok()?, "type")
}

/// A JSON string, borrowed from the text when it holds no escapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// What the translation reads from one OpenAI chunk.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk<'a> {
    pub id: Option<Text<'a>>,
    pub model: Option<Text<'a>>,
    /// The counts of a `usage` object (absent when `usage` is not an object).
    pub usage: Option<Usage>,
    /// The first element of `choices`, if there is one (`null` reads as empty).
    pub choice: Option<Choice<'a>>,
}

/// The token counts of an OpenAI `usage` object, each when it is an unsigned
/// integer (as `Value::as_u64` reads it).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`.
    pub cached_tokens: Option<u64>,
}

/// What the translation reads from a choice.
#[derive(Debug, Default, PartialEq)]
pub struct Choice<'a> {
    /// `delta.reasoning_content`, else `delta.reasoning` (the first that is a
    /// string), when not empty.
    pub reasoning: Option<Text<'a>>,
    pub content: Option<Text<'a>>,
    pub refusal: Option<Text<'a>>,
    pub tool_calls: Vec<ToolCall<'a>>,
    pub finish_reason: Option<Text<'a>>,
}

/// A tool call fragment of a delta.
#[derive(Debug, Default, PartialEq)]
pub struct ToolCall<'a> {
    /// `index`, 0 when it is missing or not an unsigned integer.
    pub index: u64,
    pub id: Option<Text<'a>>,
    pub name: Option<Text<'a>>,
    pub arguments: Option<Text<'a>>,
}

impl<'a> Chunk<'a> {
    /// The view of an upstream's chunk text; `None` when the text has a shape that
    /// only the tree reading ([`Chunk::from_value`]) takes.
    pub fn from_text(text: &'a [u8]) -> Option<Chunk<'a>> {
        let mut walk = Walk::new(crate::json_scan::utf8(text)?);
        let mut chunk = Chunk::default();
        let mut seen = [false; 4];
        walk.object(|walk, key| {
            match key {
                "id" => {
                    first_time(&mut seen[0])?;
                    chunk.id = text_or_null(walk)?;
                }
                "model" => {
                    first_time(&mut seen[1])?;
                    chunk.model = text_or_null(walk)?;
                }
                "usage" => {
                    first_time(&mut seen[2])?;
                    if !walk.null() {
                        chunk.usage = Some(usage(walk)?);
                    }
                }
                "choices" => {
                    first_time(&mut seen[3])?;
                    if !walk.null() {
                        chunk.choice = first_choice(walk)?;
                    }
                }
                _ => unknown(walk, key)?,
            }
            Some(())
        })?;
        walk.done()?;
        Some(chunk)
    }

    /// The same reading from a tree.
    pub fn from_value(chunk: &'a Value) -> Chunk<'a> {
        let text = |v: Option<&'a Value>| v.and_then(Value::as_str).map(|s| Text(Cow::Borrowed(s)));
        let usage = chunk.get("usage").filter(|u| u.is_object()).map(|u| Usage {
            prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64),
            completion_tokens: u.get("completion_tokens").and_then(Value::as_u64),
            cached_tokens: u
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64),
        });
        let choice = chunk.get("choices").and_then(|c| c.get(0)).map(|choice| {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            let tool_calls = delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|call| {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    ToolCall {
                        index: call.get("index").and_then(Value::as_u64).unwrap_or(0),
                        id: text(call.get("id")),
                        name: text(function.get("name")),
                        arguments: text(function.get("arguments")),
                    }
                })
                .collect();
            Choice {
                reasoning: super::answer::reasoning_text(delta).map(|s| Text(Cow::Borrowed(s))),
                content: text(delta.get("content")),
                refusal: text(delta.get("refusal")),
                tool_calls,
                finish_reason: text(choice.get("finish_reason")),
            }
        });
        Chunk {
            id: text(chunk.get("id")),
            model: text(chunk.get("model")),
            usage,
            choice,
        }
    }
}

/// [`Chunk::from_text`] for the chunks of one stream, in order: a chunk that is the
/// last one but for its text (`choices[0].delta.content`, the usual text chunk) is
/// read by a comparison with the last ([`StringMemo`]), not walked again.
#[derive(Default, Clone)]
pub struct ChunkReader {
    /// The last chunk when all its choice carried was text.
    last: StringMemo,
    /// Where that chunk's `id` and `model` strings lie in it.
    id: Option<Range<usize>>,
    model: Option<Range<usize>>,
}

impl ChunkReader {
    /// The view of the next chunk of the stream; `None` as [`Chunk::from_text`].
    pub fn read<'a>(&mut self, text: &'a Bytes) -> Option<Chunk<'a>> {
        if let Some(span) = self.last.string_span(text) {
            // Checked once here for the strings read out of it below.
            if let Some(chunk) = crate::json_scan::utf8(text).and_then(|t| self.repeated(t, span)) {
                return Some(chunk);
            }
        }
        let chunk = Chunk::from_text(text);
        self.keep(text, chunk.as_ref());
        chunk
    }

    /// Forget the last chunk (the next one came another way).
    pub fn forget(&mut self) {
        self.last.forget();
    }

    /// The last chunk's reading, with the text at `span` of `text` and its `id`
    /// and `model` where they lie in `text`.
    fn repeated<'a>(&self, text: &'a str, span: Range<usize>) -> Option<Chunk<'a>> {
        let read = |string: &'a str| Text(Cow::Borrowed(string));
        Some(Chunk {
            id: self.last.moved_text(text, &self.id, &span)?.map(read),
            model: self.last.moved_text(text, &self.model, &span)?.map(read),
            usage: None,
            choice: Some(Choice {
                content: Some(read(StringMemo::text_at(text, span)?)),
                ..Choice::default()
            }),
        })
    }

    /// Remember `text` if what was read of it is a text chunk whose strings are
    /// as written (no escapes); forget otherwise.
    fn keep(&mut self, text: &Bytes, chunk: Option<&Chunk<'_>>) {
        let Some(Chunk {
            id,
            model,
            usage: None,
            choice:
                Some(Choice {
                    reasoning: None,
                    content: Some(Text(Cow::Borrowed(content))),
                    refusal: None,
                    tool_calls,
                    finish_reason: None,
                }),
        }) = chunk
        else {
            return self.last.forget();
        };
        if !tool_calls.is_empty() {
            return self.last.forget();
        }
        if !self.last.remember(text, content) {
            return;
        }
        let range =
            |string: &Option<Text<'_>>| self.last.range_of_read(string.as_ref().map(|t| &t.0));
        match (range(id), range(model)) {
            (Some(id), Some(model)) => (self.id, self.model) = (id, model),
            _ => self.last.forget(),
        }
    }
}

// The walked reading. Each value is read as the tree reading takes it: a member
// of another type than it expects (a number where a string was), or given twice
// (the tree keeps the last one), fails the view, and the caller uses the tree.

/// A member the view does not read: skipped, unless its key has an escape (it might
/// spell one the view reads; the tree decodes it).
fn unknown(walk: &mut Walk<'_>, key: &str) -> Option<()> {
    if has_escape(key) {
        return None;
    }
    walk.skip().map(drop)
}

/// A string, or `null` (`None`).
fn text_or_null<'a>(walk: &mut Walk<'a>) -> Option<Option<Text<'a>>> {
    if walk.null() {
        return Some(None);
    }
    walk.string().map(|text| Some(Text(text)))
}

/// `usage`: an object.
fn usage(walk: &mut Walk<'_>) -> Option<Usage> {
    let mut usage = Usage::default();
    let mut seen = [false; 3];
    walk.object(|walk, key| {
        match key {
            "prompt_tokens" => {
                first_time(&mut seen[0])?;
                usage.prompt_tokens = walk.u64_or_null()?;
            }
            "completion_tokens" => {
                first_time(&mut seen[1])?;
                usage.completion_tokens = walk.u64_or_null()?;
            }
            "prompt_tokens_details" => {
                first_time(&mut seen[2])?;
                if !walk.null() {
                    usage.cached_tokens = cached_tokens(walk)?;
                }
            }
            _ => unknown(walk, key)?,
        }
        Some(())
    })?;
    Some(usage)
}

/// `prompt_tokens_details`: an object; its `cached_tokens`.
fn cached_tokens(walk: &mut Walk<'_>) -> Option<Option<u64>> {
    let mut cached = None;
    let mut seen = false;
    walk.object(|walk, key| {
        if key == "cached_tokens" {
            first_time(&mut seen)?;
            cached = walk.u64_or_null()?;
        } else {
            unknown(walk, key)?;
        }
        Some(())
    })?;
    Some(cached)
}

/// `choices`: a list, of which only the first element is read (an object, or
/// `null`, which reads as a choice with nothing in it, as in the tree); the others
/// are skipped.
fn first_choice<'a>(walk: &mut Walk<'a>) -> Option<Option<Choice<'a>>> {
    let mut first = None;
    walk.array(|walk| {
        if first.is_some() {
            walk.skip()?;
        } else if walk.null() {
            first = Some(Choice::default());
        } else {
            first = Some(choice(walk)?);
        }
        Some(())
    })?;
    Some(first)
}

fn choice<'a>(walk: &mut Walk<'a>) -> Option<Choice<'a>> {
    let mut choice = Choice::default();
    let (mut reasoning_content, mut reasoning) = (None, None);
    let mut seen = [false; 2];
    walk.object(|walk, key| {
        match key {
            "delta" => {
                first_time(&mut seen[0])?;
                if !walk.null() {
                    delta(walk, &mut choice, &mut reasoning_content, &mut reasoning)?;
                }
            }
            "finish_reason" => {
                first_time(&mut seen[1])?;
                choice.finish_reason = text_or_null(walk)?;
            }
            _ => unknown(walk, key)?,
        }
        Some(())
    })?;
    // The first of the two that is a string, if it is not empty.
    choice.reasoning = reasoning_content.or(reasoning).filter(|t| !t.is_empty());
    Some(choice)
}

/// A delta: an object, read into `choice` (both reasoning members kept apart for
/// [`choice`] to pick from).
fn delta<'a>(
    walk: &mut Walk<'a>,
    choice: &mut Choice<'a>,
    reasoning_content: &mut Option<Text<'a>>,
    reasoning: &mut Option<Text<'a>>,
) -> Option<()> {
    let mut seen = [false; 5];
    walk.object(|walk, key| {
        let (slot, seen) = match key {
            "reasoning_content" => (&mut *reasoning_content, &mut seen[0]),
            "reasoning" => (&mut *reasoning, &mut seen[1]),
            "content" => (&mut choice.content, &mut seen[2]),
            "refusal" => (&mut choice.refusal, &mut seen[3]),
            "tool_calls" => {
                first_time(&mut seen[4])?;
                if !walk.null() {
                    walk.array(|walk| {
                        choice.tool_calls.push(tool_call(walk)?);
                        Some(())
                    })?;
                }
                return Some(());
            }
            _ => return unknown(walk, key),
        };
        first_time(seen)?;
        *slot = text_or_null(walk)?;
        Some(())
    })
}

/// A tool call fragment: an object.
fn tool_call<'a>(walk: &mut Walk<'a>) -> Option<ToolCall<'a>> {
    let mut call = ToolCall::default();
    let mut seen = [false; 5];
    walk.object(|walk, key| {
        match key {
            "index" => {
                first_time(&mut seen[0])?;
                call.index = walk.u64_or_null()?.unwrap_or(0);
            }
            "id" => {
                first_time(&mut seen[1])?;
                call.id = text_or_null(walk)?;
            }
            "function" => {
                first_time(&mut seen[2])?;
                if !walk.null() {
                    walk.object(|walk, key| {
                        let (slot, seen) = match key {
                            "name" => (&mut call.name, &mut seen[3]),
                            "arguments" => (&mut call.arguments, &mut seen[4]),
                            _ => return unknown(walk, key),
                        };
                        first_time(seen)?;
                        *slot = text_or_null(walk)?;
                        Some(())
                    })?;
                }
            }
            _ => unknown(walk, key)?,
        }
        Some(())
    })?;
    Some(call)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The view of a text, when it takes the text, reads what the tree reads.
    fn agrees(text: &str) -> bool {
        let tree: Value = serde_json::from_str(text).expect(text);
        match Chunk::from_text(text.as_bytes()) {
            Some(view) => {
                assert_eq!(view, Chunk::from_value(&tree), "{text}");
                true
            }
            None => false,
        }
    }

    const SAMPLES: [&str; 6] = [
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"up","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"logprobs":null,"finish_reason":null}]}"#,
        r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"reasoning_content":"think","reasoning":"other"}}]}"#,
        r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_1","type":"function","function":{"name":"get","arguments":"{\"q\":"}},{"index":2,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"},{"index":1,"delta":7}]}"#,
        r#"{"id":"c","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0}}}"#,
        r#"{"id":"c","choices":[{"delta":{"content":"","refusal":"no","reasoning":""},"finish_reason":"content_filter"}],"usage":null}"#,
        r#"{"id":"a\"b","model":"\u00e9","choices":[{"delta":{"content":"\ud83d\ude00 \n"}}]}"#,
    ];

    #[test]
    fn the_view_reads_the_samples_as_the_tree_does() {
        for text in SAMPLES {
            assert!(agrees(text), "the view takes {text}");
        }
        let view = Chunk::from_text(SAMPLES[2].as_bytes()).unwrap();
        let calls = &view.choice.unwrap().tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments.as_deref(), Some("{\"q\":"));
        // Strings without escapes point into the text.
        let view = Chunk::from_text(SAMPLES[0].as_bytes()).unwrap();
        assert!(matches!(view.model, Some(Text(Cow::Borrowed("up")))));
        let view = Chunk::from_text(SAMPLES[5].as_bytes()).unwrap();
        assert_eq!(view.id.as_deref(), Some("a\"b"));
        // A key with an escape might spell one the view reads: left to the tree.
        for text in [
            r#"{"i\u0064":"x","choices":[]}"#,
            r#"{"id":"x","choices":[{"delta":{"cont\u0065nt":"y"}}]}"#,
            r#"{"id":"x","choices":[],"usage":{"\u0070rompt_tokens":1}}"#,
        ] {
            assert!(!agrees(text), "{text}");
        }
    }

    /// Every member value of every sample, at every depth, replaced by values of
    /// other shapes, and every member written twice: where the view takes the
    /// text, it reads what the tree reads; where it does not, the caller uses the
    /// tree.
    #[test]
    fn odd_shapes_are_read_as_the_tree_reads_them_or_left_to_it() {
        const ODD: [&str; 14] = [
            "null",
            "0",
            "7",
            "-1",
            "1.5",
            "1e400",
            "18446744073709551616",
            "\"\"",
            "\"x\"",
            "true",
            "[]",
            "[1, 2]",
            "{}",
            r#"{"cached_tokens": 2, "index": 3}"#,
        ];
        let mut taken = 0;
        let mut left = 0;
        for sample in SAMPLES {
            let tree: Value = serde_json::from_str(sample).unwrap();
            let mut pointers = Vec::new();
            collect_pointers(&tree, String::new(), &mut pointers);
            for pointer in &pointers {
                for odd in ODD {
                    let Ok(odd) = serde_json::from_str::<Value>(odd) else {
                        continue; // 1e400: not JSON the tree takes
                    };
                    let mut changed = tree.clone();
                    *changed.pointer_mut(pointer).unwrap() = odd;
                    let text = serde_json::to_string(&changed).unwrap();
                    if agrees(&text) {
                        taken += 1;
                    } else {
                        left += 1;
                    }
                }
            }
            // Each object member written twice (the tree keeps the second).
            for (at, _) in sample.match_indices("\":") {
                let key_start = sample[..at].rfind('"').unwrap();
                let value_end = value_end(sample, at + 2);
                let member = &sample[key_start..value_end];
                let text = format!("{}{member},{}", &sample[..key_start], &sample[key_start..]);
                if serde_json::from_str::<Value>(&text).is_ok() && agrees(&text) {
                    taken += 1;
                }
            }
        }
        assert!(taken > 100 && left > 100, "{taken} taken, {left} left");
    }

    fn collect_pointers(value: &Value, at: String, out: &mut Vec<String>) {
        if !at.is_empty() {
            out.push(at.clone());
        }
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    collect_pointers(
                        v,
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        out,
                    );
                }
            }
            Value::Array(list) => {
                for (i, v) in list.iter().enumerate() {
                    collect_pointers(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    /// Where the JSON value starting at `start` ends (the text is valid JSON).
    fn value_end(text: &str, start: usize) -> usize {
        let mut de =
            serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde::de::IgnoredAny>();
        de.next();
        start + de.byte_offset()
    }

    #[test]
    fn text_chunks_read_by_comparison_read_as_walked() {
        let templates = [
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt","choices":[{"index":0,"delta":{"content":"@"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"content":"@"},"finish_reason":null}],"model":"m-after","id":"id-after"}"#,
            r#"{"id":null,"choices":[{"delta":{"role":"assistant","content":"@","reasoning":""}}],"usage":null}"#,
            r#"{"id":"a\u0062c","choices":[{"delta":{"content":"@"}}]}"#,
        ];
        let compared = crate::json_scan::check_string_memo_reader(
            &templates,
            &["\"}],\"usage\":{\"prompt_tokens\":1},\"x\":[{"],
            |reader: &mut ChunkReader, text| format!("{:?}", reader.read(text)),
            |text| format!("{:?}", Chunk::from_text(text)),
            |reader, text| reader.last.string_span(text).is_some(),
        );
        assert!(compared > 150, "{compared}");
    }

    #[test]
    fn event_types_are_read_off_the_front_or_found() {
        for (text, kind) in [
            (
                r#"{"type":"content_block_delta","index":0}"#,
                Some("content_block_delta"),
            ),
            (r#"{ "type": "ping"}"#, Some("ping")),
            (r#"{"index":0,"type":"message_stop"}"#, Some("message_stop")),
            (r#"{"type":"a\"b"}"#, Some("a\"b")),
            (r#"{"type":"message_stopped"}"#, Some("message_stopped")),
            (r#"{"type":"ping","x":"y"}"#, Some("ping")),
            (r#"{"type":"pin"}"#, Some("pin")),
            (r#"{"type":"error\n"}"#, Some("error\n")),
            (r#"{"type":"\u0070ing"}"#, Some("ping")),
            (r#"{"type":7}"#, None),
            (r#"{"other":1}"#, None),
            ("{\"type\":\"a\u{1}b\"}", None),
        ] {
            assert_eq!(event_type(text.as_bytes()).as_deref(), kind, "{text}");
            let slow = member_str(text, "type");
            assert_eq!(event_type(text.as_bytes()), slow, "{text}");
        }
    }
}
