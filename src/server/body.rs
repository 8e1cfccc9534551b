//! Request bodies: read within the size limit, the body timeout and the server's
//! memory budget for bodies in flight, or left unread when a request is refused.
//!
//! A body is read only once the request may be served (the key was checked), so
//! that unauthenticated clients cannot make the gateway hold their uploads. A
//! declared `Content-Length` over the limit is refused before anything is read,
//! which also means no `100 Continue` is sent for it (hyper sends that only when the
//! body is first polled).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use bytes::BytesMut;
use http_body_util::BodyExt;

use crate::error::{ApiError, ErrorBody};
use crate::shard::{lock, Sharded};

/// Largest body of a refused HTTP/1 request that is read and dropped so that its
/// connection can be reused; larger ones are left unread and the connection closes.
pub const REFUSED_BODY_DRAIN_BYTES: u64 = 64 * 1024;
/// How long such a body may take to arrive.
pub const REFUSED_BODY_DRAIN_TIME: Duration = Duration::from_secs(1);

/// The request body bytes held by one server's requests, counted against
/// `limits.max_body_memory_mb`.
///
/// Every request with a body takes from this budget and gives back, on whichever
/// serving thread it runs: one counter for all of them would be memory that every
/// thread writes twice a request. So bytes are taken from the cap ahead, a little
/// more than a small body needs, and kept as a thread's spare ([`SPARE`]); the
/// thread's next small bodies take from its spare, and what a body gives back goes
/// to the spare of the thread that frees it (beyond twice [`SPARE`], back to the
/// cap). Spare bytes count against the cap, so before a body is refused every
/// thread's spare goes back to it and the body is tried again: a body is refused
/// only when the bodies held leave no room for it.
pub struct BodyBudget {
    /// Bytes taken from the cap: held by bodies, or spare.
    taken: AtomicUsize,
    /// Per serving thread ([`crate::shard`]): bytes taken and held by no body.
    spare: Sharded<Mutex<usize>>,
}

/// A thread's spare: a few requests' bodies (chat requests are a few KiB).
const SPARE: usize = 64 * 1024;

impl std::fmt::Debug for BodyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyBudget")
            .field("held", &self.held())
            .finish()
    }
}

impl Default for BodyBudget {
    fn default() -> Self {
        BodyBudget {
            taken: AtomicUsize::new(0),
            spare: Sharded::new(|| Mutex::new(0)),
        }
    }
}

impl BodyBudget {
    /// Bytes held by bodies now: exact while no body is being taken or given back
    /// (a spare being made may count as held for that moment).
    pub fn held(&self) -> usize {
        // Every spare locked at once: bytes moving between a spare and the cap are
        // seen on one side.
        let spares: Vec<MutexGuard<'_, usize>> = self.spare.iter().map(lock).collect();
        let spare: usize = spares.iter().map(|s| **s).sum();
        self.taken.load(Ordering::Acquire).saturating_sub(spare)
    }

    fn reserve(&self, bytes: usize, cap: usize) -> Option<Reservation<'_>> {
        let mut reservation = Reservation {
            budget: self,
            bytes: 0,
        };
        reservation.grow(bytes, cap).then_some(reservation)
    }

    /// Take `bytes` for a body: from this thread's spare, else from the cap (with
    /// a new spare when the body is small and there is room).
    fn take(&self, bytes: usize, cap: usize) -> bool {
        {
            let mut spare = lock(self.spare.local());
            if *spare >= bytes {
                *spare -= bytes;
                return true;
            }
        }
        if bytes <= SPARE && self.take_from_cap(bytes + SPARE, cap) {
            *lock(self.spare.local()) += SPARE;
            return true;
        }
        if self.take_from_cap(bytes, cap) {
            return true;
        }
        // Refused only if the bodies held leave no room: spares back to the cap.
        for spare in self.spare.iter() {
            let mut spare = lock(spare);
            self.taken.fetch_sub(*spare, Ordering::AcqRel);
            *spare = 0;
        }
        self.take_from_cap(bytes, cap)
    }

    /// Taken from the cap only if it fits: an add that went over and was taken back
    /// would, for that moment, make other requests' small reservations fail too
    /// (under a flood of large declared bodies, ordinary requests got 503).
    fn take_from_cap(&self, bytes: usize, cap: usize) -> bool {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                taken.checked_add(bytes).filter(|&total| total <= cap)
            })
            .is_ok()
    }

    /// A body's bytes given back: to this thread's spare, and past twice [`SPARE`]
    /// to the cap.
    fn give_back(&self, bytes: usize) {
        let mut spare = lock(self.spare.local());
        *spare += bytes;
        if *spare > 2 * SPARE {
            self.taken.fetch_sub(*spare - SPARE, Ordering::AcqRel);
            *spare = SPARE;
        }
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
        let added = self.budget.take(extra, cap);
        if added {
            self.bytes += extra;
        }
        added
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
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

    /// Runs `work` on a thread that uses shard `index`.
    fn on_shard<T: Send>(index: usize, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    crate::shard::set_thread_shard(index);
                    work()
                })
                .join()
                .unwrap()
        })
    }

    /// Small bodies take from their thread's spare without writing the shared
    /// count; spare bytes never make a body that fits be refused; what is given
    /// back past twice the spare returns to the cap.
    #[test]
    fn spares_serve_small_bodies_and_never_refuse_one_that_fits() {
        let budget = BodyBudget::default();
        let cap = 3 * SPARE;
        let taken = || budget.taken.load(Ordering::Acquire);
        on_shard(1, || {
            let first = budget.reserve(1000, cap).unwrap();
            assert_eq!((budget.held(), taken()), (1000, 1000 + SPARE));
            let second = budget.reserve(1000, cap).unwrap();
            assert_eq!(
                (budget.held(), taken()),
                (2000, 1000 + SPARE),
                "from the spare"
            );
            drop((first, second));
        });
        assert_eq!((budget.held(), taken()), (0, 1000 + SPARE), "a spare kept");
        // Another thread asks for the whole cap: the idle spare goes back for it.
        on_shard(2, || {
            let all = budget.reserve(cap, cap).expect("nothing is held");
            assert_eq!(budget.held(), cap);
            assert!(budget.reserve(1, cap).is_none(), "the cap is held whole");
            drop(all);
        });
        // Given back on thread 2: past twice the spare, the rest went to the cap.
        assert_eq!((budget.held(), taken()), (0, SPARE));
        on_shard(2, || assert!(budget.reserve(cap, cap).is_some()));
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
