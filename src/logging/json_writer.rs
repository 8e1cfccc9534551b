//! `lm_proxy.loggers.log_writers.JsonLogWriter(file_name)`: one JSON object per
//! line, appended; parent folders are created. Opened at startup so that an
//! unwritable path stops the server there, not on the first request.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::{answer_text, FieldKind, FieldKinds, LogWriter};

pub struct JsonLogWriter {
    // Only the logging task writes; the mutex is never contended.
    file: Mutex<BufWriter<File>>,
}

impl JsonLogWriter {
    pub fn open(file_name: &str) -> std::io::Result<JsonLogWriter> {
        let path = Path::new(file_name);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonLogWriter {
            file: Mutex::new(BufWriter::new(file)),
        })
    }
}

#[async_trait::async_trait]
impl LogWriter for JsonLogWriter {
    async fn write(&self, entry: &Value, kinds: &FieldKinds) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&Rendered { entry, kinds })?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// An entry as the reference's `JsonLogWriter` wrote it: `json.dumps` of the
/// reference's context wrote the answer (microcore's `LLMResponse`, a `str`) as its
/// text. Serialized in place: the entry is not copied.
struct Rendered<'a> {
    entry: &'a Value,
    kinds: &'a FieldKinds,
}

impl Serialize for Rendered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(map) = self.entry else {
            return self.entry.serialize(serializer);
        };
        let mut out = serializer.serialize_map(Some(map.len()))?;
        for (key, value) in map {
            let kind = self
                .kinds
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, kind)| kind);
            match (kind, value) {
                (Some(FieldKind::Response), Value::Object(_)) => {
                    out.serialize_entry(key, &answer_text(value))?
                }
                _ => out.serialize_entry(key, value)?,
            }
        }
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::{BaseLogger, EntryTransformer, Logger};
    use serde_json::json;
    use std::sync::Arc;

    fn completion() -> Value {
        json!({
            "id": "chatcmpl-1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "the answer"}}],
            "usage": {"completion_tokens": 2}
        })
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// As the reference's `json.dumps` of its context: the answer is its text, also
    /// when a transformer maps `response` itself; paths into it reach the completion.
    #[tokio::test]
    async fn the_answer_is_written_as_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let (whole, mapped) = (dir.path().join("whole"), dir.path().join("mapped"));
        let context = json!({
            "id": "x", "response": completion(), "created_at": "2026-01-01T00:00:00Z",
            "user_info": {}, "extra": {"response": {"kept": true}}
        });
        let writer = |p: &Path| Arc::new(JsonLogWriter::open(p.to_str().unwrap()).unwrap());
        let plain = BaseLogger::new(writer(&whole), None);
        let kwargs = json!({"answer": "response", "tokens": "response.usage.completion_tokens", "raw": "extra.response"});
        let transformer = EntryTransformer::from_kwargs(kwargs.as_object().unwrap()).unwrap();
        let with_transformer = BaseLogger::new(writer(&mapped), Some(transformer));
        for logger in [&plain, &with_transformer] {
            logger.log(&context).await.unwrap();
            logger
                .log(&json!({"id": "failed", "response": null}))
                .await
                .unwrap();
            logger.flush().unwrap();
        }
        let whole = lines(&whole);
        assert_eq!(whole[0]["response"], "the answer");
        assert_eq!(whole[0]["extra"], json!({"response": {"kept": true}}));
        assert_eq!(whole[0]["created_at"], "2026-01-01T00:00:00Z");
        assert_eq!(whole[1]["response"], Value::Null);
        let mapped = lines(&mapped);
        assert_eq!(
            mapped[0],
            json!({"answer": "the answer", "tokens": 2, "raw": {"kept": true}})
        );
        assert_eq!(mapped[1]["answer"], Value::Null);
    }

    #[test]
    fn answer_text_is_choice_zero_content() {
        use crate::logging::answer_text;
        assert_eq!(answer_text(&completion()), "the answer");
        let parts = json!({"choices": [
            {"index": 1, "message": {"content": "other"}},
            {"index": 0, "message": {"content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"text": "b"}]}}
        ]});
        assert_eq!(answer_text(&parts), "ab");
        let tools = json!({"choices": [{"message": {"content": null, "tool_calls": []}}]});
        assert_eq!(answer_text(&tools), "");
        assert_eq!(answer_text(&json!({})), "");
        // An answer of the Anthropic door: its text blocks, not thinking or tool_use.
        let message = json!({"type": "message", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            {"type": "text", "text": " there"}
        ]});
        assert_eq!(answer_text(&message), "Hello there");
    }
}
