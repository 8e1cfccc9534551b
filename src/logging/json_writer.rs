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
            let kind = self.kinds.iter().find(|(k, _)| k == key).map(|(_, kind)| kind);
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
