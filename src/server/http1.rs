//! The HTTP/1.1 server side of plain client connections: reads request heads with
//! `httparse` (the parser hyper uses), hands each request to the connection's
//! service (`conn::ConnService`: a door, or the router), and writes its answer.
//!
//! Why not hyper's server connection here: on this path it was about a third of
//! the user-space work of a non-streamed request (bench/README.md, sessions 21 and
//! 23): its dispatcher, the channel that carries a request body from the
//! connection to the handler (even for a body that arrived with the head), and an
//! 8 KiB read buffer per connection that the request's header values kept pinned
//! for as long as a stream was answered. Here a request's head is read onto the
//! stack and only the bytes that came are copied to the heap, where the header
//! values and the body share them; a body that arrived with its head is handed to
//! the handler as it is; the rest of a body is read by the handler's own polls,
//! from the socket, in this connection's task.
//!
//! TLS connections, HTTP/2, and connections that must record how the client
//! spelled its header names (the HTTPHeadersForwarder) are still served by hyper
//! (`conn::serve`).
//!
//! What a client can send is bounded and checked as hyper checks it: a head of at
//! most 64 KiB and 100 header lines, `Content-Length` a number (equal values when
//! repeated), `Transfer-Encoding` only `chunked`, never with a `Content-Length`
//! (a request that names both is refused: the two framings are how requests are
//! smuggled past a proxy), chunk-size lines and trailers bounded. Each refusal is
//! an answer in the OpenAI envelope, and the connection is then closed.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::response::IntoResponse;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::ReadBuf;

use super::conn::{ClientLeft, ConnService, ConnState, TrackedIo, CLOSE_IDLE};
use super::conn::{CLOSE_NOW, KEEP};
use crate::error::{ApiError, ErrorBody};
use crate::http1::{self, BodyDecoder, Decoded, Framing, HeadFacts};

/// The longest request head read: request line and header lines.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines in a request head (hyper's default).
const MAX_HEADERS: usize = 100;
/// The most read from the socket at a time onto the stack (then copied).
const READ_SIZE: usize = 8 * 1024;

/// What a connection shares with the body of its request in progress.
struct Link {
    io: TrackedIo,
    /// Set by the body when it is dropped: how it ended.
    returned: Mutex<Returned>,
}

#[derive(Default)]
struct Returned {
    /// The body was read to its end: the connection may carry another request.
    complete: bool,
    /// Bytes read past the body's end (a chunked body's reads may take the start
    /// of a pipelined request): the connection's, to read next.
    surplus: BytesMut,
}

/// Serve HTTP/1.1 on `io` until the client closes, a request or answer fails, or
/// the connection is told to close (`ConnState`).
pub(super) async fn serve(io: TrackedIo, service: ConnService) {
    let conn = io.conn.clone();
    let link = Arc::new(Link {
        io,
        returned: Mutex::new(Returned::default()),
    });
    // Bytes read and not yet used: part of a head, or requests pipelined after the
    // one being answered. Holds no allocation while empty.
    let mut pending = BytesMut::new();
    loop {
        let head = match read_head(&link, &conn, &mut pending).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refusal) => {
                let response = refusal.into_response();
                let _ =
                    write_response(&link, response, &Method::GET, Version::HTTP_11, false).await;
                linger(&link).await;
                return;
            }
        };
        let Request {
            request,
            keep_alive,
            method,
            version,
        } = head.into_request(&link, &mut pending);
        let mut left = ClientLeft::new(Some(&link.io.socket), &conn);
        let mut handling = std::pin::pin!(service.handle(request));
        // Dropping the handler drops the request with it: its upstream call is
        // abandoned and it is logged as the client disconnecting.
        let response = poll_fn(|cx| {
            if let Poll::Ready(Ok(response)) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            if Pin::new(&mut left).poll(cx).is_ready()
                || conn.poll_closing(cx, CLOSE_NOW).is_ready()
            {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let Some(response) = response else { return };
        let wanted = keep_alive && conn.close_requested() == KEEP;
        let kept = match write_response(&link, response, &method, version, wanted).await {
            Ok(kept) => kept,
            Err(_) => return,
        };
        // The body's end, as its reader left it (a body never read, or still held,
        // leaves the connection unusable: what remains of it is unknown).
        let complete = {
            let mut returned = link.returned.lock().expect("body return lock");
            if returned.complete {
                if !returned.surplus.is_empty() {
                    debug_assert!(pending.is_empty(), "a chunked body took every pending byte");
                    pending = std::mem::take(&mut returned.surplus);
                }
                returned.complete = false;
                true
            } else {
                false
            }
        };
        if !(kept && complete) || conn.close_requested() != KEEP {
            linger(&link).await;
            return;
        }
    }
}

/// A parsed request head, with the bytes it was read from.
#[derive(Debug)]
struct Head {
    method: Method,
    uri: http::Uri,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
    expects_continue: bool,
}

/// A request ready for the service.
struct Request {
    request: http::Request<axum::body::Body>,
    keep_alive: bool,
    method: Method,
    version: Version,
}

impl Head {
    /// The request, its body made of what `pending` holds of it (the rest is read
    /// from the socket by the body's polls).
    fn into_request(self, link: &Arc<Link>, pending: &mut BytesMut) -> Request {
        let keep_alive = self.keep_alive;
        let body = match self.framing {
            Framing::Done | Framing::Length(0) => {
                link.returned.lock().expect("body return lock").complete = true;
                axum::body::Body::empty()
            }
            framing => {
                let arrived = match framing {
                    // Never past the body's end: what follows is the next request's.
                    Framing::Length(n) => {
                        let n = n.min(pending.len() as u64) as usize;
                        http1::split_front(pending, n)
                    }
                    // Its end is found by reading: all of it goes, and what is left
                    // after the end comes back (`Returned::surplus`).
                    _ => std::mem::take(pending),
                };
                axum::body::Body::new(RequestBody {
                    link: link.clone(),
                    decoder: BodyDecoder::new(framing),
                    pending: arrived,
                    continue_owed: self.expects_continue,
                })
            }
        };
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        Request {
            request,
            keep_alive,
            method: self.method,
            version: self.version,
        }
    }
}

/// Read until `pending` starts with a whole request head, and parse it. `None`:
/// the client closed the connection (or it was told to close) between requests.
async fn read_head(
    link: &Link,
    conn: &ConnState,
    pending: &mut BytesMut,
) -> Result<Option<Head>, ApiError> {
    // How much of `pending` was searched for the head's end: a client that sends
    // its head a byte at a time must not make every byte a parse of all before it.
    // Most heads come whole in one read: that one is parsed at once.
    let mut scanned = 0;
    loop {
        if (scanned == 0 && !pending.is_empty()) || http1::ends_head(pending, scanned) {
            if let Some(head) = parse_head(pending)? {
                return Ok(Some(head));
            }
        }
        if pending.len() >= MAX_HEAD {
            return Err(head_too_large());
        }
        scanned = pending.len();
        let read = poll_fn(|cx| {
            if let Poll::Ready(read) = link.poll_fill(cx, pending) {
                return Poll::Ready(Some(read));
            }
            // Told to close while waiting for a head (idle, or the head is overdue,
            // or the server stops): nothing is in progress.
            conn.poll_closing(cx, CLOSE_IDLE).map(|_| None)
        })
        .await;
        match read {
            Some(Ok(_)) if pending.len() > scanned => {}
            // End of file (mid-head too: there is nobody to answer), an error, or
            // told to close.
            _ => return Ok(None),
        }
    }
}

/// Parse a head from the start of `pending`: `None` while it is not whole; the
/// head's bytes are taken from `pending` (the header values share them).
fn parse_head(pending: &mut BytesMut) -> Result<Option<Head>, ApiError> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut lines);
    let length = match parsed.parse(pending) {
        // Bounded whole, whatever the reads it came in.
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => return Err(head_too_large()),
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::Custom(Box::new(
                ErrorBody::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("The request has more than {MAX_HEADERS} header lines."),
                    "invalid_request_error",
                )
                .code(Some("request_header_fields_too_large".into())),
            )))
        }
        Err(e) => return Err(bad_request(&format!("the request head is malformed ({e})"))),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad_request("the request method is not a valid token"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let target_range = subslice_range(pending, parsed.path.unwrap_or_default().as_bytes());
    // Where each name and value lies: the parsed lines borrow `pending`, which must
    // be split before the values can share its bytes.
    const UNSET: (std::ops::Range<usize>, std::ops::Range<usize>) = (0..0, 0..0);
    let mut lines = [UNSET; MAX_HEADERS];
    let count = parsed.headers.len();
    for (slot, line) in lines.iter_mut().zip(parsed.headers.iter()) {
        *slot = (
            subslice_range(pending, line.name.as_bytes()),
            subslice_range(pending, line.value),
        );
    }
    let head = pending.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut facts = HeadFacts::default();
    for (name, value) in lines[..count].iter().cloned() {
        let name = &head[name];
        let name = match common_header_name(name) {
            Some(name) => name,
            None => HeaderName::from_bytes(name)
                .map_err(|_| bad_request("a header name is not a valid token"))?,
        };
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| bad_request("a header value holds a control character"))?;
        facts.note(&name, value.as_bytes());
        headers.append(name, value);
    }
    let uri = http::Uri::from_maybe_shared(head.slice(target_range))
        .map_err(|e| bad_request(&format!("the request target is not a valid URI ({e})")))?;
    Ok(Some(Head {
        framing: request_framing(version, &facts)?,
        keep_alive: facts.keeps_alive(version),
        expects_continue: version == Version::HTTP_11 && facts.expects_continue,
        method,
        uri,
        version,
        headers,
    }))
}

/// The standard header `name` spells (in any case) when it is one of those most
/// requests carry; `None` for any other (`HeaderName::from_bytes` then reads it).
/// `from_bytes` copies every name through a lower-casing table before it looks it
/// up, about 130 instructions a name and five names a usual request; a length
/// switch and two word comparisons find these.
///
/// `name` is a token (httparse refuses any other header name): for a token byte,
/// `byte | 0x20` equals a lower-case letter only when the byte is that letter in
/// either case, and equals `-` only when it is `-` (0x0D, a carriage return, is
/// not a token byte), so the comparison below is exact.
fn common_header_name(name: &[u8]) -> Option<HeaderName> {
    let candidate = match name.len() {
        4 => header::HOST,
        6 => header::ACCEPT,
        10 if name[0] | 0x20 == b'u' => header::USER_AGENT,
        10 => header::CONNECTION,
        12 => header::CONTENT_TYPE,
        13 => header::AUTHORIZATION,
        14 => header::CONTENT_LENGTH,
        15 => header::ACCEPT_ENCODING,
        _ => return None,
    };
    let lower = candidate.as_str().as_bytes();
    // The first and the last (overlapping) words of the name: every byte of a name
    // of 4 to 16 bytes.
    let same = if name.len() >= 8 {
        let word = |bytes: &[u8], at: usize| {
            u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
        };
        let last = name.len() - 8;
        word(name, 0) | 0x2020_2020_2020_2020 == word(lower, 0)
            && word(name, last) | 0x2020_2020_2020_2020 == word(lower, last)
    } else {
        let word = |bytes: &[u8], at: usize| {
            u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
        };
        let last = name.len() - 4;
        word(name, 0) | 0x2020_2020 == word(lower, 0)
            && word(name, last) | 0x2020_2020 == word(lower, last)
    };
    same.then_some(candidate)
}

/// Where `part` (a slice of `whole`) lies in it.
fn subslice_range(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    debug_assert!(start + part.len() <= whole.len(), "a slice of the head");
    start..start + part.len()
}

/// How a request's body is framed (RFC 9112, section 6.3), refusing what a
/// request may not say.
fn request_framing(version: Version, facts: &HeadFacts) -> Result<Framing, ApiError> {
    if facts.codings > 0 {
        if version == Version::HTTP_10 {
            return Err(bad_request(
                "HTTP/1.0 requests cannot use Transfer-Encoding",
            ));
        }
        if facts.length != Ok(None) {
            return Err(bad_request(
                "the request has both Content-Length and Transfer-Encoding",
            ));
        }
        if facts.codings != 1 || !facts.last_chunked {
            return Err(bad_request(
                "Transfer-Encoding other than a single `chunked` is not supported",
            ));
        }
        return Ok(Framing::ChunkSize);
    }
    match facts.length {
        Ok(length) => Ok(Framing::Length(length.unwrap_or(0))),
        Err(why) => Err(bad_request(why)),
    }
}

fn bad_request(why: &str) -> ApiError {
    ApiError::Custom(Box::new(
        ErrorBody::new(
            StatusCode::BAD_REQUEST,
            format!("Bad request: {why}."),
            "invalid_request_error",
        )
        .code(Some("bad_request".into())),
    ))
}

fn head_too_large() -> ApiError {
    ApiError::Custom(Box::new(
        ErrorBody::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("The request head is longer than {} KiB.", MAX_HEAD / 1024),
            "invalid_request_error",
        )
        .code(Some("request_header_fields_too_large".into())),
    ))
}

impl Link {
    /// One read from the socket, appended to `pending`: the bytes land on the stack
    /// and only as many as arrived are copied to the heap. `Ok(0)`: end of file.
    fn poll_fill(&self, cx: &mut Context<'_>, pending: &mut BytesMut) -> Poll<io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut buf = ReadBuf::uninit(&mut scratch);
        ready!(self.io.poll_recv(cx, &mut buf))?;
        let read = buf.filled();
        pending.extend_from_slice(read);
        Poll::Ready(Ok(read.len()))
    }

    /// Read up to `due` bytes (never more: what follows is not the body's) straight
    /// into `pending`, grown to hold them.
    fn poll_fill_due(
        &self,
        cx: &mut Context<'_>,
        pending: &mut BytesMut,
        due: usize,
    ) -> Poll<io::Result<usize>> {
        let wanted = due.saturating_sub(pending.len());
        pending.reserve(wanted);
        let spare = &mut pending.spare_capacity_mut()[..wanted];
        let mut buf = ReadBuf::uninit(spare);
        ready!(self.io.poll_recv(cx, &mut buf))?;
        let n = buf.filled().len();
        // SAFETY: `poll_recv` initialised the first `n` bytes of the spare capacity.
        unsafe { pending.set_len(pending.len() + n) };
        Poll::Ready(Ok(n))
    }
}

/// A request's body, read from the connection's socket by the handler's polls.
struct RequestBody {
    link: Arc<Link>,
    decoder: BodyDecoder,
    /// Bytes read and not handed out yet.
    pending: BytesMut,
    /// `Expect: 100-continue` and nothing of the body asked for yet: the client
    /// waits for `100 Continue` before sending it, which the first read sends.
    continue_owed: bool,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let due = match this.decoder.decode(&mut this.pending) {
                Decoded::Piece(piece) => return Poll::Ready(Some(Ok(Frame::data(piece)))),
                Decoded::End => return Poll::Ready(None),
                Decoded::Invalid(why) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the request body's chunked framing is broken: {why}"),
                    ))))
                }
                Decoded::More(due) => due,
            };
            if this.continue_owed {
                ready!(this.poll_send_continue(cx))?;
            }
            let read = match (this.decoder.framing, due) {
                (Framing::Length(_), Some(due)) => {
                    ready!(this.link.poll_fill_due(cx, &mut this.pending, due))
                }
                _ => ready!(this.link.poll_fill(cx, &mut this.pending)),
            };
            if read? == 0 {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before the end of the body",
                ))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl RequestBody {
    /// Write `100 Continue` (a few bytes to a socket that has room for them).
    fn poll_send_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let written = ready!(self
            .link
            .io
            .poll_written(cx, |socket| socket.try_write(CONTINUE)))?;
        if written != CONTINUE.len() {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.continue_owed = false;
        Poll::Ready(Ok(()))
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // Read to its end, or all of it here already (what the handler did not
        // take is dropped unread): the connection may go on, with whatever was read
        // past the end.
        let complete = loop {
            match self.decoder.decode(&mut self.pending) {
                Decoded::Piece(_) => {}
                Decoded::End => break true,
                Decoded::More(_) | Decoded::Invalid(_) => break false,
            }
        };
        if complete {
            let mut returned = self.link.returned.lock().expect("body return lock");
            returned.complete = true;
            returned.surplus = std::mem::take(&mut self.pending);
        }
    }
}

/// Write an answer to a request with `method` and `version`: the head (with the
/// framing this side chooses), then its body as it comes. Ok(whether the
/// connection can carry another request).
async fn write_response<B>(
    link: &Link,
    response: http::Response<B>,
    method: &Method,
    version: Version,
    keep_alive: bool,
) -> io::Result<bool>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep_alive = keep_alive;
    let length = body.size_hint().exact();
    // HTTP/1.0 has no chunks: a body of unknown length runs to the close.
    let chunked = !bodiless && length.is_none() && version != Version::HTTP_10;
    let until_close = !bodiless && length.is_none() && !chunked;
    keep_alive &= !until_close;
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in &parts.headers {
        let framing_header = *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING;
        // The framing is this side's to write; a bodiless answer keeps the length
        // its handler gave (a HEAD answer says how long the GET's would be).
        if framing_header && !(bodiless && status != StatusCode::NO_CONTENT) {
            continue;
        }
        if *name == header::CONNECTION {
            // Ours to write too; a handler's `close` is kept.
            keep_alive &= !http1::connection_says_close(value.as_bytes());
            continue;
        }
        dated |= *name == header::DATE;
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !dated {
        head.extend_from_slice(b"date: ");
        date::now(|date| head.extend_from_slice(date));
        head.extend_from_slice(b"\r\n");
    }
    match (bodiless, length) {
        (true, _) => {}
        (false, Some(length)) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        (false, None) if chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        (false, None) => {}
    }
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        head.extend_from_slice(b"connection: keep-alive\r\n");
    }
    head.extend_from_slice(b"\r\n");

    if bodiless {
        drop(body);
        write_all(&link.io, &mut [IoSlice::new(&head)]).await?;
        return Ok(keep_alive);
    }
    let mut left = ClientLeft::new(Some(&link.io.socket), &link.io.conn);
    if let Some(length) = length {
        return write_known_length(link, head, body, length, &mut left, keep_alive).await;
    }
    // A stream: what the body has ready is gathered and written at once, the
    // chunks' framing around each piece (the SSE encoder already puts the events
    // that are ready into one piece; a burst may still come as a few).
    let mut head = Some(head);
    let mut batch = Batch::default();
    loop {
        let gathered = poll_fn(|cx| batch.gather(&mut body, cx, &mut left, &link.io.conn)).await;
        if gathered == Gathered::Gone {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        let head_bytes = head.take().unwrap_or_default();
        let mut sizes = [[0u8; 18]; BATCH];
        let mut slices = [IoSlice::new(&[]); 2 + 3 * BATCH];
        let mut used = 1;
        slices[0] = IoSlice::new(&head_bytes);
        for (piece, size) in batch.pieces[..batch.count].iter().zip(sizes.iter_mut()) {
            if chunked {
                slices[used] = IoSlice::new(chunk_size_line(size, piece.len()));
                slices[used + 1] = IoSlice::new(piece);
                slices[used + 2] = IoSlice::new(b"\r\n");
                used += 3;
            } else {
                slices[used] = IoSlice::new(piece);
                used += 1;
            }
        }
        if chunked && gathered == Gathered::Ended {
            slices[used] = IoSlice::new(b"0\r\n\r\n");
            used += 1;
        }
        write_all(&link.io, &mut slices[..used]).await?;
        batch.clear();
        match gathered {
            Gathered::Pieces => {}
            // A body that runs to the close (HTTP/1.0) ends with the connection.
            Gathered::Ended => return Ok(keep_alive),
            // The body failed mid-way: what was sent cannot be taken back, and its
            // framing cannot be completed truthfully. Close.
            Gathered::Failed | Gathered::Gone => return Ok(false),
        }
    }
}

/// An answer whose length was announced: its pieces as they come, never past that
/// length. Ok(whether the connection can carry another request).
async fn write_known_length<B>(
    link: &Link,
    head: Vec<u8>,
    mut body: B,
    length: u64,
    left: &mut ClientLeft<'_>,
    mut keep_alive: bool,
) -> io::Result<bool>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let mut head = Some(head);
    let mut sent: u64 = 0;
    while sent < length {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Some(frame));
            }
            if Pin::new(&mut *left).poll(cx).is_ready()
                || link.io.conn.poll_closing(cx, CLOSE_NOW).is_ready()
            {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let data = match frame {
            None => return Err(io::ErrorKind::ConnectionAborted.into()),
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
            // Failed, or shorter than announced: the client must not take what
            // follows as the rest of it. Close.
            Some(Some(Err(_)) | None) => {
                keep_alive = false;
                break;
            }
        };
        let data = &data[..data.len().min((length - sent) as usize)];
        let head_bytes = head.take().unwrap_or_default();
        write_all(
            &link.io,
            &mut [IoSlice::new(&head_bytes), IoSlice::new(data)],
        )
        .await?;
        sent += data.len() as u64;
    }
    if let Some(head) = head {
        write_all(&link.io, &mut [IoSlice::new(&head)]).await?;
    }
    // Whatever else the body has is not sent; its end need not be waited for.
    Ok(keep_alive && (length == 0 || body.is_end_stream()))
}

/// The most pieces of a stream gathered into one write.
const BATCH: usize = 8;
/// ... and the most bytes, past which no more are gathered.
const BATCH_BYTES: usize = 64 * 1024;

/// Pieces of a stream ready to be written together.
#[derive(Default)]
struct Batch {
    pieces: [Bytes; BATCH],
    count: usize,
    bytes: usize,
}

/// What [`Batch::gather`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gathered {
    /// Pieces, and more may come.
    Pieces,
    /// The body ended (after the pieces gathered, if any).
    Ended,
    /// The body failed (after the pieces gathered, if any).
    Failed,
    /// The client left, or the connection must close now.
    Gone,
}

impl Batch {
    /// Take what the body has ready, up to the batch's bounds: ready once there is
    /// a piece, or the body ended or failed.
    fn gather<B>(
        &mut self,
        body: &mut B,
        cx: &mut Context<'_>,
        left: &mut ClientLeft<'_>,
        conn: &ConnState,
    ) -> Poll<Gathered>
    where
        B: HttpBody<Data = Bytes> + Unpin,
    {
        while self.count < BATCH && self.bytes < BATCH_BYTES {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not sent; empty pieces are not written.
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            self.bytes += data.len();
                            self.pieces[self.count] = data;
                            self.count += 1;
                        }
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Gathered::Failed),
                Poll::Ready(None) => return Poll::Ready(Gathered::Ended),
                Poll::Pending => break,
            }
        }
        if self.count > 0 {
            return Poll::Ready(Gathered::Pieces);
        }
        if Pin::new(left).poll(cx).is_ready() || conn.poll_closing(cx, CLOSE_NOW).is_ready() {
            return Poll::Ready(Gathered::Gone);
        }
        Poll::Pending
    }

    fn clear(&mut self) {
        for piece in &mut self.pieces[..self.count] {
            *piece = Bytes::new();
        }
        self.count = 0;
        self.bytes = 0;
    }
}

/// Close a connection the server gives up on (a refused request, a body left
/// unread, `Connection: close`): no more writes, then what the client still sends
/// is read and dropped for a moment, within a bound, before the socket closes.
/// Closing a socket with unread bytes in it makes the kernel send a reset, which
/// can destroy the answer just written before the client has read it.
async fn linger(link: &Link) {
    if link.io.shutdown().is_err() {
        return;
    }
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            let mut scratch = BytesMut::new();
            match poll_fn(|cx| link.poll_fill(cx, &mut scratch)).await {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// How long, and how much, [`linger`] reads before it closes.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// `{size:x}\r\n` in `out`.
fn chunk_size_line(out: &mut [u8; 18], size: usize) -> &[u8] {
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let nibble = (size >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble];
    }
    out[digits..digits + 2].copy_from_slice(b"\r\n");
    &out[..digits + 2]
}

/// Write every slice, as many writes as it takes.
async fn write_all(io: &TrackedIo, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut slices = slices;
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written =
            poll_fn(|cx| io.poll_written(cx, |socket| socket.try_write_vectored(slices))).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// The `Date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub fn now(use_it: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.0 != second || cached.1[0] == 0 {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    cached.1.copy_from_slice(text.as_bytes());
                    cached.0 = second;
                }
            }
            use_it(&cached.1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut out = [0u8; 18];
        assert_eq!(chunk_size_line(&mut out, 0), b"0\r\n");
        assert_eq!(chunk_size_line(&mut out, 10), b"a\r\n");
        assert_eq!(chunk_size_line(&mut out, 0x1f40), b"1f40\r\n");
        assert_eq!(
            chunk_size_line(&mut out, usize::MAX),
            b"ffffffffffffffff\r\n"
        );
    }

    #[test]
    fn common_header_names_are_the_names_from_bytes_reads() {
        for common in [
            "Host",
            "accept",
            "User-Agent",
            "CONNECTION",
            "Content-Type",
            "authorization",
            "Content-length",
            "Accept-Encoding",
            "hosT",
            "ACCEPT-ENCODING",
            "uSER-aGENT",
        ] {
            let read = HeaderName::from_bytes(common.as_bytes()).unwrap();
            assert_eq!(
                common_header_name(common.as_bytes()),
                Some(read),
                "{common}"
            );
        }
        // Same lengths, other names (standard, custom, invalid): left to from_bytes.
        for other in [
            "hozt",
            "cookie",
            "user-agenT!",
            "user_agent",
            "user-agenu",
            "accepted",
            "acceps",
            "keep-alive",
            "x-request-id",
            "cache-control",
            "content-range",
            "accept-language",
            "content-type ",
            "",
        ] {
            assert_eq!(common_header_name(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn framing_refuses_what_smuggles() {
        let headers = crate::http1::facts_of;
        let v11 = Version::HTTP_11;
        assert_eq!(
            request_framing(v11, &headers(&[])).unwrap(),
            Framing::Length(0)
        );
        assert_eq!(
            request_framing(v11, &headers(&[("content-length", "12")])).unwrap(),
            Framing::Length(12)
        );
        assert_eq!(
            request_framing(v11, &headers(&[("transfer-encoding", "Chunked")])).unwrap(),
            Framing::ChunkSize
        );
        for refused in [
            &[("content-length", "1"), ("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", "gzip, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "identity")],
            &[("content-length", "1"), ("content-length", "2")],
            &[("content-length", "-1")],
            &[("content-length", "0x10")],
        ] {
            let refusal = request_framing(v11, &headers(refused)).unwrap_err();
            assert_eq!(refusal.status(), StatusCode::BAD_REQUEST, "{refused:?}");
        }
        assert!(request_framing(
            Version::HTTP_10,
            &headers(&[("transfer-encoding", "chunked")])
        )
        .is_err());
    }

    #[test]
    fn heads_are_parsed_into_shared_bytes() {
        let mut pending = BytesMut::from(
            &b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nX-Thing: b c\r\n\
               Content-Length: 2\r\n\r\n{}NEXT"[..],
        );
        let head = parse_head(&mut pending).unwrap().unwrap();
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/v1/chat/completions");
        assert_eq!(head.uri.query(), Some("x=1"));
        assert_eq!(head.headers["x-thing"], "b c");
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(&pending[..], b"{}NEXT");
        let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n"[..]);
        assert!(parse_head(&mut partial).unwrap().is_none());
        let mut bad = BytesMut::from(&b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n"[..]);
        assert_eq!(
            parse_head(&mut bad).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let mut many = BytesMut::from(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
        assert_eq!(
            parse_head(&mut many).unwrap_err().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    proptest::proptest! {
        /// Whatever bytes a client sends as a head: an answer (a head, more to
        /// come, or a refusal), never a panic; a head that is taken leaves what
        /// followed it.
        #[test]
        fn any_head_bytes_are_parsed_or_refused(
            start in proptest::sample::select(vec![
                "POST /v1/chat/completions HTTP/1.1\r\n",
                "GET / HTTP/1.0\r\n",
                "",
            ]),
            lines in proptest::collection::vec(
                "(content-length|transfer-encoding|connection|expect|x-[a-z]{1,4}|[ -~]{0,6}): ?[ -~\t]{0,12}",
                0..6,
            ),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..24),
            end in proptest::sample::select(vec!["\r\n", "\n", ""]),
        ) {
            let mut text = start.as_bytes().to_vec();
            for line in &lines {
                text.extend_from_slice(line.as_bytes());
                text.extend_from_slice(b"\r\n");
            }
            text.extend_from_slice(&noise);
            text.extend_from_slice(end.as_bytes());
            text.extend_from_slice(b"REST");
            let mut pending = BytesMut::from(&text[..]);
            if let Ok(Some(head)) = parse_head(&mut pending) {
                proptest::prop_assert!(pending.ends_with(b"REST"));
                proptest::prop_assert!(matches!(
                    head.framing,
                    Framing::Length(_) | Framing::ChunkSize
                ));
            }
        }

        /// A chunked body read in any pieces reads as it does whole.
        #[test]
        fn a_chunked_body_reads_the_same_in_any_pieces(
            chunks in proptest::collection::vec("[a-z]{0,9}", 0..5),
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
            cut in 0usize..64,
        ) {
            let mut wire = Vec::new();
            for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                wire.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            wire.extend_from_slice(&junk);
            let read = |pieces: &[&[u8]]| {
                let mut decoder = BodyDecoder::new(Framing::ChunkSize);
                let mut pending = BytesMut::new();
                let mut body = Vec::new();
                for (i, piece) in pieces.iter().enumerate() {
                    pending.extend_from_slice(piece);
                    loop {
                        match decoder.decode(&mut pending) {
                            Decoded::Piece(piece) => body.extend_from_slice(&piece),
                            // What is left after the end: the rest of this read and
                            // the reads after it.
                            Decoded::End => {
                                let mut rest = pending.to_vec();
                                pieces[i + 1..].iter().for_each(|p| rest.extend_from_slice(p));
                                return Some((body, rest));
                            }
                            Decoded::More(_) => break,
                            Decoded::Invalid(_) => return None,
                        }
                    }
                }
                None
            };
            let cut = cut.min(wire.len());
            let whole = read(&[&wire]);
            proptest::prop_assert_eq!(read(&[&wire[..cut], &wire[cut..]]), whole.clone());
            let (body, rest) = whole.expect("a well-formed body ends");
            proptest::prop_assert_eq!(body, chunks.concat().into_bytes());
            proptest::prop_assert_eq!(rest, junk);
        }
    }
}
