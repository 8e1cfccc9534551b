//! `lm_proxy.loggers.log_writers.JsonLogWriter(file_name)`: one JSON object per
//! line, appended; parent folders are created. Opened at startup so that an
//! unwritable path stops the server there, not on the first request.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

use super::LogWriter;

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
    async fn write(&self, entry: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}
