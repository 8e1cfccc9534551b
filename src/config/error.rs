//! The startup error of the config layer: one line naming the file, the key and the problem.

use std::fmt;
use std::path::{Path, PathBuf};

/// A config mistake that stops startup. Rendered on one line as
/// `<file>: <key>: <problem>` so that the user can go straight to the spot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the offending key (`connections.openai.api_key`); empty when
    /// the problem concerns the whole file.
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(file: &Path, key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            problem: one_line(&problem.into()),
        }
    }
}

/// Collapse a multi-line parser message (toml and yaml print code frames) to one line.
fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}
