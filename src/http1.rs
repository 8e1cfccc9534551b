//! HTTP/1.1 message framing (RFC 9112, sections 6 and 7), shared by both sides of
//! the gateway that speak it: the server side of plain client connections
//! (`server::http1`) and the upstream connections (`upstream::http1`).
//!
//! What is here reads bytes and decides; the sockets, the buffers' lifetimes and
//! what an error means to the other side stay with each caller.

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderName};

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
    /// The next piece of the body: the pending bytes it was read in, no copy (a
    /// run of whole chunks has their framing taken out in place).
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
                    if self.framing == Framing::ChunkData(due as u64) {
                        return Decoded::Piece(self.gather_chunks(pending, due));
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
                Framing::ChunkSize => match parse_chunk_size(pending) {
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
                        Some(end) if end > MAX_TRAILERS => {
                            Decoded::Invalid("the trailers are too long")
                        }
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
    split_front(pending, n).freeze()
}

impl BodyDecoder {
    /// A whole chunk's data, `first` bytes at the start of `pending`, joined by the
    /// data of the whole chunks that follow it there, up to [`GATHER_MAX`]: their
    /// framing is dropped and their data moved up behind it, in place. A burst of
    /// small chunks (a stream's events, each its own chunk, read together) is
    /// handed out as one piece rather than one each: every piece handed out costs
    /// its reader a round through the layers above (the SSE reader's poll, the
    /// connection's and the body's), several times what moving its bytes costs.
    /// Whatever does not follow as a whole chunk (a partial one, the last chunk,
    /// a size line that is not valid) is left for [`BodyDecoder::decode`], with
    /// the framing that says what comes next.
    fn gather_chunks(&mut self, pending: &mut BytesMut, first: usize) -> Bytes {
        // The gathered data is `pending[..end]`; what comes after it starts at `at`.
        let (mut end, mut at) = (first, first);
        self.framing = Framing::ChunkEnd;
        while pending[at..].starts_with(b"\r\n") {
            at += 2;
            self.framing = Framing::ChunkSize;
            let (line, size) = match parse_chunk_size(&pending[at..]) {
                Ok(httparse::Status::Complete((line, size)))
                    if line <= MAX_CHUNK_LINE && size > 0 =>
                {
                    (line, size)
                }
                _ => break,
            };
            let data = at + line;
            let fits = size <= (GATHER_MAX - end) as u64 && size <= (pending.len() - data) as u64;
            if !fits {
                break;
            }
            let size = size as usize;
            pending.copy_within(data..data + size, end);
            end += size;
            at = data + size;
            self.framing = Framing::ChunkEnd;
        }
        let mut piece = split_front(pending, at);
        piece.truncate(end);
        piece.freeze()
    }
}

/// httparse's reading of a chunk-size line, the usual line (hex digits and CRLF,
/// what every server writes) read here first: httparse's general loop cost about
/// four times as much for it, once for every event of a stream. What the short way
/// accepts, httparse accepts with the same size; anything else goes to httparse.
fn parse_chunk_size(
    line: &[u8],
) -> Result<httparse::Status<(usize, u64)>, httparse::InvalidChunkSize> {
    let mut size: u64 = 0;
    // Sixteen bytes at most: up to 15 digits and the CR (httparse's own limit is
    // 16 digits, which still fit a u64); a longer line goes to httparse.
    for (at, &byte) in line.iter().enumerate().take(16) {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            b'A'..=b'F' => byte - b'A' + 10,
            b'\r' if at > 0 && line.get(at + 1) == Some(&b'\n') => {
                return Ok(httparse::Status::Complete((at + 2, size)));
            }
            _ => break,
        };
        size = size << 4 | u64::from(digit);
    }
    httparse::parse_chunk_size(line)
}

/// The first `n` bytes of `pending`, split off (sharing its allocation; all of
/// them leaves `pending` holding none).
pub fn split_front(pending: &mut BytesMut, n: usize) -> BytesMut {
    if n == pending.len() {
        std::mem::take(pending)
    } else {
        pending.split_to(n)
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

/// What a head's framing and connection headers say, noted line by line as the
/// head is read: one comparison of each name with a few standard ones, instead
/// of a lookup in the header map (a hash of the name) for each question after.
#[derive(Clone, Copy, Debug)]
pub struct HeadFacts {
    /// The `Content-Length` declared: `Ok(None)` without one; an error when one
    /// is not a number or two disagree (`Content-Length: 5, 5` and repeated lines
    /// are one length if they agree).
    pub length: Result<Option<u64>, &'static str>,
    /// The `Transfer-Encoding` codings listed, across its lines.
    pub codings: u32,
    /// Whether the last coding listed is `chunked`.
    pub last_chunked: bool,
    /// `Connection` lists `close` / `keep-alive`.
    pub close: bool,
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expects_continue: bool,
}

impl Default for HeadFacts {
    fn default() -> Self {
        HeadFacts {
            length: Ok(None),
            codings: 0,
            last_chunked: false,
            close: false,
            keep_alive: false,
            expects_continue: false,
        }
    }
}

impl HeadFacts {
    /// Note one header line.
    pub fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONTENT_LENGTH {
            for part in value.split(|&b| b == b',') {
                let seen = self.length;
                self.length = seen.and_then(|seen| match (digits(part.trim_ascii()), seen) {
                    (None, _) => Err("Content-Length is not a number"),
                    (Some(n), Some(seen)) if n != seen => {
                        Err("Content-Length has two different values")
                    }
                    (Some(n), _) => Ok(Some(n)),
                });
            }
        } else if *name == header::TRANSFER_ENCODING {
            for coding in tokens(value) {
                self.codings = self.codings.saturating_add(1);
                self.last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if *name == header::CONNECTION {
            for token in tokens(value) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if *name == header::EXPECT {
            self.expects_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }

    /// Whether the connection stays open after a message of `version` with these
    /// headers: HTTP/1.1 unless it says `Connection: close`, HTTP/1.0 only if it
    /// says `keep-alive`.
    pub fn keeps_alive(&self, version: http::Version) -> bool {
        if version == http::Version::HTTP_10 {
            self.keep_alive
        } else {
            !self.close
        }
    }
}

/// The non-empty items of a comma-separated header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty())
}

/// A decimal number of ASCII digits only (no sign, no spaces), if it fits a u64.
fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// Whether a `Connection` header's value lists `close` (any case).
pub fn connection_says_close(value: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(b"close"))
}

/// The facts of a head with these header lines (tests of both sides).
#[cfg(test)]
pub(crate) fn facts_of(lines: &[(&str, &str)]) -> HeadFacts {
    let mut facts = HeadFacts::default();
    for (name, value) in lines {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a header name");
        facts.note(&name, value.as_bytes());
    }
    facts
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
        assert_eq!(
            decode_all(Framing::ChunkSize, b"5\r\nhel"),
            Err("incomplete")
        );
    }

    /// A body fed to the decoder in reads of `step` bytes: its pieces, then what
    /// was left after its end (or why it failed).
    fn decode_in_steps(input: &[u8], step: usize) -> (Vec<Bytes>, Result<Vec<u8>, &'static str>) {
        let mut decoder = BodyDecoder::new(Framing::ChunkSize);
        let (mut pending, mut fed, mut pieces) = (BytesMut::new(), 0, Vec::new());
        loop {
            match decoder.decode(&mut pending) {
                Decoded::Piece(piece) => pieces.push(piece),
                Decoded::End => {
                    pending.extend_from_slice(&input[fed..]);
                    return (pieces, Ok(pending.to_vec()));
                }
                Decoded::Invalid(why) => return (pieces, Err(why)),
                Decoded::More(_) if fed == input.len() => return (pieces, Err("incomplete")),
                Decoded::More(_) => {
                    let next = (fed + step).min(input.len());
                    pending.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn whole_chunks_read_together_come_out_as_one_piece() {
        let sizes = [1, 5, 200, 3, 0x1f, 64];
        let mut wire = Vec::new();
        let mut body = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*size)
                .map(|b| b"abcdefghij\r\n"[(b + i) % 12])
                .collect();
            let ext = if i % 2 == 1 { ";name=value" } else { "" };
            wire.extend_from_slice(format!("{size:x}{ext}\r\n").as_bytes());
            wire.extend_from_slice(&data);
            wire.extend_from_slice(b"\r\n");
            body.extend_from_slice(&data);
        }
        wire.extend_from_slice(b"0\r\nTrailer: x\r\n\r\nNEXT");
        // All of it in one read: one piece.
        let (pieces, rest) = decode_in_steps(&wire, wire.len());
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0], body);
        assert_eq!(rest.unwrap(), b"NEXT");
        // Any reads: the same bytes, whatever the pieces.
        for step in 1..=9 {
            let (pieces, rest) = decode_in_steps(&wire, step);
            assert_eq!(pieces.concat(), body, "reads of {step}");
            assert_eq!(rest.unwrap(), b"NEXT", "reads of {step}");
        }
    }

    #[test]
    fn gathered_pieces_stay_bounded_and_leave_bad_framing_to_be_refused() {
        // Whole chunks beyond the gathering bound start the next piece.
        let chunk = vec![b'x'; GATHER_MAX / 3 + 1];
        let mut wire = Vec::new();
        for _ in 0..4 {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(&chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let (pieces, rest) = decode_in_steps(&wire, wire.len());
        assert_eq!(
            pieces.iter().map(Bytes::len).collect::<Vec<_>>(),
            [chunk.len() * 2; 2]
        );
        assert_eq!(rest.unwrap(), b"");
        // A size line that is not hex, one too long, data longer than its size: the
        // chunks before it are handed out, then the body is refused.
        let long_line = format!("3;{}\r\nabc\r\n", "e".repeat(MAX_CHUNK_LINE));
        let cases: [(&[u8], &str); 3] = [
            (b"2\r\nab\r\nzz\r\n", "a chunk size is not hex"),
            (long_line.as_bytes(), "a chunk-size line is too long"),
            (
                b"2\r\nab\r\n1\r\ncd\r\n",
                "a chunk's data is longer than its size says",
            ),
        ];
        for (bad, why) in cases {
            let mut wire = b"2\r\nab\r\n".to_vec();
            wire.extend_from_slice(bad);
            let (pieces, end) = decode_in_steps(&wire, wire.len());
            assert_eq!(end, Err(why));
            assert!(pieces.concat().starts_with(b"ab"), "{why}");
        }
    }

    #[test]
    fn chunk_size_lines_read_as_httparse_reads_them() {
        let mut lines: Vec<Vec<u8>> = [
            "0\r\n",
            "e6\r\n",
            "E6\r\n",
            "fFfFfFfFfFfFfFf\r\n",
            "ffffffffffffffff\r\n",
            "1ffffffffffffffff\r\n",
            "\r\n",
            "5;ext=1\r\n",
            "5 \r\n",
            "5\n",
            "5\r",
            "5",
            "5\rx",
            "g\r\n",
            "-1\r\n",
            "0x5\r\n",
            " 5\r\n",
            "5\r\n\r\n",
            "12\r\nabc",
        ]
        .iter()
        .map(|line| line.as_bytes().to_vec())
        .collect();
        // And every line of up to three bytes from a small alphabet.
        let alphabet = b"0aF;\r\n g";
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    lines.push(vec![*a, *b, *c]);
                }
            }
        }
        for line in lines {
            assert_eq!(
                parse_chunk_size(&line),
                httparse::parse_chunk_size(&line),
                "{:?}",
                String::from_utf8_lossy(&line)
            );
        }
    }

    use super::facts_of as facts;

    #[test]
    fn lengths_codings_and_tokens() {
        assert_eq!(facts(&[]).length, Ok(None));
        let agree = [("content-length", "5, 5"), ("Content-Length", "5")];
        assert_eq!(facts(&agree).length, Ok(Some(5)));
        for bad in ["5, 6", "+5", "5 5", "", "0x5", "99999999999999999999", "-1"] {
            let lines = [("content-length", "5"), ("content-length", bad)];
            assert!(facts(&lines).length.is_err(), "{bad:?}");
        }
        assert_eq!(facts(&[("content-length", " 0012 ")]).length, Ok(Some(12)));
        let connection = [("connection", "Keep-Alive, Upgrade")];
        assert!(facts(&connection).keeps_alive(http::Version::HTTP_10));
        assert!(facts(&connection).keeps_alive(http::Version::HTTP_11));
        let close = [("connection", "upgrade ,close")];
        assert!(!facts(&close).keeps_alive(http::Version::HTTP_11));
        assert!(!facts(&[]).keeps_alive(http::Version::HTTP_10));
        let codings = facts(&[
            ("transfer-encoding", "gzip, "),
            ("transfer-encoding", "Chunked"),
        ]);
        assert_eq!((codings.codings, codings.last_chunked), (2, true));
        let codings = facts(&[("transfer-encoding", "chunked, gzip")]);
        assert_eq!((codings.codings, codings.last_chunked), (2, false));
        assert!(facts(&[("expect", "100-Continue")]).expects_continue);
        assert!(connection_says_close(b"x, Close"));
        assert!(!connection_says_close(b"keep-alive, closed"));
    }
}
