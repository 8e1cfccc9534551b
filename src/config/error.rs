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
            problem: strip_userinfo(&one_line(&problem.into())),
        }
    }
}

/// Replace the user info of every URL in `text` (`https://user:password@host`) with
/// `***`: a config error may quote a URL (an `api_base` that does not parse), and
/// its password must not reach the terminal or the log.
pub(crate) fn strip_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        // The authority ends at the first '/'; a password may hold a '/' too, so an
        // '@' up to the query, the fragment, a quote or whitespace counts (at worst a
        // path with an '@' is masked as well).
        let end = rest
            .find(|c: char| matches!(c, '?' | '#' | '\'' | '"' | '`') || c.is_whitespace())
            .unwrap_or(rest.len());
        match rest[..end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***");
                rest = &rest[userinfo_end..];
            }
            None => {
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            }
        }
    }
    out.push_str(rest);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_removed_from_urls() {
        assert_eq!(
            strip_userinfo("'htp://bob:s3cret@example.com:8/v1' is not an http(s) URL"),
            "'htp://***@example.com:8/v1' is not an http(s) URL"
        );
        assert_eq!(
            strip_userinfo("a http://h/x?u=a@b and ftp://p@q"),
            "a http://h/x?u=a@b and ftp://***@q"
        );
        assert_eq!(strip_userinfo("http://u:p/w@h/v1"), "http://***@h/v1");
        let err = ConfigError::new(std::path::Path::new("c.toml"), "k", "x http://u:pw@h");
        assert_eq!(err.to_string(), "c.toml: k: x http://***@h");
    }
}
