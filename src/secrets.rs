//! Keeping secrets out of answers and logs.
//!
//! Upstreams sometimes echo what they were sent (a provider's "Incorrect API key
//! provided: sk-...", a relay's debug output). Every error that reaches a client or
//! a log passes through a [`Redactor`] holding the configured secrets (provider keys,
//! client keys, the encryption key, static header values), which replaces any of
//! them with `***`.

use crate::config::{Config, ConnectionSpec};
use crate::error::ApiError;

/// Shorter values are not treated as secrets: replacing them would mangle ordinary
/// text, and they are too short to be real credentials.
const MIN_SECRET_LEN: usize = 6;

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// Every secret the config holds.
    pub fn from_config(config: &Config) -> Self {
        let mut secrets = vec![config.settings.encryption_key.clone()];
        for group in config.settings.groups.values() {
            secrets.extend(group.api_keys.iter().cloned());
        }
        for spec in config.connections.values() {
            if let ConnectionSpec::Provider(settings) = spec {
                secrets.extend(settings.api_key.iter().cloned());
                secrets.extend(settings.http_headers.values().cloned());
                collect_strings(
                    &serde_json::Value::Object(settings.options.clone()),
                    &mut secrets,
                );
            }
        }
        Redactor::new(secrets)
    }

    pub fn redact_text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }

    /// The error with every secret removed from its message and details.
    pub fn redact(&self, error: ApiError) -> ApiError {
        if self.secrets.is_empty() {
            return error;
        }
        match error {
            ApiError::InvalidRequest {
                message,
                param,
                code,
            } => ApiError::InvalidRequest {
                message: self.redact_text(&message),
                param,
                code,
            },
            ApiError::UpstreamRejected(mut body) => {
                body.message = self.redact_text(&body.message);
                ApiError::UpstreamRejected(body)
            }
            ApiError::Custom(mut body) => {
                body.message = self.redact_text(&body.message);
                ApiError::Custom(body)
            }
            ApiError::UpstreamFailure { detail } => ApiError::UpstreamFailure {
                detail: self.redact_text(&detail),
            },
            ApiError::UpstreamTimeout { detail } => ApiError::UpstreamTimeout {
                detail: self.redact_text(&detail),
            },
            ApiError::Internal { detail } => ApiError::Internal {
                detail: self.redact_text(&detail),
            },
            other => other,
        }
    }
}

/// Provider-specific settings may hold credentials too (e.g. inline service-account
/// JSON); every string among them is treated as a potential secret.
fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_everywhere() {
        let r = Redactor::new([
            "sk-abcdef123".to_owned(),
            "key".to_owned(),
            "sk-abcdef123456".to_owned(),
        ]);
        assert_eq!(
            r.redact_text("bad key sk-abcdef123456 and sk-abcdef123"),
            "bad key *** and ***"
        );
        let err = r.redact(ApiError::upstream_failure("echo: sk-abcdef123"));
        assert_eq!(err.to_string(), "upstream failure: echo: ***");
    }
}
