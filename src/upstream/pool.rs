//! Keep-alive HTTP/1.1 connections to one upstream origin (`http`, or `https` over
//! TLS with ALPN `http/1.1`), driven from the task of the request that uses them.
//!
//! Nobody else reads or writes a pooled connection's socket: whoever holds a
//! [`PooledConnection`] writes the request and reads the answer itself, so the
//! socket is served by the request's own task, without a connection task to hand
//! every body piece across (what reqwest, through hyper-util's pool, does: a wake-up,
//! often on the other CPU, per hand-off; bench/README.md has what that cost). The
//! connection is our own HTTP/1.1 client (`http1.rs`), which holds no buffer while
//! it waits.
//!
//! A connection is checked out for one request and its whole answer, then put
//! back; an answer that is dropped before its end takes the connection with it
//! (closing the socket, which is how an upstream learns that the client left).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::net::TcpStream;

use super::http1::{self, Connection};
use super::UpstreamError;
use crate::shard::Sharded;

/// What a pooled connection reads and writes: the TCP socket, or TLS over it for
/// an `https` origin (boxed: the TLS state is large and plain origins are the
/// common case here).
pub(super) enum Socket {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Socket::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Socket::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Socket::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Plain(tcp) => tcp.is_write_vectored(),
            Socket::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Socket::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Socket::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An `http://` proxy the environment names for an origin: connections go to it,
/// plain-http requests in absolute form, https ones through a `CONNECT` tunnel.
pub(super) struct Proxy {
    pub(super) host: String,
    pub(super) port: u16,
    /// `Proxy-Authorization` (Basic, from the proxy URL's user and password).
    pub(super) authorization: Option<http::HeaderValue>,
}

/// The longest answer to `CONNECT` read (its head; a proxy sends no body with 2xx).
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// Open a tunnel to `authority` through a proxy connection: `CONNECT`, then its
/// answer's head, which must be 2xx. The proxy's refusal is the error's text.
async fn tunnel(
    tcp: &mut TcpStream,
    authority: &str,
    authorization: Option<&http::HeaderValue>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    if let Some(credentials) = authorization {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(credentials.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    tcp.write_all(&head).await?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    // Read byte runs until the head ends; nothing past it is sent before TLS starts.
    let end = loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(
                "the proxy closed the connection before answering CONNECT",
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if answer.len() > MAX_CONNECT_ANSWER {
            return Err(std::io::Error::other(
                "the proxy's answer to CONNECT is too long",
            ));
        }
    };
    let status_line = String::from_utf8_lossy(&answer[..end]);
    let status_line = status_line.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with('2') || end + 4 != answer.len() {
        return Err(std::io::Error::other(format!(
            "the proxy refused the tunnel: {status_line}"
        )));
    }
    Ok(())
}

/// How an `https` origin's connections start TLS: the shared client settings and
/// the name its certificate must carry (SNI).
pub(super) struct TlsOrigin {
    pub(super) connector: tokio_rustls::TlsConnector,
    pub(super) server_name: rustls::pki_types::ServerName<'static>,
}
/// One keep-alive connection (boxed in the pool: it moves in and out of it).
pub(super) type PooledConnection = Connection<Socket>;

struct Idle {
    connection: Box<PooledConnection>,
    since: Instant,
}

/// The idle connections to one origin (host and port), most recently used last,
/// per serving thread ([`crate::shard`]). A socket belongs to the runtime whose I/O
/// driver it was registered with: used from another thread's runtime it still
/// works, but every readiness event then has to cross threads, which is what
/// thread-per-core serving avoids.
pub(super) struct Pool {
    host: String,
    port: u16,
    /// `Some` for an `https` origin.
    tls: Option<TlsOrigin>,
    /// The proxy its connections go through, if the environment names one.
    proxy: Option<Proxy>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Per shard.
    max_idle: usize,
    shards: Sharded<Mutex<VecDeque<Idle>>>,
}

impl Pool {
    pub(super) fn new(
        host: String,
        port: u16,
        tls: Option<TlsOrigin>,
        proxy: Option<Proxy>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Pool {
        Pool {
            host,
            port,
            tls,
            proxy,
            connect_timeout,
            idle_timeout,
            max_idle,
            shards: Sharded::default(),
        }
    }

    /// This thread's idle connections.
    fn idle(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        let shard = self.shards.local_to_runtime();
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that has not been idle too long (the
    /// likeliest to be still open; stale ones are dropped, closing them).
    fn checkout(&self) -> Option<Box<PooledConnection>> {
        let mut idle = self.idle();
        let fresh = idle.pop_back()?;
        if fresh.since.elapsed() < self.idle_timeout {
            return Some(fresh.connection);
        }
        // The newest one is stale, so all of them are.
        idle.clear();
        None
    }

    fn checkin(&self, connection: Box<PooledConnection>) {
        let now = Instant::now();
        let mut idle = self.idle();
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle {
                connection,
                since: now,
            });
        }
    }

    /// A new connection (boxed: it is large, and moves in and out of the pool). The
    /// connect timeout covers the TLS handshake of an `https` origin too.
    async fn connect(&self) -> Result<Box<PooledConnection>, UpstreamError> {
        let open = async {
            let tcp = match &self.proxy {
                None => TcpStream::connect((self.host.as_str(), self.port)).await?,
                Some(proxy) => TcpStream::connect((proxy.host.as_str(), proxy.port)).await?,
            };
            // Small SSE writes must not wait on Nagle's algorithm.
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => Ok(Socket::Plain(tcp)),
                // Boxed: the TLS states (the proxy tunnel, the handshake) are most of
                // this future, and inline they would make a plain connect as large.
                Some(tls) => Box::pin(self.secure(tcp, tls)).await,
            }
        };
        let socket = match tokio::time::timeout(self.connect_timeout, open).await {
            Err(_) => return Err(UpstreamError::ConnectTimeout(self.connect_timeout)),
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Ok(Ok(socket)) => socket,
        };
        Ok(Box::new(Connection::new(socket)))
    }

    /// TLS over a connected socket: through the proxy's tunnel first when there is
    /// one.
    async fn secure(&self, mut tcp: TcpStream, tls: &TlsOrigin) -> std::io::Result<Socket> {
        if let Some(proxy) = &self.proxy {
            let authority = if self.host.contains(':') {
                format!("[{}]:{}", self.host, self.port)
            } else {
                format!("{}:{}", self.host, self.port)
            };
            tunnel(&mut tcp, &authority, proxy.authorization.as_ref()).await?;
        }
        let stream = tls.connector.connect(tls.server_name.clone(), tcp).await?;
        Ok(Socket::Tls(Box::new(stream)))
    }

    /// Send a request on an idle connection (or a new one) and return the response
    /// head with a body that reads on through the connection. A request that an
    /// idle connection could not even start to send (the upstream had closed it) is
    /// sent again on another; one that was written, even in part, is never sent
    /// twice (the upstream may have acted on it).
    /// `head`: the request's head as `http1::request_head` writes it.
    pub(super) async fn send(
        self: &std::sync::Arc<Self>,
        method: &Method,
        head: &[u8],
        body: &Bytes,
    ) -> Result<(http::response::Parts, PooledBody), UpstreamError> {
        loop {
            let (mut connection, reused) = match self.checkout() {
                Some(connection) => (connection, true),
                // Boxed: connecting is rare, and its future inline would make every
                // request's future larger.
                None => (Box::pin(self.connect()).await?, false),
            };
            if reused && !connection.is_reusable() {
                continue; // closed while idle: dropped
            }
            match connection.write_request(head, body).await {
                Ok(()) => {}
                Err(failed) if reused && failed.written == 0 => continue,
                Err(failed) => {
                    return Err(UpstreamError::Request(http1::Http1Error::Io(failed.error)))
                }
            }
            let head = connection
                .read_head(method)
                .await
                .map_err(UpstreamError::Request)?;
            let body = PooledBody {
                connection: Some(connection),
                pool: self.clone(),
            };
            return Ok((head, body));
        }
    }
}

/// A response body read through its pooled connection, which goes back to the pool
/// when the body has been read to its end.
pub(super) struct PooledBody {
    /// `None` once the body has ended (the connection is back in the pool) or failed.
    connection: Option<Box<PooledConnection>>,
    pool: std::sync::Arc<Pool>,
}

impl PooledBody {
    /// The next piece of the body, `None` at its end.
    pub(super) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        let Some(connection) = self.connection.as_mut() else {
            return Poll::Ready(None);
        };
        match connection.poll_body(cx) {
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(data))),
            Poll::Ready(Some(Err(e))) => {
                // The connection is in an unknown state: drop it.
                self.connection = None;
                Poll::Ready(Some(Err(UpstreamError::Body(e))))
            }
            Poll::Ready(None) => {
                // Whether the upstream has closed it since is checked at checkout.
                if let Some(connection) = self.connection.take() {
                    if connection.answer_complete() {
                        self.pool.checkin(connection);
                    }
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
