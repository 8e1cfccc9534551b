//! The `[limits]` table: how long clients may take and how much they may hold.
//!
//! Timeouts and connection caps are read when the server starts (a reload keeps
//! them); `max_body_memory_mb` is reread with each reload. Every value has a
//! default, so a config without the table gets the documented protection.

use serde::Deserialize;

use super::lenient;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// From accepting a connection (TLS handshake included) to a complete request
    /// head, and from the first byte of each later request on a kept-alive
    /// connection to its complete head. A silent or slowloris connection is closed.
    #[serde(default = "default_header_timeout", deserialize_with = "positive")]
    pub header_timeout_seconds: f64,
    /// Time to receive a whole request body, from the request head on. Over it: 408.
    #[serde(default = "default_body_timeout", deserialize_with = "positive")]
    pub body_timeout_seconds: f64,
    /// How long a connection with no request in progress (an HTTP/1 keep-alive
    /// connection between requests, an HTTP/2 connection with no open stream) is kept.
    #[serde(default = "default_idle_timeout", deserialize_with = "positive")]
    pub idle_timeout_seconds: f64,
    /// Most client connections open at once, over all serving threads. 0: derived from
    /// the file descriptor limit (half of it less 64, as each active client connection
    /// also needs an upstream connection). At the cap, idle connections are closed to
    /// make room; without idle ones, new connections wait in the listen backlog.
    #[serde(default, deserialize_with = "count")]
    pub max_connections: u64,
    /// Total size of request bodies being received or held for parsing at once, in
    /// MiB. A request that would go over it gets 503 `server_busy` at once.
    #[serde(default = "default_body_memory", deserialize_with = "positive")]
    pub max_body_memory_mb: f64,
    /// HTTP/2 keep-alive PING interval, in seconds (0: none); an unanswered PING
    /// closes the connection after `http2_keepalive_timeout_seconds`.
    #[serde(default = "default_h2_interval", deserialize_with = "lenient::f64")]
    pub http2_keepalive_interval_seconds: f64,
    #[serde(default = "default_h2_timeout", deserialize_with = "positive")]
    pub http2_keepalive_timeout_seconds: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout_seconds: default_header_timeout(),
            body_timeout_seconds: default_body_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            max_connections: 0,
            max_body_memory_mb: default_body_memory(),
            http2_keepalive_interval_seconds: default_h2_interval(),
            http2_keepalive_timeout_seconds: default_h2_timeout(),
        }
    }
}

impl Limits {
    pub fn header_timeout(&self) -> std::time::Duration {
        seconds(self.header_timeout_seconds)
    }
    pub fn body_timeout(&self) -> std::time::Duration {
        seconds(self.body_timeout_seconds)
    }
    pub fn idle_timeout(&self) -> std::time::Duration {
        seconds(self.idle_timeout_seconds)
    }
    pub fn http2_keepalive_interval(&self) -> Option<std::time::Duration> {
        (self.http2_keepalive_interval_seconds > 0.0)
            .then(|| seconds(self.http2_keepalive_interval_seconds))
    }
    pub fn http2_keepalive_timeout(&self) -> std::time::Duration {
        seconds(self.http2_keepalive_timeout_seconds)
    }
    /// Cross-checks with the rest of the config: the body budget must hold at least
    /// one body of the largest size allowed.
    pub fn check(
        &self,
        max_request_body_mb: f64,
        path: &std::path::Path,
    ) -> Result<(), super::ConfigError> {
        if self.max_body_memory_mb < max_request_body_mb {
            return Err(super::ConfigError::new(
                path,
                "limits.max_body_memory_mb",
                format!(
                    "must be at least max_request_body_mb ({max_request_body_mb}), or no \
                     body of the largest allowed size could ever be received"
                ),
            ));
        }
        Ok(())
    }

    /// The settings read only at startup (all but the body timeout and budget).
    pub fn same_connection_settings(&self, other: &Limits) -> bool {
        self.header_timeout_seconds == other.header_timeout_seconds
            && self.idle_timeout_seconds == other.idle_timeout_seconds
            && self.max_connections == other.max_connections
            && self.http2_keepalive_interval_seconds == other.http2_keepalive_interval_seconds
            && self.http2_keepalive_timeout_seconds == other.http2_keepalive_timeout_seconds
    }

    /// `max_body_memory_mb` in bytes.
    pub fn body_memory_bytes(&self) -> usize {
        (self.max_body_memory_mb * 1024.0 * 1024.0) as usize
    }
}

/// Seconds as a duration, capped at a day (a larger value means "practically never"
/// and must not overflow deadline arithmetic).
fn seconds(value: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(value.min(86_400.0))
}

fn default_header_timeout() -> f64 {
    10.0
}
fn default_body_timeout() -> f64 {
    60.0
}
fn default_idle_timeout() -> f64 {
    60.0
}
fn default_body_memory() -> f64 {
    256.0
}
fn default_h2_interval() -> f64 {
    30.0
}
fn default_h2_timeout() -> f64 {
    20.0
}

/// A number above zero (a zero timeout or budget would refuse every client).
fn positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = lenient::f64(d)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(serde::de::Error::custom("expected a number above 0"))
    }
}

fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = lenient::f64(d)?;
    if value.fract() == 0.0 {
        Ok(value as u64)
    } else {
        Err(serde::de::Error::custom("expected a whole number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_strings() {
        let limits: Limits = serde_json::from_str("{}").unwrap();
        assert_eq!(limits.header_timeout_seconds, 10.0);
        assert_eq!(limits.body_timeout_seconds, 60.0);
        assert_eq!(limits.idle_timeout_seconds, 60.0);
        assert_eq!(limits.max_connections, 0);
        assert_eq!(limits.body_memory_bytes(), 256 << 20);
        let limits: Limits =
            serde_json::from_str(r#"{"header_timeout_seconds": "0.5", "max_connections": "100"}"#)
                .unwrap();
        assert_eq!(
            limits.header_timeout(),
            std::time::Duration::from_millis(500)
        );
        assert_eq!(limits.max_connections, 100);
        for bad in [
            r#"{"header_timeout_seconds": 0}"#,
            r#"{"max_connections": 1.5}"#,
            r#"{"idle_timeout": 5}"#,
        ] {
            assert!(serde_json::from_str::<Limits>(bad).is_err(), "{bad}");
        }
    }
}
