//! One HTTP/1.1 client connection of the in-task pool: writes a request, reads the
//! response head (parsed by `httparse`, as hyper parses it) and the body's framing
//! (`Content-Length`, chunked, or until the upstream closes).
//!
//! Why not hyper's client connection: it keeps an 8 KiB read buffer and an 8 KiB
//! buffer for request heads for as long as the connection lives, so a slow stream
//! held a page of each while it waited for the next event (bench/README.md, "where
//! an open stream's memory goes"); and it decodes chunked bodies reading the size
//! line a byte at a time. Here nothing is buffered while the connection waits: a
//! read lands on the stack and only the bytes that arrived are copied to the heap,
//! where the pieces handed out share them; a request head is written from a buffer
//! made for it and dropped once sent.
//!
//! Only what an upstream call needs: one request at a time (no pipelining), bodies
//! known in full when sent, no upgrades. Everything the upstream sends is bounded:
//! the head (64 KiB, 128 lines), a chunk-size line, the trailers.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::case::HeaderCase;
use crate::http1::{ends_head, BodyDecoder, Decoded, Framing, HeadFacts};

/// The longest response head read: status line and header lines.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines in a response head.
const MAX_HEADERS: usize = 128;
/// The most read from the socket at a time (on the stack, then copied).
const READ_SIZE: usize = 16 * 1024;

/// The response headers anything in the gateway reads: the framing and the
/// connection's fate here, the media type of the answer (`providers::openai`), an
/// error's `Retry-After` (`providers::upstream_http`). The others are not kept: an
/// OpenAI answer carries twenty or so (request ids, rate-limit counters, the CDN's),
/// each an allocated name and value in a map that nobody read. A header the gateway
/// starts to read must be added here.
const KEPT_HEADERS: [HeaderName; 5] = [
    http::header::CONTENT_TYPE,
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    http::header::RETRY_AFTER,
];

/// The kept header `name` spells (any case), if it is one.
fn kept_header(name: &str) -> Option<HeaderName> {
    KEPT_HEADERS
        .iter()
        .find(|kept| kept.as_str().eq_ignore_ascii_case(name))
        .cloned()
}

/// Why a request or its answer failed on the connection.
#[derive(Debug)]
pub enum Http1Error {
    /// The socket failed.
    Io(io::Error),
    /// The upstream closed the connection before `what` was complete.
    Closed { what: &'static str },
    /// The upstream sent something that is not HTTP/1.1.
    Invalid(String),
}

impl std::fmt::Display for Http1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Http1Error::Io(e) => write!(f, "{e}"),
            Http1Error::Closed { what } => {
                write!(
                    f,
                    "the upstream closed the connection before the end of {what}"
                )
            }
            Http1Error::Invalid(what) => write!(f, "the upstream's answer is not HTTP/1.1: {what}"),
        }
    }
}

impl std::error::Error for Http1Error {}

fn invalid(what: impl Into<String>) -> Http1Error {
    Http1Error::Invalid(what.into())
}

/// What the start of `pending` holds.
enum Head {
    /// Not yet a whole head.
    Partial,
    /// A 1xx head, now dropped.
    Interim,
    /// The answer's head.
    Final(http::response::Parts),
}

fn head_too_long() -> Http1Error {
    invalid(format!(
        "the response head is longer than {} KiB",
        MAX_HEAD / 1024
    ))
}

/// A request failed while it was written: how much of it had gone out.
pub struct WriteFailed {
    /// Bytes of the request the socket took (0: none, so it may be sent elsewhere).
    pub written: usize,
    pub error: io::Error,
}

/// A client connection over `S` (a TCP or TLS socket; an in-memory pipe in tests).
pub struct Connection<S> {
    io: S,
    /// Bytes read and not yet handed out: part of a head, a chunk-size line, the
    /// rest of what one read brought. Holds no allocation while empty.
    pending: BytesMut,
    body: BodyDecoder,
    /// Whether another request may follow once this answer has been read.
    keep_alive: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(io: S) -> Self {
        Connection {
            io,
            pending: BytesMut::new(),
            body: BodyDecoder::DONE,
            keep_alive: true,
        }
    }

    /// Whether the last answer was read to its end with nothing after it and the
    /// upstream keeps the connection open: it may go back to the pool.
    pub fn answer_complete(&self) -> bool {
        self.keep_alive && self.body.is_done() && self.pending.is_empty()
    }

    /// Whether the connection can carry another request now: the last answer is
    /// complete, nothing more arrived, and the upstream has not closed it (as far as
    /// the runtime has seen: a close it has not noticed yet shows up as a request
    /// that fails).
    pub fn is_reusable(&mut self) -> bool {
        if !self.answer_complete() {
            return false;
        }
        // A read that would wait means the socket is quiet and open; end of file
        // (closed while idle), bytes nobody asked for, or an error mean it is not.
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let mut buf = ReadBuf::uninit(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Write a request (head and whole body). On failure, how much went out.
    pub async fn write_request(&mut self, head: &[u8], body: &[u8]) -> Result<(), WriteFailed> {
        let total = head.len() + body.len();
        let mut written = 0;
        let failed = |written, error| WriteFailed { written, error };
        while written < total {
            let n = std::future::poll_fn(|cx| {
                let io = Pin::new(&mut self.io);
                if written < head.len() {
                    let parts = [io::IoSlice::new(&head[written..]), io::IoSlice::new(body)];
                    io.poll_write_vectored(cx, &parts)
                } else {
                    io.poll_write(cx, &body[written - head.len()..])
                }
            })
            .await
            .map_err(|e| failed(written, e))?;
            if n == 0 {
                return Err(failed(written, io::ErrorKind::WriteZero.into()));
            }
            written += n;
        }
        std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx))
            .await
            .map_err(|e| failed(written, e))
    }

    /// Read the answer's head (skipping interim 1xx answers) and learn how its body
    /// is framed; the body is then read with [`Connection::poll_body`].
    pub async fn read_head(
        &mut self,
        method: &Method,
    ) -> Result<http::response::Parts, Http1Error> {
        // How much of `pending` was searched for the head's end: an upstream that
        // sends its head a byte at a time must not make every byte a parse of all
        // that came before it.
        let mut scanned = 0;
        loop {
            if ends_head(&self.pending, scanned) {
                match self.parse_head(method)? {
                    Head::Final(parts) => return Ok(parts),
                    // Another head may have come with it.
                    Head::Interim => {
                        scanned = 0;
                        continue;
                    }
                    Head::Partial => {}
                }
            }
            if self.pending.len() >= MAX_HEAD {
                return Err(head_too_long());
            }
            scanned = self.pending.len();
            let read = std::future::poll_fn(|cx| self.poll_fill(cx)).await;
            if read.map_err(Http1Error::Io)? == 0 {
                return Err(Http1Error::Closed {
                    what: "the response head",
                });
            }
        }
    }

    /// Parse a head from the start of `pending`; an interim (1xx) one is dropped.
    fn parse_head(&mut self, method: &Method) -> Result<Head, Http1Error> {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut lines);
        let length = match parsed.parse(&self.pending) {
            // Bounded whole, whatever the reads it came in.
            Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => {
                return Err(head_too_long())
            }
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(Head::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(invalid(format!(
                    "the response head has more than {MAX_HEADERS} header lines"
                )))
            }
            Err(e) => return Err(invalid(format!("the response head: {e}"))),
        };
        let code = parsed.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| invalid(format!("status code {code}")))?;
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut headers = HeaderMap::new();
        let mut facts = HeadFacts::default();
        for line in parsed.headers.iter() {
            let Some(name) = kept_header(line.name) else {
                continue;
            };
            let value = HeaderValue::from_bytes(line.value)
                .map_err(|_| invalid(format!("the value of header {:?}", line.name)))?;
            facts.note(&name, line.value);
            headers.append(name, value);
        }
        self.pending.advance(length);
        // Usually all there was: the connection then waits for the body holding
        // nothing (the header values above are copies).
        self.release_if_empty();
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(invalid("101 Switching Protocols, which was not asked for"));
            }
            return Ok(Head::Interim);
        }
        self.body = BodyDecoder::new(framing(method, status, &facts)?);
        self.keep_alive = facts.keeps_alive(version) && self.body.framing != Framing::UntilClose;
        if facts.codings > 0 && facts.length != Ok(None) {
            // Both framings named: chunked wins, and the connection must not carry
            // another request (RFC 9112, 6.3), whatever the upstream meant.
            self.keep_alive = false;
        }
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        Ok(Head::Final(parts))
    }

    /// The next piece of the body, `None` at its end (or an error). A connection
    /// whose body ended is ready for the next request if [`Connection::is_reusable`].
    pub fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Http1Error>>> {
        loop {
            match self.body.decode(&mut self.pending) {
                Decoded::Piece(piece) => {
                    self.release_if_empty();
                    return Poll::Ready(Some(Ok(piece)));
                }
                Decoded::End => {
                    self.release_if_empty();
                    return Poll::Ready(None);
                }
                Decoded::Invalid(what) => return Poll::Ready(Some(Err(invalid(what)))),
                // A piece whose size is known: read into a buffer of that size.
                Decoded::More(Some(due)) => {
                    self.pending.reserve(due - self.pending.len());
                    let io = Pin::new(&mut self.io);
                    let read = ready!(tokio_util::io::poll_read_buf(io, cx, &mut self.pending));
                    if let Err(e) = body_read(read) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Decoded::More(None) if self.body.framing == Framing::UntilClose => {
                    match ready!(self.poll_fill(cx)) {
                        Err(e) => return Poll::Ready(Some(Err(Http1Error::Io(e)))),
                        Ok(0) => {
                            self.body = BodyDecoder::DONE;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                    }
                }
                Decoded::More(None) => {
                    if let Err(e) = ready!(self.fill_or_closed(cx)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        }
    }

    /// Read more of the body into `pending`; the upstream closing the connection
    /// is an error here (the body was not complete).
    fn fill_or_closed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Http1Error>> {
        self.poll_fill(cx).map(body_read)
    }

    /// An empty `pending` lets go of its allocation, so that a connection waiting
    /// for the next event holds none (the pieces handed out keep what they need).
    fn release_if_empty(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = BytesMut::new();
        }
    }

    /// One read from the socket, appended to `pending`: the bytes land on the stack
    /// and only as many as arrived are copied to the heap. `Ok(0)`: end of file.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut buf = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let read = buf.filled();
        self.pending.extend_from_slice(read);
        Poll::Ready(Ok(read.len()))
    }
}

/// A read of body bytes: end of file is an error (the body was not complete).
fn body_read(read: io::Result<usize>) -> Result<(), Http1Error> {
    match read {
        Ok(0) => Err(Http1Error::Closed { what: "the body" }),
        Ok(_) => Ok(()),
        Err(e) => Err(Http1Error::Io(e)),
    }
}

/// How the body of an answer to `method` with `status` and `headers` is framed
/// (RFC 9112, section 6.3).
fn framing(method: &Method, status: StatusCode, facts: &HeadFacts) -> Result<Framing, Http1Error> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Done);
    }
    if facts.codings > 0 {
        // Chunked only when it is the last coding; anything else runs to the close.
        return Ok(match facts.last_chunked {
            true => Framing::ChunkSize,
            false => Framing::UntilClose,
        });
    }
    let length = facts.length.map_err(invalid)?;
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// The head of a request: `method target HTTP/1.1`, the headers (names spelled as
/// `case` says, title case otherwise: `X-Custom-Header`, as the reference's clients
/// sent them) and `Content-Length` for the body, which is always sent whole. Any
/// `Content-Length` or `Transfer-Encoding` among `headers` is left out: the
/// gateway frames the body it sends, a stale or forwarded length must not.
pub fn request_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    case: &HeaderCase,
    body_length: usize,
) -> Vec<u8> {
    let mut head = request_head_start(method, target, headers, case);
    finish_request_head(&mut head, method, body_length);
    head
}

/// [`request_head`] up to its framing: the request line and the headers. What a
/// caller that sends the same headers every time writes once ([`finish_request_head`]
/// completes a copy per request).
pub fn request_head_start(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    case: &HeaderCase,
) -> Vec<u8> {
    let mut size = method.as_str().len() + target.len() + 40;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        match case.spelling_of(name) {
            Some(spelling) => head.extend_from_slice(spelling.as_bytes()),
            None => title_case(&mut head, name.as_str()),
        }
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head
}

/// The end of a request head begun by [`request_head_start`]: `Content-Length`
/// (for a body, or any POST, PUT or PATCH) and the blank line.
pub fn finish_request_head(head: &mut Vec<u8>, method: &Method, body_length: usize) {
    if body_length > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        head.extend_from_slice(b"Content-Length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body_length).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// `name` (lowercase) with its first letter and each one after a `-` upper case.
fn title_case(out: &mut Vec<u8>, name: &str) {
    let mut upper = true;
    for b in name.bytes() {
        out.push(if upper { b.to_ascii_uppercase() } else { b });
        upper = b == b'-';
    }
}

#[cfg(test)]
mod tests;
