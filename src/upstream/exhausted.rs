//! An upstream connection that could not be opened because this machine ran out of
//! something (file descriptors, socket memory, local ports): the upstream is not at
//! fault and may be fine, so the client gets 503 with `Retry-After` and a message
//! that names the cause, not the 502 of a failed upstream; the operator gets one
//! log line per second at most, saying what to change.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};

use super::UpstreamError;
use crate::error::{ApiError, ErrorBody};
use crate::logging::throttle::Throttled;

/// What ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// EMFILE, ENFILE.
    Descriptors,
    /// ENOMEM, ENOBUFS.
    Memory,
    /// EADDRNOTAVAIL on connect: no ephemeral port free.
    Ports,
}

impl Cause {
    const ALL: [Cause; 3] = [Cause::Descriptors, Cause::Memory, Cause::Ports];

    /// The `cause` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Descriptors => "descriptors",
            Cause::Memory => "memory",
            Cause::Ports => "ports",
        }
    }

    /// The `code` of the client's error.
    fn code(self) -> &'static str {
        match self {
            Cause::Descriptors => "gateway_out_of_file_descriptors",
            Cause::Memory => "gateway_out_of_memory",
            Cause::Ports => "gateway_out_of_local_ports",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Cause::Descriptors => "file descriptors",
            Cause::Memory => "socket memory",
            Cause::Ports => "local ports",
        }
    }

    fn remedy(self) -> &'static str {
        match self {
            Cause::Descriptors => {
                "raise the hard open-files limit (ulimit -Hn, systemd LimitNOFILE) or lower \
                 limits.max_connections"
            }
            Cause::Memory => "the machine is short of memory; lower limits.max_connections",
            Cause::Ports => {
                "too many upstream connections from one address; widen \
                 net.ipv4.ip_local_port_range or lower limits.max_connections"
            }
        }
    }

    /// Classify an OS error.
    pub fn of(e: &std::io::Error) -> Option<Cause> {
        match e.raw_os_error()? {
            libc::EMFILE | libc::ENFILE => Some(Cause::Descriptors),
            libc::ENOMEM | libc::ENOBUFS => Some(Cause::Memory),
            libc::EADDRNOTAVAIL => Some(Cause::Ports),
            _ => None,
        }
    }

    /// The cause of an error answered by [`answer`], from its `code`.
    pub fn of_answer(error: &ApiError) -> Option<Cause> {
        let ApiError::Custom(body) = error else {
            return None;
        };
        let code = body.code.as_deref()?;
        Cause::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// Upstream connects refused for lack of a local resource: one line per second.
static LOG: Throttled = Throttled::new(Duration::from_secs(1));

/// The 503 for a connect that failed for lack of a local resource, or `None` when
/// `error` is something else. Logs the cause (rate-limited).
pub(super) fn answer(error: &UpstreamError) -> Option<ApiError> {
    let (cause, os_error) = local_cause(error)?;
    LOG.warn(|| {
        format!(
            "cannot open upstream connections: out of {} ({os_error}); requests that need a \
             new upstream connection are answered 503 until some close; {}",
            cause.what(),
            cause.remedy()
        )
    });
    let body = ErrorBody::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "The gateway has run out of {} and cannot open a connection to the upstream \
             now; retry shortly.",
            cause.what()
        ),
        "server_error",
    )
    .code(Some(cause.code().into()))
    .header(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Some(ApiError::Custom(Box::new(body)))
}

/// The cause and the OS error's own text (no address in it), for connect failures.
fn local_cause(error: &UpstreamError) -> Option<(Cause, String)> {
    let found = |e: &std::io::Error| Cause::of(e).map(|c| (c, e.to_string()));
    match error {
        UpstreamError::Connect(e) => found(e),
        // reqwest (https, proxies): the OS error is somewhere in the chain.
        UpstreamError::Reqwest(e) if e.is_connect() => {
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                if let Some(cause) = s.downcast_ref::<std::io::Error>().and_then(found) {
                    return Some(cause);
                }
                source = s.source();
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_exhaustion_is_a_503_naming_the_cause() {
        for (errno, cause) in [
            (libc::EMFILE, Cause::Descriptors),
            (libc::ENFILE, Cause::Descriptors),
            (libc::ENOBUFS, Cause::Memory),
            (libc::EADDRNOTAVAIL, Cause::Ports),
        ] {
            let error =
                UpstreamError::Connect(std::io::Error::from_raw_os_error(errno)).into_api_error();
            assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(Cause::of_answer(&error), Some(cause));
            let body = error.envelope();
            assert_eq!(body["error"]["code"], cause.code());
            assert_eq!(body["error"]["type"], "server_error");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(cause.what()), "{message}");
        }
        // Any other connect failure stays the upstream's 502.
        let refused = UpstreamError::Connect(std::io::Error::from_raw_os_error(libc::ECONNREFUSED))
            .into_api_error();
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(Cause::of_answer(&refused), None);
    }
}
