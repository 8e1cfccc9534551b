//! The HTTP/1.1 client connection against scripted upstream bytes, delivered whole
//! and a few bytes at a time.

use super::*;

/// A socket whose reads give the scripted answer `step` bytes at a time, then end
/// of file (or wait forever, when `open`); writes are collected.
struct Scripted {
    answer: Vec<u8>,
    at: usize,
    step: usize,
    open: bool,
    written: Vec<u8>,
}

impl Scripted {
    fn new(answer: &[u8], step: usize) -> Self {
        Scripted {
            answer: answer.to_vec(),
            at: 0,
            step,
            open: false,
            written: Vec::new(),
        }
    }

    fn open(mut self) -> Self {
        self.open = true;
        self
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = self.answer.len() - self.at;
        if left == 0 && self.open {
            return Poll::Pending;
        }
        let n = left.min(self.step).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.answer[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Read a whole answer: its head and the body's pieces, or the first error.
async fn read_answer(
    connection: &mut Connection<Scripted>,
    method: &Method,
) -> Result<(http::response::Parts, Vec<Bytes>), Http1Error> {
    let head = connection.read_head(method).await?;
    let mut pieces = Vec::new();
    while let Some(piece) = std::future::poll_fn(|cx| connection.poll_body(cx)).await {
        pieces.push(piece?);
    }
    Ok((head, pieces))
}

/// The answer's head and its body joined, at every delivery step from one byte to
/// all at once (each must give the same), and whether the connection may be reused
/// after it (the upstream keeps it open).
async fn body_of(answer: &[u8]) -> Result<(http::response::Parts, Vec<u8>, bool), Http1Error> {
    answered(answer, true).await
}

/// [`body_of`] with the upstream closing the connection after the answer.
async fn body_before_close(answer: &[u8]) -> Result<(http::response::Parts, Vec<u8>), Http1Error> {
    answered(answer, false)
        .await
        .map(|(head, body, _)| (head, body))
}

async fn answered(
    answer: &[u8],
    open: bool,
) -> Result<(http::response::Parts, Vec<u8>, bool), Http1Error> {
    let mut outcome = None;
    for step in [1, 2, 3, 7, 64, usize::MAX] {
        let mut script = Scripted::new(answer, step);
        script.open = open;
        let mut connection = Connection::new(script);
        // A script that leaves the connection open never wakes a waiting read: an
        // answer taken as unfinished would wait forever, so it fails the test.
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_answer(&mut connection, &Method::POST),
        )
        .await
        .unwrap_or_else(|_| panic!("step {step}: still waiting for the answer's end"))
        .map(|(head, pieces)| (head, pieces.concat(), connection.is_reusable()));
        match (&outcome, result) {
            (None, result) => outcome = Some(result),
            (Some(Ok((_, body, reusable))), Ok((_, again, reusable_again))) => {
                assert_eq!((body, reusable), (&again, &reusable_again), "step {step}");
            }
            (Some(Err(first)), Err(again)) => {
                assert_eq!(first.to_string(), again.to_string(), "step {step}")
            }
            (Some(first), again) => panic!("step {step}: {first:?} then {again:?}"),
        }
    }
    outcome.unwrap()
}

/// Only the headers the gateway reads are kept from an answer's head (`KEPT_HEADERS`),
/// whatever their spelling; the rest (an OpenAI answer's request ids and rate-limit
/// counters) are dropped unread.
#[tokio::test]
async fn only_the_headers_the_gateway_reads_are_kept() {
    let (head, body, reusable) = body_of(
        b"HTTP/1.1 429 Too Many Requests\r\nDate: Sun, 06 Dec 2026 05:00:00 GMT\r\n\
          x-request-id: req_123\r\nContent-TYPE: application/json\r\n\
          x-ratelimit-remaining-requests: 0\r\nRETRY-AFTER: 7\r\n\
          openai-processing-ms: 12\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    assert_eq!(head.status, StatusCode::TOO_MANY_REQUESTS);
    let kept: Vec<(&str, &str)> = head
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
        .collect();
    assert_eq!(
        kept,
        [
            ("content-type", "application/json"),
            ("retry-after", "7"),
            ("connection", "keep-alive"),
            ("content-length", "2"),
        ]
    );
    assert_eq!(body, b"{}");
    assert!(reusable);
}

#[tokio::test]
async fn a_length_framed_body_is_read_to_its_length_and_the_connection_kept() {
    let (head, body, reusable) =
        body_of(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"n\": 1234}")
            .await
            .unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.headers["content-type"], "application/json");
    assert_eq!(body, b"{\"n\": 1234}");
    assert!(reusable);
    // Large enough to be read straight into buffers of the size still due.
    let large: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut answer =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", large.len()).into_bytes();
    answer.extend_from_slice(&large);
    let (_, body, reusable) = body_of(&answer).await.unwrap();
    assert_eq!(body, large);
    assert!(reusable);
    let mut chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        large.len()
    )
    .into_bytes();
    chunked.extend_from_slice(&large);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (_, body, reusable) = body_of(&chunked).await.unwrap();
    assert_eq!(body, large);
    assert!(reusable);
}

#[tokio::test]
async fn chunked_bodies_lose_their_framing_extensions_and_trailers() {
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n";
    let (_, body, reusable) = body_of(answer).await.unwrap();
    assert_eq!(body, b"hello 0123456789");
    assert!(reusable);
    let (_, body, _) = body_of(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(body, b"abc");
}

#[tokio::test]
async fn chunks_that_arrived_together_are_handed_out_together() {
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        6\r\ndata:1\r\n6\r\ndata:2\r\n0\r\n\r\n";
    let mut connection = Connection::new(Scripted::new(answer, usize::MAX).open());
    let (_, pieces) = read_answer(&mut connection, &Method::POST).await.unwrap();
    assert_eq!(pieces, ["data:1data:2"]);
    assert!(connection.is_reusable());
}

#[tokio::test]
async fn nothing_is_buffered_while_the_connection_waits() {
    // One event arrived and was handed out; the next has not come.
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n";
    let mut connection = Connection::new(Scripted::new(answer, usize::MAX).open());
    connection.read_head(&Method::POST).await.unwrap();
    let first = std::future::poll_fn(|cx| connection.poll_body(cx)).await;
    assert_eq!(first.unwrap().unwrap(), "data:1");
    let mut cx = Context::from_waker(Waker::noop());
    assert!(connection.poll_body(&mut cx).is_pending());
    assert_eq!(connection.pending.capacity(), 0);
}

#[tokio::test]
async fn a_body_until_close_ends_the_connection() {
    let answer = b"HTTP/1.1 200 OK\r\n\r\nall of it";
    let (_, body) = body_before_close(answer).await.unwrap();
    assert_eq!(body, b"all of it");
    // Not chunked last: read to the close as well.
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc";
    let (_, body) = body_before_close(answer).await.unwrap();
    assert_eq!(body, b"3\r\nabc");
    // Such a connection is never reused, even before the upstream has closed it.
    let mut connection = Connection::new(Scripted::new(answer, usize::MAX).open());
    connection.read_head(&Method::POST).await.unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        connection.poll_body(&mut cx),
        Poll::Ready(Some(Ok(_)))
    ));
    assert!(connection.poll_body(&mut cx).is_pending());
    assert!(!connection.keep_alive);
}

#[tokio::test]
async fn which_answers_keep_the_connection() {
    for (answer, kept) in [
        (&b"HTTP/1.1 204 No Content\r\n\r\n"[..], true),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            true,
        ),
        // Two framings: chunked is read, and the connection is not trusted after.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
        ),
    ] {
        let (_, body, reusable) = body_of(answer).await.unwrap();
        assert!(body.is_empty());
        assert_eq!(reusable, kept, "{}", String::from_utf8_lossy(answer));
    }
    // Bytes past the answer's end: not reused either.
    let mut connection = Connection::new(Scripted::new(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        usize::MAX,
    ));
    read_answer(&mut connection, &Method::POST).await.unwrap();
    assert!(!connection.is_reusable());
    // The upstream closed it while idle.
    let mut connection = Connection::new(Scripted::new(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        usize::MAX,
    ));
    read_answer(&mut connection, &Method::POST).await.unwrap();
    assert!(!connection.is_reusable());
}

#[tokio::test]
async fn interim_answers_are_skipped_and_head_answers_have_no_body() {
    let (head, body, _) = body_of(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    )
    .await
    .unwrap();
    assert_eq!(head.status, StatusCode::CREATED);
    assert!(!head.headers.contains_key("link"));
    assert_eq!(body, b"ok");

    let mut connection = Connection::new(
        Scripted::new(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", usize::MAX).open(),
    );
    let (head, pieces) = read_answer(&mut connection, &Method::HEAD).await.unwrap();
    assert_eq!(head.headers["content-length"], "99");
    assert!(pieces.is_empty());
    assert!(connection.is_reusable());
}

#[tokio::test]
async fn broken_answers_are_errors_that_say_what_was_wrong() {
    let long_head = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let many_lines = format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "X-A: b\r\n".repeat(MAX_HEADERS + 1)
    );
    let long_size_line = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
        "x".repeat(crate::http1::MAX_CHUNK_LINE)
    );
    let long_trailers = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: {}",
        "t".repeat(crate::http1::MAX_TRAILERS)
    );
    let cases: [(&[u8], &str); 12] = [
        (
            b"",
            "closed the connection before the end of the response head",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Le",
            "closed the connection before the end of the response head",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "closed the connection before the end of the body",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            "closed the connection before the end of the body",
        ),
        (b"SMTP ready\r\n\r\n", "not HTTP/1.1: the response head"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "Content-Length is not a number",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            "two different values",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "a chunk size is not hex",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            "longer than its size says",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "101 Switching Protocols",
        ),
        (many_lines.as_bytes(), "more than 128 header lines"),
        (long_trailers.as_bytes(), "the trailers are too long"),
    ];
    for (answer, expected) in cases {
        let error = body_before_close(answer).await.unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{error:?} for {:?}",
            String::from_utf8_lossy(answer)
        );
    }
    let error = body_before_close(long_head.as_bytes())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("longer than 64 KiB"), "{error}");
    let error = body_before_close(long_size_line.as_bytes())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("chunk-size line is too long"), "{error}");
    // Lengths that agree are one length.
    let (_, body, _) =
        body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
    assert_eq!(body, b"ok");
}

#[test]
fn request_heads_spell_names_and_frame_the_body_themselves() {
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static("k"));
    headers.insert("x-custom-header", HeaderValue::from_static("v"));
    headers.append("accept", HeaderValue::from_static("a"));
    headers.append("accept", HeaderValue::from_static("b"));
    // A forwarded length or coding must not frame what the gateway sends.
    headers.insert("content-length", HeaderValue::from_static("999"));
    headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    let case = HeaderCase::of(["X-API-key"]);
    let head = request_head(
        &Method::POST,
        "/v1/chat/completions?x=1",
        &headers,
        &case,
        2,
    );
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "POST /v1/chat/completions?x=1 HTTP/1.1\r\nX-API-key: k\r\nX-Custom-Header: v\r\n\
         Accept: a\r\nAccept: b\r\nContent-Length: 2\r\n\r\n"
    );
    // An empty POST says so; a GET without a body says nothing.
    let empty = request_head(&Method::POST, "/", &HeaderMap::new(), &HeaderCase::NONE, 0);
    assert_eq!(empty, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    let get = request_head(
        &Method::GET,
        "/v1/models",
        &HeaderMap::new(),
        &HeaderCase::NONE,
        0,
    );
    assert_eq!(get, b"GET /v1/models HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn a_request_is_written_whole() {
    let mut connection = Connection::new(Scripted::new(b"", 1));
    connection
        .write_request(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n", b"body")
        .await
        .map_err(|f| f.error)
        .unwrap();
    assert_eq!(
        connection.io.written,
        b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
    );
}
