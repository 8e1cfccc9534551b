//! HTTP/1.1 message framing (RFC 9112, sections 6 and 7), shared by both sides of
//! the gateway that speak it: the server side of plain client connections
//! (`server::http1`) and the upstream connections (`upstream::http1`).
//!
//! What is here reads bytes and decides; the sockets, the buffers' lifetimes and
//! what an error means to the other side stay with each caller.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

/// The longest chunk-size line (with its extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The longest trailer section accepted (trailers are read and dropped).
pub const MAX_TRAILERS: usize = 64 * 1024;
/// The most of a body or chunk gathered before it is handed out.
pub const GATHER_MAX: usize = 64 * 1024;

/// Where a reader is in a message body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes still to come.
    Length(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// This many bytes of the current chunk still to come.
    ChunkData(u64),
    /// The CRLF that ends a chunk's data is next.
    ChunkEnd,
    /// The trailer section (maybe empty) after the last chunk is next.
    Trailers,
    /// Everything until the peer closes the connection (responses only).
    UntilClose,
    /// The body has ended (or there was none).
    Done,
}

/// What [`BodyDecoder::decode`] found at the start of the pending bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The next piece of the body: the pending bytes it was read in, no copy.
    Piece(Bytes),
    /// The body has ended; what is left pending comes after it.
    End,
    /// More bytes are needed. `Some(n)`: a piece of `n` bytes is due and in
    /// flight, worth reading into a buffer of that size; `None`: framing is next
    /// (a size line, a chunk's end, trailers), a small read will do.
    More(Option<usize>),
    /// The bytes break the framing.
    Invalid(&'static str),
}

/// Reads one message body out of a connection's pending bytes, as its framing
/// says. Bounded: a chunk-size line past [`MAX_CHUNK_LINE`] or trailers past
/// [`MAX_TRAILERS`] are refused whatever the reads they come in, and trailers are
/// searched for their end once, not again from the start after every read.
#[derive(Clone, Copy, Debug)]
pub struct BodyDecoder {
    pub framing: Framing,
    /// How much of the pending bytes was searched for the end of the trailers.
    scanned: usize,
}

impl BodyDecoder {
    pub const DONE: BodyDecoder = BodyDecoder::new(Framing::Done);

    pub const fn new(framing: Framing) -> BodyDecoder {
        BodyDecoder {
            framing,
            scanned: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// The next step of the body in `pending`: a piece (split off `pending`), its
    /// end, or what more it needs.
    pub fn decode(&mut self, pending: &mut BytesMut) -> Decoded {
        loop {
            match self.framing {
                Framing::Done => return Decoded::End,
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Decoded::End;
                }
                Framing::Length(left) | Framing::ChunkData(left) => {
                    // What is due has been announced and is in flight: gathered (up
                    // to a bound) and handed out whole, so that a body or an event
                    // comes as one piece, read in place.
                    let due = left.min(GATHER_MAX as u64) as usize;
                    if pending.len() < due {
                        return Decoded::More(Some(due));
                    }
                    let piece = take(pending, due);
                    let taken = due as u64;
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(left - taken),
                        _ if taken == left => Framing::ChunkEnd,
                        _ => Framing::ChunkData(left - taken),
                    };
                    return Decoded::Piece(piece);
                }
                Framing::UntilClose => {
                    if pending.is_empty() {
                        return Decoded::More(None);
                    }
                    let all = pending.len();
                    return Decoded::Piece(take(pending, all));
                }
                // Parsed once its line has ended.
                Framing::ChunkSize if memchr::memchr(b'\n', pending).is_none() => {
                    return match pending.len() > MAX_CHUNK_LINE {
                        true => Decoded::Invalid("a chunk-size line is too long"),
                        false => Decoded::More(None),
                    };
                }
                Framing::ChunkSize => match httparse::parse_chunk_size(pending) {
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => {
                        return Decoded::Invalid("a chunk-size line is too long");
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        pending.advance(used);
                        self.framing = match size {
                            0 => Framing::Trailers,
                            size => Framing::ChunkData(size),
                        };
                    }
                    Ok(httparse::Status::Partial) if pending.len() > MAX_CHUNK_LINE => {
                        return Decoded::Invalid("a chunk-size line is too long");
                    }
                    Ok(httparse::Status::Partial) => return Decoded::More(None),
                    Err(_) => return Decoded::Invalid("a chunk size is not hex"),
                },
                Framing::ChunkEnd => {
                    if pending.len() < 2 {
                        return Decoded::More(None);
                    }
                    if !pending.starts_with(b"\r\n") {
                        return Decoded::Invalid("a chunk's data is longer than its size says");
                    }
                    pending.advance(2);
                    self.framing = Framing::ChunkSize;
                }
                Framing::Trailers => {
                    let end = if pending.starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        // Searched from where the last search stopped.
                        let from = self.scanned.saturating_sub(3);
                        self.scanned = pending.len();
                        memchr::memmem::find(&pending[from..], b"\r\n\r\n").map(|at| from + at + 4)
                    };
                    return match end {
                        Some(end) if end > MAX_TRAILERS => Decoded::Invalid("the trailers are too long"),
                        Some(end) => {
                            self.scanned = 0;
                            pending.advance(end);
                            self.framing = Framing::Done;
                            Decoded::End
                        }
                        None if pending.len() > MAX_TRAILERS => {
                            Decoded::Invalid("the trailers are too long")
                        }
                        None => Decoded::More(None),
                    };
                }
            }
        }
    }
}

/// The first `n` pending bytes, handed out; they share the read's allocation.
fn take(pending: &mut BytesMut, n: usize) -> Bytes {
    if n == pending.len() {
        std::mem::take(pending).freeze()
    } else {
        pending.split_to(n).freeze()
    }
}

/// Whether `bytes` holds the empty line that ends a head, searched from `from` (and
/// the two bytes before it, where a line end may have begun). httparse, like hyper,
/// takes a bare LF as a line end too.
pub fn ends_head(bytes: &[u8], from: usize) -> bool {
    let start = from.min(bytes.len()).saturating_sub(2);
    memchr::memchr_iter(b'\n', &bytes[start..]).any(|at| {
        let rest = &bytes[start + at + 1..];
        rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
    })
}

/// The length the `Content-Length` headers declare: `None` without one; an error
/// when one is not a number or two disagree (`Content-Length: 5, 5` and repeated
/// lines are one length if they agree).
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or("Content-Length is not a number")?;
            if length.is_some_and(|seen| seen != n) {
                return Err("Content-Length has two different values");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The codings `Transfer-Encoding` lists, in order, across all its lines; `None`
/// when there is no such header.
pub fn transfer_codings(headers: &HeaderMap) -> Option<impl Iterator<Item = &[u8]>> {
    let mut values = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .peekable();
    values.peek()?;
    Some(
        values
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .map(|coding| coding.trim_ascii())
            .filter(|coding| !coding.is_empty()),
    )
}

/// Whether a `Connection` header lists `token` (any case).
pub fn connection_says(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
}

/// Whether the connection stays open after a message of `version` with `headers`:
/// HTTP/1.1 unless it says `Connection: close`, HTTP/1.0 only if it says
/// `keep-alive`.
pub fn keeps_alive(version: http::Version, headers: &HeaderMap) -> bool {
    if version == http::Version::HTTP_10 {
        connection_says(headers, b"keep-alive")
    } else {
        !connection_says(headers, b"close")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
        let mut decoder = BodyDecoder::new(framing);
        let mut pending = BytesMut::from(input);
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut pending) {
                Decoded::Piece(piece) => body.extend_from_slice(&piece),
                Decoded::End => return Ok((body, pending.to_vec())),
                Decoded::More(_) => return Err("incomplete"),
                Decoded::Invalid(why) => return Err(why),
            }
        }
    }

    #[test]
    fn chunked_bodies_end_where_they_say_and_leave_what_follows() {
        let (body, rest) = decode_all(
            Framing::ChunkSize,
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT",
        )
        .unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(rest, b"NEXT");
        let (body, rest) = decode_all(Framing::Length(3), b"abcdef").unwrap();
        assert_eq!((&body[..], &rest[..]), (&b"abc"[..], &b"def"[..]));
        assert_eq!(
            decode_all(Framing::ChunkSize, b"3\r\nabcd\r\n0\r\n\r\n"),
            Err("a chunk's data is longer than its size says")
        );
        assert_eq!(
            decode_all(Framing::ChunkSize, b"zz\r\n"),
            Err("a chunk size is not hex")
        );
        assert_eq!(decode_all(Framing::ChunkSize, b"5\r\nhel"), Err("incomplete"));
    }

    #[test]
    fn lengths_and_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(content_length(&headers), Ok(None));
        headers.append("content-length", "5, 5".parse().unwrap());
        headers.append("content-length", "5".parse().unwrap());
        assert_eq!(content_length(&headers), Ok(Some(5)));
        headers.append("content-length", "6".parse().unwrap());
        assert!(content_length(&headers).is_err());
        let mut headers = HeaderMap::new();
        headers.append("content-length", "+5".parse().unwrap());
        assert!(content_length(&headers).is_err());
        headers.insert("connection", "Keep-Alive, Upgrade".parse().unwrap());
        assert!(keeps_alive(http::Version::HTTP_10, &headers));
        assert!(keeps_alive(http::Version::HTTP_11, &headers));
        headers.insert("connection", "close".parse().unwrap());
        assert!(!keeps_alive(http::Version::HTTP_11, &headers));
        headers.append("transfer-encoding", "gzip, ".parse().unwrap());
        headers.append("transfer-encoding", "Chunked".parse().unwrap());
        let codings: Vec<&[u8]> = transfer_codings(&headers).unwrap().collect();
        assert_eq!(codings, [&b"gzip"[..], &b"Chunked"[..]]);
        assert!(transfer_codings(&HeaderMap::new()).is_none());
    }
}
