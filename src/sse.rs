//! Reading an upstream's SSE body: the `data` of each event ([`EventData`]), with an
//! idle timeout between events. Every provider's stream goes through here.
//!
//! It follows the event-stream parser of the HTML standard (what `EventSource` does):
//! lines end with LF, CRLF or CR; a blank line dispatches the event; lines that start
//! with `:` are comments (keep-alives); a `data` field's value loses one leading
//! space and successive `data` lines are joined with LF; an event without data is
//! not dispatched; an event the body ends in the middle of is dropped; a leading
//! byte-order mark is skipped. The fields other than `data` (`event`, `id`, `retry`)
//! carry nothing a gateway passes on, so they are read past.
//!
//! Why it is written here rather than taken from a crate: it runs for every event of
//! every stream, and `eventsource-stream2` (what this replaced; the tests below
//! still compare the two on random bodies cut at random places) copies the whole
//! rest of its buffer for each line it reads and builds owned `event`/`id` strings
//! per event: about 1,850 instructions per 220-byte event against about 400 here
//! (bench/README.md). Reading, framing, the idle clock and the provider's reading of
//! each event ([`SseDataEvents::decode`]) are one poll function, with no adapter
//! streams between them, and an event that came in one piece of the body (the usual
//! case: upstreams write an event at a time) is handed on as a slice of that piece,
//! neither copied nor allocated.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};

use crate::error::ApiError;

/// UTF-8 byte-order mark, skipped at the start of a body.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The most bytes one event may take while it is being read (its unfinished line
/// plus the `data` gathered so far). An upstream that never ends its event (no
/// blank line, or no line end at all) would otherwise grow the buffer without
/// bound; past this the stream ends with an upstream error. A streamed chunk is a
/// few hundred bytes; even a whole answer in one event is far below this.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One event's data, trimmed: text known to be UTF-8, held as bytes so that it can
/// go to the client as a slice of what the upstream sent. Reads as a `str`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventData(Bytes);

impl EventData {
    /// `bytes` if they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Option<EventData> {
        crate::json_scan::utf8(&bytes)?;
        Some(EventData(bytes))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every way of making an `EventData` checks (or, from a `String`,
        // already has) UTF-8, and the bytes are never changed.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The bytes, shared (to keep them without a copy).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The data without surrounding white space (as `str::trim` has it), still
    /// sharing the bytes.
    fn trimmed(self) -> EventData {
        if plain_edges(&self.0) {
            return self;
        }
        let text = self.as_str();
        let trimmed = text.trim();
        if trimmed.len() == text.len() {
            return self;
        }
        let from = trimmed.as_ptr() as usize - text.as_ptr() as usize;
        EventData(self.0.slice(from..from + trimmed.len()))
    }
}

impl Deref for EventData {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for EventData {
    fn from(text: String) -> Self {
        EventData(Bytes::from(text))
    }
}

/// One event's data, trimmed, whose UTF-8 is left to the reader it goes to: for a
/// reader that checks it as part of its own reading ([`crate::payload::RawJson::stream_chunk`]
/// checks only the bytes that changed since the event before, a few in a text
/// chunk, where the SSE reader's check looked at all of them: about 100
/// instructions an event). Data whose first or last byte is not a printable ASCII
/// character is checked here whole, as it must be to be trimmed as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventBytes(Bytes);

impl EventBytes {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The data as [`EventData`], its UTF-8 checked by the caller.
    ///
    /// # Safety
    /// The bytes must be UTF-8 ([`EventData::as_str`] reads them unchecked).
    pub unsafe fn checked_by_caller(self) -> EventData {
        EventData(self.0)
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<String> for EventBytes {
    fn from(text: String) -> Self {
        EventBytes(Bytes::from(text))
    }
}

/// What an SSE reader hands on for each event: its data, trimmed, with UTF-8
/// checked ([`EventData`]) or left to the reader of it ([`EventBytes`]).
pub trait EventText: Sized {
    /// The event's data trimmed; `None` when it is found not to be UTF-8.
    fn read(data: Bytes) -> Option<Self>;
    fn data(&self) -> &[u8];
}

impl EventText for EventData {
    fn read(data: Bytes) -> Option<Self> {
        EventData::from_utf8(data).map(EventData::trimmed)
    }

    fn data(&self) -> &[u8] {
        &self.0
    }
}

impl EventText for EventBytes {
    fn read(data: Bytes) -> Option<Self> {
        if plain_edges(&data) {
            return Some(EventBytes(data));
        }
        EventData::read(data).map(|text| EventBytes(text.0))
    }

    fn data(&self) -> &[u8] {
        &self.0
    }
}

/// Whether `data`'s first and last bytes are printable ASCII: nothing to trim.
fn plain_edges(data: &[u8]) -> bool {
    let plain = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_graphic());
    plain(data.first()) && plain(data.last())
}

/// The failure of a stream with an event that is not UTF-8.
pub fn not_utf8() -> ApiError {
    ApiError::upstream_failure("upstream sent a stream event that is not UTF-8")
}

/// The `data` of each event of an upstream SSE body, trimmed, as written. Ends at
/// `[DONE]` (what is left of the body is then read in the background so that its
/// connection can be reused) or at the end of the body; events whose data is empty
/// or only whitespace are skipped. A failure (the body breaking off, an event that
/// is not UTF-8 or longer than [`MAX_EVENT_BYTES`], `idle_timeout` without an event)
/// is the stream's last item.
pub struct SseDataEvents<S, T = EventData> {
    /// `None` once the stream has ended.
    body: Option<Pin<Box<S>>>,
    /// The unread bytes while they are the end of one piece of the body: events
    /// wholly inside are handed on as slices of it. Empty while `joined` is not.
    piece: Bytes,
    /// The unread bytes once an event spans pieces: the rest of one piece and
    /// those after it, joined.
    joined: BytesMut,
    /// How far into the unread bytes is known to hold no line end: where the next
    /// search resumes, so a long line arriving in many pieces is searched once.
    scanned: usize,
    /// The `data` lines of the event being read, joined with LF (when they are
    /// not handed on as one slice).
    data: Vec<u8>,
    /// How many `data` lines that is (an empty one still makes an event).
    data_lines: usize,
    /// Whether the start of the body has been checked for a byte-order mark.
    bom_checked: bool,
    /// [`MAX_EVENT_BYTES`], smaller in tests.
    max_event: usize,
    idle: IdleClock,
    /// What each event's data is handed on as.
    text: PhantomData<fn() -> T>,
}

impl<S> SseDataEvents<S, EventData> {
    /// Each event's data checked to be UTF-8.
    pub fn new(body: S, idle_timeout: Duration) -> Self {
        Self::reading(body, idle_timeout)
    }
}

impl<S> SseDataEvents<S, EventBytes> {
    /// Each event's data with its UTF-8 left to the reader it goes to
    /// ([`EventBytes`]).
    pub fn unchecked(body: S, idle_timeout: Duration) -> Self {
        Self::reading(body, idle_timeout)
    }
}

impl<S, T> SseDataEvents<S, T> {
    fn reading(body: S, idle_timeout: Duration) -> Self {
        SseDataEvents {
            body: Some(Box::pin(body)),
            piece: Bytes::new(),
            joined: BytesMut::new(),
            scanned: 0,
            data: Vec::new(),
            data_lines: 0,
            bom_checked: false,
            max_event: MAX_EVENT_BYTES,
            idle: IdleClock::new(idle_timeout),
            text: PhantomData,
        }
    }

    /// Each event's data read by `decode` (a provider's reading of its events) in
    /// the same poll: the stream ends after the first error, `decode`'s included.
    pub fn decode<U, F>(self, decode: F) -> DecodedEvents<S, F, T>
    where
        F: FnMut(T) -> Result<U, ApiError>,
    {
        DecodedEvents {
            events: self,
            decode,
        }
    }

    fn unread(&self) -> &[u8] {
        unread(&self.piece, &self.joined)
    }

    /// Drop the first `n` unread bytes (framed). An emptied buffer lets go of its
    /// memory: a stream waiting for its next event holds none.
    fn consume(&mut self, n: usize) {
        if self.joined.is_empty() {
            if n == self.piece.len() {
                self.piece = Bytes::new();
            } else {
                self.piece.advance(n);
            }
        } else if n == self.joined.len() {
            self.joined = BytesMut::new();
        } else {
            self.joined.advance(n);
        }
        self.scanned = 0;
    }

    /// Bytes `from..to` of the unread ones, then everything up to `next` consumed.
    fn take_slice(&mut self, from: usize, to: usize, next: usize) -> Bytes {
        if self.joined.is_empty() {
            if next == self.piece.len() {
                // The piece's last event (its only one, when the upstream sends an
                // event at a time): the piece itself, cut down, rather than a slice
                // of it and then the piece dropped (two atomic updates of its count
                // of owners).
                let mut event = std::mem::take(&mut self.piece);
                event.truncate(to);
                event.advance(from);
                self.scanned = 0;
                return event;
            }
            let slice = self.piece.slice(from..to);
            self.consume(next);
            slice
        } else {
            self.joined.advance(from);
            let slice = self.joined.split_to(to - from).freeze();
            self.consume(next - to);
            slice
        }
    }

    /// The bytes held for the event being read, once every complete event in the
    /// buffer has been framed: its unfinished line and its `data` so far.
    fn pending_event_bytes(&self) -> usize {
        self.unread().len() + self.data.len()
    }

    /// Frame the buffered bytes up to the next dispatched event's data, if they hold
    /// one. `at_end`: the body has ended, so a CR last in the buffer ends its line
    /// (otherwise it waits, as an LF may follow in the next piece).
    fn next_event(&mut self, at_end: bool) -> Option<Bytes> {
        if !self.bom_checked {
            let unread = self.unread();
            if unread.len() < BOM.len() && BOM.starts_with(unread) && !at_end {
                return None;
            }
            if unread.starts_with(BOM) {
                self.consume(BOM.len());
            }
            self.bom_checked = true;
        }
        loop {
            let scanned = self.scanned;
            // Borrowed by field (not through the method), so that `data` can be
            // written while a line of it is read.
            let unread = unread(&self.piece, &self.joined);
            let Some(found) = memchr::memchr2(b'\n', b'\r', &unread[scanned..]) else {
                self.scanned = unread.len();
                return None;
            };
            let line_end = scanned + found;
            let next_line = match (unread[line_end], unread.get(line_end + 1)) {
                (b'\r', Some(b'\n')) => line_end + 2,
                (b'\r', None) if !at_end => {
                    self.scanned = line_end;
                    return None;
                }
                _ => line_end + 1,
            };
            let line = &unread[..line_end];
            // The usual event, `data: ...` then a blank line (LF or CRLF), and no
            // data before it: its value is handed on as it lies in the buffer, and
            // the blank line is taken with it rather than by another search (a
            // search costs more than the bytes it would look at).
            if self.data_lines == 0 {
                if let Some(value) = line.strip_prefix(b"data:") {
                    let blank = match (unread.get(next_line), unread.get(next_line + 1)) {
                        (Some(b'\n'), _) => Some(1),
                        (Some(b'\r'), Some(b'\n')) => Some(2),
                        _ => None,
                    };
                    if let Some(blank) = blank {
                        let from = line_end - value.strip_prefix(b" ").unwrap_or(value).len();
                        return Some(self.take_slice(from, line_end, next_line + blank));
                    }
                }
            }
            if line.is_empty() {
                self.consume(next_line);
                if self.data_lines == 0 {
                    continue;
                }
                self.data_lines = 0;
                return Some(Bytes::from(std::mem::take(&mut self.data)));
            }
            if line[0] != b':' {
                let (field, value) = match memchr::memchr(b':', line) {
                    Some(colon) => {
                        let value = &line[colon + 1..];
                        (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                    }
                    None => (line, &[][..]),
                };
                if field == b"data" {
                    take_data(&mut self.data, &mut self.data_lines, value);
                }
            }
            self.consume(next_line);
        }
    }

    /// Take in a piece of the body: kept as it is when nothing is unread, joined to
    /// what is otherwise.
    fn take_in(&mut self, piece: Bytes) {
        if self.joined.is_empty() {
            if self.piece.is_empty() {
                self.piece = piece;
                return;
            }
            self.joined.reserve(self.piece.len() + piece.len());
            self.joined.extend_from_slice(&self.piece);
            self.piece = Bytes::new();
        }
        self.joined.extend_from_slice(&piece);
    }

    /// The stream's end: nothing more is read or reported.
    fn end(&mut self) -> Option<Pin<Box<S>>> {
        self.piece = Bytes::new();
        self.joined = BytesMut::new();
        self.scanned = 0;
        self.data = Vec::new();
        self.data_lines = 0;
        self.body.take()
    }
}

/// The unread bytes: `piece`, or `joined` once an event spans pieces (at most one
/// of them holds any).
fn unread<'a>(piece: &'a Bytes, joined: &'a BytesMut) -> &'a [u8] {
    if joined.is_empty() {
        piece
    } else {
        joined
    }
}

/// One `data` line's value, joined to the event's data so far (`lines` of them).
fn take_data(data: &mut Vec<u8>, lines: &mut usize, value: &[u8]) {
    if *lines == 0 {
        // A one-line event fills its buffer exactly, so that it becomes the
        // event's `Bytes` without another allocation.
        data.reserve_exact(value.len());
    } else {
        data.push(b'\n');
    }
    data.extend_from_slice(value);
    *lines += 1;
}

impl<S, E, T> SseDataEvents<S, T>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
    T: EventText,
{
    /// What a dispatched event's data becomes: `None` to skip it, or the item.
    fn deliver(&mut self, data: Bytes) -> Option<Option<Result<T, ApiError>>> {
        let Some(data) = T::read(data) else {
            self.end();
            return Some(Some(Err(not_utf8())));
        };
        if data.data().is_empty() {
            return None;
        }
        if data.data() == b"[DONE]" {
            if let Some(body) = self.end() {
                finish_body(body);
            }
            return Some(None);
        }
        self.idle.activity();
        Some(Some(Ok(data)))
    }
}

impl<S, E, T> Stream for SseDataEvents<S, T>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
    T: EventText,
{
    type Item = Result<T, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            while let Some(data) = this.next_event(false) {
                if let Some(item) = this.deliver(data) {
                    return Poll::Ready(item);
                }
            }
            // Every complete event is out: what is held belongs to the one being read
            // (nothing once the stream has ended).
            if this.pending_event_bytes() > this.max_event {
                let limit = this.max_event;
                this.end();
                let err = ApiError::upstream_failure(format!(
                    "upstream sent a stream event longer than {limit} bytes"
                ));
                return Poll::Ready(Some(Err(err)));
            }
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            match body.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(piece))) => this.take_in(piece),
                Poll::Ready(Some(Err(e))) => {
                    this.end();
                    let err = ApiError::upstream_failure(format!("upstream stream broke off: {e}"));
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    // A CR last in the body ends its line; an unfinished event is dropped.
                    while let Some(data) = this.next_event(true) {
                        if let Some(item) = this.deliver(data) {
                            this.end();
                            return Poll::Ready(item);
                        }
                    }
                    this.end();
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.idle.expired(cx) {
                        this.end();
                        let err = ApiError::UpstreamTimeout {
                            detail: format!(
                                "no data from upstream for {:.1}s",
                                this.idle.idle.as_secs_f64()
                            ),
                        };
                        return Poll::Ready(Some(Err(err)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// [`SseDataEvents`] with each event read by a provider's `decode`
/// ([`SseDataEvents::decode`]).
pub struct DecodedEvents<S, F, T = EventData> {
    events: SseDataEvents<S, T>,
    decode: F,
}

impl<S, E, T, U, F> Stream for DecodedEvents<S, F, T>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
    T: EventText,
    F: FnMut(T) -> Result<U, ApiError> + Unpin,
{
    type Item = Result<U, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = match futures_util::ready!(Pin::new(&mut this.events).poll_next(cx)) {
            Some(Ok(data)) => (this.decode)(data),
            Some(Err(error)) => Err(error),
            None => return Poll::Ready(None),
        };
        if item.is_err() {
            // Nothing after an error (the reader ends itself after its own).
            this.events.end();
        }
        Poll::Ready(Some(item))
    }
}

/// How long an upstream may keep a body open after its `[DONE]` event before the
/// connection is closed instead of being kept for the next request.
const AFTER_DONE_GRACE: Duration = Duration::from_secs(2);

/// After `[DONE]`, read what is left of the body (normally just the end of its
/// chunked encoding, already received) so that its keep-alive connection goes back to
/// the pool rather than being closed. What has not arrived yet is awaited in a task
/// of its own for [`AFTER_DONE_GRACE`], so that the client's stream ends at once.
fn finish_body<S>(mut body: Pin<Box<S>>)
where
    S: Stream + Send + 'static,
{
    loop {
        match body.next().now_or_never() {
            Some(Some(_)) => continue,
            Some(None) => return,
            None => break,
        }
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(AFTER_DONE_GRACE, async {
            while body.next().await.is_some() {}
        })
        .await;
    });
}

/// Tells when a stream has gone `idle` without an event. Nothing per event touches
/// the clock or the timer (re-arming a timer per streamed event was a timer-wheel
/// removal and insertion each time): an event only sets a flag, and a timer that
/// ticks every quarter of `idle` counts the quiet ticks. Silence is reported after
/// `idle` to `idle * 5/4`. The timer is made at the first wait (inside the runtime,
/// and never for a body that is always ready).
struct IdleClock {
    idle: Duration,
    event_since_tick: bool,
    quiet_ticks: u32,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The waker the timer was last polled with: while the timer has not elapsed,
    /// it wakes that task, and polling it again for the same task (at every wait
    /// of a stream, several an event) only registered the same waker again.
    registered: Option<std::task::Waker>,
}

/// Quiet ticks in a row that make `idle`.
const IDLE_TICKS: u32 = 4;

impl IdleClock {
    fn new(idle: Duration) -> Self {
        IdleClock {
            idle,
            event_since_tick: false,
            quiet_ticks: 0,
            timer: None,
            registered: None,
        }
    }

    fn activity(&mut self) {
        self.event_since_tick = true;
    }

    /// Called when the body has nothing ready: true once `idle` has passed without an
    /// event; otherwise the task is woken at the next tick.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if let (Some(timer), Some(registered)) = (&self.timer, &self.registered) {
            if !timer.is_elapsed() && registered.will_wake(cx.waker()) {
                return false;
            }
        }
        let tick = self.idle / IDLE_TICKS;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(tick)));
        while timer.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut self.event_since_tick) {
                self.quiet_ticks = 0;
            } else {
                self.quiet_ticks += 1;
                if self.quiet_ticks >= IDLE_TICKS {
                    return true;
                }
            }
            // Polled again by the loop, so that it registers for the next tick.
            timer.as_mut().reset(tokio::time::Instant::now() + tick);
        }
        if !self
            .registered
            .as_ref()
            .is_some_and(|registered| registered.will_wake(cx.waker()))
        {
            self.registered = Some(cx.waker().clone());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_stream2::Eventsource;
    use proptest::prelude::*;

    fn body(parts: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p))))
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    fn read_all(parts: Vec<Vec<u8>>) -> Vec<Result<String, String>> {
        read_events(SseDataEvents::new(body(parts), Duration::from_secs(5)))
    }

    /// Every item of `events`, as text.
    fn read_events<S>(events: SseDataEvents<S>) -> Vec<Result<String, String>>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let as_text = |item: Result<EventData, ApiError>| {
            item.map(|data| data.as_str().to_owned())
                .map_err(|e| e.to_string())
        };
        block_on(events.map(as_text).collect())
    }

    /// The same body read by `eventsource-stream2` with the rules this stream adds
    /// (trimmed, empty data skipped, `[DONE]` ends).
    fn read_all_by_the_crate(parts: Vec<Vec<u8>>) -> Vec<Result<String, String>> {
        let events = body(parts).eventsource();
        block_on(async move {
            let mut out = Vec::new();
            futures_util::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let data = event.data.trim();
                        if data == "[DONE]" {
                            break;
                        }
                        if !data.is_empty() {
                            out.push(Ok(data.to_owned()));
                        }
                    }
                    Err(e) => {
                        out.push(Err(e.to_string()));
                        break;
                    }
                }
            }
            out
        })
    }

    /// `text` cut at each of `cuts` (taken modulo its length + 1).
    fn cut(text: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let positions = cuts.iter().map(|c| c % (text.len() + 1)).collect();
        crate::proptests::cut_at(text, positions)
    }

    #[test]
    fn line_endings_comments_and_multi_line_data() {
        let text = "\u{feff}: keep-alive\r\n\r\ndata: {\"a\":\r\ndata:1}\r\n\r\n\
                    event: ping\nid: 7\nretry: 10\ndata\n\n\
                    data:  two spaces\rdata:x\r\r\
                    data: é\n\n\
                    data: [DONE]\n\ndata: after\n\n";
        let all = read_all(vec![text.as_bytes().to_vec()]);
        let expected = ["{\"a\":\n1}", "two spaces\nx", "é"];
        assert_eq!(all, expected.map(|s| Ok(s.to_owned())));
        // Cut anywhere, even inside the mark, a CRLF or a character, it reads the same.
        for at in 0..=text.len() {
            for second in [at, at + 1, at + 2] {
                assert_eq!(read_all(cut(text.as_bytes(), &[at, second])), all, "{at}");
            }
        }
    }

    #[test]
    fn an_unfinished_event_is_dropped_and_a_last_cr_ends_its_line() {
        assert_eq!(
            read_all(vec![b"data: 1\n\ndata: 2\n".to_vec()]),
            [Ok("1".into())]
        );
        assert_eq!(read_all(vec![b"data: 1\r\r".to_vec()]), [Ok("1".into())]);
        assert_eq!(
            read_all(vec![b"data: 1\r".to_vec(), b"\r".to_vec()]),
            [Ok("1".into())]
        );
    }

    #[test]
    fn bad_utf8_and_a_broken_body_end_the_stream_with_an_error() {
        let all = read_all(vec![b"data: 1\n\ndata: \xff\n\ndata: 3\n\n".to_vec()]);
        assert_eq!(all.len(), 2);
        assert!(
            all[1].as_ref().unwrap_err().contains("not UTF-8"),
            "{all:?}"
        );

        let broken = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"data: 1\n\n")),
            Err(std::io::Error::other("connection reset")),
            Ok(Bytes::from_static(b"data: 2\n\n")),
        ]);
        let all: Vec<_> = block_on(SseDataEvents::new(broken, Duration::from_secs(5)).collect());
        assert_eq!(all.len(), 2);
        let message = all[1].as_ref().unwrap_err().to_string();
        assert!(message.contains("broke off: connection reset"), "{message}");
    }

    #[test]
    fn an_event_longer_than_the_limit_ends_the_stream_with_an_error() {
        let read_capped = |parts: Vec<&[u8]>| -> Vec<Result<String, String>> {
            let mut events = SseDataEvents::new(
                body(parts.into_iter().map(<[u8]>::to_vec).collect()),
                Duration::from_secs(5),
            );
            events.max_event = 64;
            read_events(events)
        };
        let line = b"data: 0123456789abcdef\n\n";
        // Many complete events in one piece, far more than the limit together: fine.
        let many: Vec<u8> = line.repeat(20);
        assert_eq!(read_capped(vec![&many]).len(), 20);
        // One event of data lines that never ends (no blank line)...
        let mut parts: Vec<&[u8]> = vec![b"data: ok\n\n"];
        parts.extend(std::iter::repeat_n(&b"data: 0123456789abcdef\n"[..], 10));
        parts.push(b"\n");
        let all = read_capped(parts);
        assert_eq!(all[0], Ok("ok".to_owned()));
        assert_eq!(all.len(), 2, "{all:?}");
        let message = all[1].as_ref().unwrap_err();
        assert!(message.contains("longer than 64 bytes"), "{message}");
        // ...or one line that never ends.
        let all = read_capped(vec![b"data: ", &[b'x'; 40], &[b'x'; 40], b"\n\n"]);
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0]
            .as_ref()
            .unwrap_err()
            .contains("longer than 64 bytes"));
        // Under the limit, the same shapes are read.
        let all = read_capped(vec![b"data: ", &[b'x'; 20], &[b'x'; 20], b"\n\n"]);
        assert_eq!(all, [Ok("x".repeat(40))]);
    }

    #[test]
    fn an_event_in_one_piece_is_handed_on_as_a_slice_of_it() {
        let piece = Bytes::from_static(
            b"data: {\"a\":1}\n\nevent: x\r\ndata:{\"b\":2}\r\n\r\ndata: {\"c\"",
        );
        let rest = Bytes::from_static(b":3}\n\n");
        let within = piece.as_ptr_range();
        let pieces = vec![Ok::<_, std::io::Error>(piece.clone()), Ok(rest)];
        let events = SseDataEvents::new(futures_util::stream::iter(pieces), Duration::from_secs(5));
        let all: Vec<EventData> = block_on(events.map(Result::unwrap).collect());
        assert_eq!(
            all.iter().map(EventData::as_str).collect::<Vec<_>>(),
            ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]
        );
        for data in &all[..2] {
            assert!(
                within.contains(&data.as_ptr()),
                "{data:?} is a slice of the piece"
            );
        }
        // The event split between two pieces was joined, so it is a copy.
        assert!(!within.contains(&all[2].as_ptr()));
    }

    #[test]
    fn decoded_events_end_after_the_first_error_of_the_decoder() {
        let text = "data: 1\n\ndata: x\n\ndata: 3\n\n";
        let decoded =
            SseDataEvents::new(body(vec![text.into()]), Duration::from_secs(5)).decode(|data| {
                data.parse::<u32>()
                    .map_err(|_| ApiError::upstream_failure(format!("not a number: {}", &*data)))
            });
        let all: Vec<_> = block_on(decoded.collect());
        assert_eq!(all.len(), 2, "nothing after the error");
        assert_eq!(all[0].as_ref().ok(), Some(&1));
        assert!(all[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("not a number: x"));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_reported_after_the_idle_time_not_before() {
        let idle = Duration::from_secs(8);
        // Events 6 s apart never trip an 8 s idle timeout, however long the stream.
        let steady = futures_util::stream::iter(0..5).then(|i| async move {
            tokio::time::sleep(Duration::from_secs(6)).await;
            Ok::<_, std::io::Error>(Bytes::from(format!("data: {i}\n\n")))
        });
        let items: Vec<_> = SseDataEvents::new(steady, idle).collect().await;
        assert_eq!(items.len(), 5);
        assert!(items.iter().all(Result::is_ok));

        // Keep-alive comments are not events: after the last event, silence ends the
        // stream between 8 and 10 s later.
        let stalls = futures_util::stream::iter(["data: 1\n\n", "data: 2\n\n"])
            .then(|text| async move { Ok::<_, std::io::Error>(Bytes::from(text)) })
            .chain(futures_util::stream::iter(0..20).then(|_| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(Bytes::from(": keep-alive\n\n"))
            }));
        let started = tokio::time::Instant::now();
        let items: Vec<_> = SseDataEvents::new(stalls, idle).collect().await;
        let waited = started.elapsed();
        assert_eq!(items.len(), 3);
        assert!(matches!(items[2], Err(ApiError::UpstreamTimeout { .. })));
        assert!(waited >= idle && waited <= idle * 5 / 4, "{waited:?}");
    }

    /// The idle clock's timer is not polled again for the task it already wakes,
    /// but a stream polled from another task (a new waker) registers that one: the
    /// silence is reported to whoever polls it last.
    #[tokio::test(start_paused = true)]
    async fn the_idle_clock_wakes_the_task_that_polled_it_last() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = || std::sync::Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let silent = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let mut events = SseDataEvents::new(silent, Duration::from_secs(8));
        let (first, second) = (flag(), flag());
        for (flag, times) in [(&first, 3), (&second, 1)] {
            let waker = std::task::Waker::from(flag.clone());
            let mut cx = Context::from_waker(&waker);
            for _ in 0..times {
                assert!(Pin::new(&mut events).poll_next(&mut cx).is_pending());
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            second.0.load(std::sync::atomic::Ordering::SeqCst),
            "the last task to poll is woken at the tick"
        );
    }

    /// The pieces random bodies are made of: every kind of line and line end.
    const PIECES: &[&str] = &[
        "data: ",
        "data:",
        "data",
        "event: x",
        "id: 1",
        "retry: 5",
        ": note",
        ":",
        "\n",
        "\r\n",
        "\r",
        "{\"a\": 1}",
        " ",
        "[DONE]",
        "é",
        "x:y",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

        /// On any body made of those pieces, cut anywhere, the events are the ones
        /// `eventsource-stream2` reads (the bodies end with LF: at a last CR the crate
        /// waits for more, where the standard ends the line).
        #[test]
        fn reads_what_eventsource_stream2_reads(
            picks in prop::collection::vec(0..PIECES.len(), 0..40),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut text: String = picks.iter().map(|&i| PIECES[i]).collect();
            text.push('\n');
            let parts = cut(text.as_bytes(), &cuts);
            prop_assert_eq!(read_all(parts.clone()), read_all_by_the_crate(parts));
        }
    }
}
