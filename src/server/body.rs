//! Request bodies: read within the size limit, the body timeout and the server's
//! memory budget for bodies in flight, or left unread when a request is refused.
//!
//! A body is read only once the request may be served (the key was checked), so
//! that unauthenticated clients cannot make the gateway hold their uploads. A
//! declared `Content-Length` over the limit is refused before anything is read,
//! which also means no `100 Continue` is sent for it (hyper sends that only when the
//! body is first polled).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use bytes::BytesMut;
use http_body_util::BodyExt;

use crate::error::{ApiError, ErrorBody};

/// Largest body of a refused HTTP/1 request that is read and dropped so that its
/// connection can be reused; larger ones are left unread and the connection closes.
pub const REFUSED_BODY_DRAIN_BYTES: u64 = 64 * 1024;
/// How long such a body may take to arrive.
pub const REFUSED_BODY_DRAIN_TIME: Duration = Duration::from_secs(1);

/// The request body bytes held by one server's requests, counted against
/// `limits.max_body_memory_mb`.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicUsize,
}

impl BodyBudget {
    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: usize, cap: usize) -> Option<Reservation<'_>> {
        let mut reservation = Reservation {
            budget: self,
            bytes: 0,
        };
        reservation.grow(bytes, cap).then_some(reservation)
    }
}

/// Bytes of the budget held by one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a BodyBudget,
    bytes: usize,
}

impl Reservation<'_> {
    fn grow(&mut self, extra: usize, cap: usize) -> bool {
        if extra == 0 {
            return true;
        }
        // Added only if it fits: an add that went over and was taken back would,
        // for that moment, make other requests' small reservations fail too (under
        // a flood of large declared bodies, ordinary requests got 503).
        let added = self
            .budget
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(extra).filter(|&total| total <= cap)
            })
            .is_ok();
        if added {
            self.bytes += extra;
        }
        added
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// What a body read may take.
#[derive(Clone, Copy, Debug)]
pub struct BodyRules {
    /// Largest body (`max_request_body_mb`).
    pub limit: usize,
    /// Time to receive it (`limits.body_timeout_seconds`).
    pub timeout: Duration,
    /// The budget's cap (`limits.max_body_memory_mb`).
    pub memory: usize,
}

/// The declared `Content-Length`, if any and readable (hyper refuses bad ones).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Read a body within `rules`. The bytes are returned with the budget they hold,
/// which the caller keeps until it no longer needs them.
pub async fn read<'a>(
    body: Body,
    headers: &HeaderMap,
    rules: BodyRules,
    budget: &'a BodyBudget,
) -> Result<(Bytes, Reservation<'a>), ApiError> {
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > rules.limit as u64) {
        return Err(ApiError::RequestTooLarge {
            limit_bytes: rules.limit,
        });
    }
    let declared = declared.unwrap_or(0) as usize;
    let mut reservation = budget.reserve(declared, rules.memory).ok_or_else(busy)?;
    let bytes = {
        let mut read = std::pin::pin!(collect(body, declared, rules, &mut reservation));
        // A body that has already arrived (most of them) is read without arming a timer.
        match futures_util::poll!(read.as_mut()) {
            Poll::Ready(result) => result?,
            Poll::Pending => tokio::time::timeout(rules.timeout, read)
                .await
                .map_err(|_| body_timeout(rules.timeout))??,
        }
    };
    Ok((bytes, reservation))
}

async fn collect(
    mut body: Body,
    declared: usize,
    rules: BodyRules,
    reservation: &mut Reservation<'_>,
) -> Result<Bytes, ApiError> {
    // One frame is kept as it came (no copy); more are gathered into one buffer.
    let mut first: Option<Bytes> = None;
    let mut gathered: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::invalid_request(format!("could not read the request body: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > rules.limit {
            return Err(ApiError::RequestTooLarge {
                limit_bytes: rules.limit,
            });
        }
        if total > reservation.bytes && !reservation.grow(total - reservation.bytes, rules.memory) {
            return Err(busy());
        }
        match (&mut first, &mut gathered) {
            (None, None) => first = Some(data),
            (Some(_), None) => {
                let mut buffer = BytesMut::with_capacity(declared.max(total));
                buffer.extend_from_slice(&first.take().expect("first frame kept"));
                buffer.extend_from_slice(&data);
                gathered = Some(buffer);
            }
            (_, Some(buffer)) => buffer.extend_from_slice(&data),
        }
    }
    Ok(match gathered {
        Some(buffer) => buffer.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// A request refused before its body was read: on HTTP/1, a small body that is
/// (about to be) there is read and dropped, within a tight bound, so that the
/// connection stays usable; anything else is left unread, and hyper closes the
/// connection after the answer rather than wait for it. Never with
/// `Expect: 100-continue`: reading would invite the client to send it.
pub async fn discard_refused(body: Body, headers: &HeaderMap, version: Version, timeout: Duration) {
    let small = declared_length(headers).is_some_and(|n| n <= REFUSED_BODY_DRAIN_BYTES);
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if version >= Version::HTTP_2 || !small || expects_continue {
        return;
    }
    let drain = async {
        let mut body = body;
        while let Some(Ok(_)) = body.frame().await {}
    };
    let _ = tokio::time::timeout(timeout.min(REFUSED_BODY_DRAIN_TIME), drain).await;
}

fn busy() -> ApiError {
    ApiError::Custom(Box::new(
        ErrorBody::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway is receiving too many request bodies at once \
             (limits.max_body_memory_mb); retry shortly.",
            "server_error",
        )
        .code(Some("server_busy".into()))
        .header(header::RETRY_AFTER, HeaderValue::from_static("1")),
    ))
}

fn body_timeout(timeout: Duration) -> ApiError {
    ApiError::Custom(Box::new(
        ErrorBody::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "The request body was not received within {} s \
                 (limits.body_timeout_seconds).",
                timeout.as_secs_f64()
            ),
            "invalid_request_error",
        )
        .code(Some("request_timeout".into()))
        .header(header::CONNECTION, HeaderValue::from_static("close")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(limit: usize, memory: usize) -> BodyRules {
        BodyRules {
            limit,
            timeout: Duration::from_secs(5),
            memory,
        }
    }

    #[tokio::test]
    async fn budget_is_held_while_the_bytes_are_and_refuses_over_it() {
        let budget = BodyBudget::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        let (bytes, held) = read(Body::from("abcdef"), &headers, rules(100, 10), &budget)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"abcdef");
        assert_eq!(budget.held(), 6);
        // Another 6 would go over 10: refused before reading.
        let err = read(Body::from("ghijkl"), &headers, rules(100, 10), &budget)
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert_eq!(budget.held(), 0);
        // Without a declared length the budget is taken as bytes arrive.
        let chunks = futures_util::stream::iter(
            ["abcd", "efgh", "ijkl"]
                .map(|s| Ok::<_, std::io::Error>(Bytes::from_static(s.as_bytes()))),
        );
        let err = read(
            Body::from_stream(chunks),
            &HeaderMap::new(),
            rules(100, 10),
            &budget,
        )
        .await
        .unwrap_err();
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused_unread() {
        let budget = BodyBudget::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("101"));
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let err = read(never, &headers, rules(100, 1000), &budget)
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out() {
        let budget = BodyBudget::default();
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let err = read(never, &HeaderMap::new(), rules(100, 1000), &budget)
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
    }
}
