//! `https://` upstreams go through the gateway's own HTTP/1.1 pool over TLS (issue 19,
//! point 9): header names arrive spelled exactly as the config wrote them (reqwest,
//! which served https before, sent them in title case, and HTTP/2 would lowercase
//! them), the connection is kept alive between requests, ALPN offers `http/1.1`
//! only, and a certificate the platform does not trust is a 502 that says so.
//!
//! Through an `http://` proxy (`HTTPS_PROXY`), the same goes through a `CONNECT`
//! tunnel carrying the proxy's credentials.
//!
//! The upstream is a raw-bytes server behind TLS (an HTTP library would lowercase
//! the names it reports) with a certificate from a CA made here, which the gateway
//! trusts through `SSL_CERT_FILE` (read by the platform verifier on Linux). This file
//! holds one test so that setting the variable cannot race another test.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::{user, TestGateway};

/// What the TLS upstream saw: each request head as sent, the TLS connections it
/// accepted and the ALPN protocol each negotiated.
#[derive(Default)]
struct Seen {
    heads: Mutex<Vec<String>>,
    connections: AtomicUsize,
    alpn: Mutex<Vec<Option<Vec<u8>>>>,
}

/// A keep-alive HTTP/1.1 server on 127.0.0.1 behind TLS with `cert` / `key`,
/// answering every request with a chat completion.
async fn tls_upstream(cert: Vec<u8>, key: Vec<u8>) -> (u16, Arc<Seen>) {
    lm_proxy::server::install_crypto_provider();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
    // HTTP/2 preferred, as the providers' servers do: a client that offered it would
    // get it (and this HTTP/1.1-only server would not understand it).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = record.clone();
            tokio::spawn(async move {
                // A failed handshake (the untrusted-certificate case) ends here.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                seen.connections.fetch_add(1, Ordering::SeqCst);
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                seen.alpn.lock().unwrap().push(alpn);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: its head, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    seen.heads.lock().unwrap().push(head);
                    let body = common::completion("m", "over tls").to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// An HTTP proxy on 127.0.0.1 that serves `CONNECT` only: it keeps each tunnel
/// request's head, answers 200 and copies bytes both ways.
async fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(head);
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, heads)
}

fn gateway_config(port: u16) -> String {
    format!(
        r#"
[connections.up]
api_type = "open_ai"
api_base = "https://127.0.0.1:{port}/v1"
api_key = "upstream-secret"
[connections.up.http_headers]
X-API-key = "configured"
x-lower-case = "configured"
OpenAI-Organization = "org-1"
[routing]
"*" = "up.*"
[groups.default]
api_keys = ["k"]
"#
    )
}

fn header_names(head: &str) -> Vec<&str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name))
        .collect()
}

#[tokio::test]
async fn https_upstreams_get_exact_spellings_over_one_kept_alive_tls_connection_and_through_a_proxy(
) {
    // A CA of this test's own, trusted through SSL_CERT_FILE, and a certificate for
    // 127.0.0.1 signed by it.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::env::set_var("SSL_CERT_FILE", &ca_file);

    let (port, seen) = tls_upstream(leaf.der().to_vec(), leaf_key.serialize_der()).await;
    let gw = TestGateway::start(&gateway_config(port)).await;
    for _ in 0..2 {
        let (status, answer) = gw.chat_json("k", user("m", "hi")).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["choices"][0]["message"]["content"], "over tls");
    }
    let heads = seen.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    for head in &heads {
        let names = header_names(head);
        for spelled in [
            "X-API-key",
            "x-lower-case",
            "OpenAI-Organization",
            "Authorization",
            "Content-Type",
        ] {
            assert!(names.contains(&spelled), "{spelled} missing in {head}");
        }
        assert!(
            head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
    }
    // Both requests on one connection, which asked for HTTP/1.1 by ALPN.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen.alpn.lock().unwrap().as_slice(),
        &[Some(b"http/1.1".to_vec())]
    );

    // An upstream whose certificate no trusted CA signed: 502, naming the cause,
    // and the provider key appears nowhere in the answer.
    let stranger_key = KeyPair::generate().unwrap();
    let stranger = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&stranger_key)
        .unwrap();
    let (port, seen) = tls_upstream(stranger.der().to_vec(), stranger_key.serialize_der()).await;
    let gw = TestGateway::start(&gateway_config(port)).await;
    let response = gw.chat("k", user("m", "hi")).await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "upstream_error", "{text}");
    assert!(!text.contains("upstream-secret"), "{text}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0);
    assert!(seen.heads.lock().unwrap().is_empty());

    // Through an http proxy named by HTTPS_PROXY: a CONNECT tunnel with the proxy's
    // credentials, and inside it the same spellings.
    let (port, seen) = tls_upstream(leaf.der().to_vec(), leaf_key.serialize_der()).await;
    let (proxy_port, tunnels) = connect_proxy().await;
    std::env::set_var(
        "HTTPS_PROXY",
        format!("http://proxy-user:proxy-pass@127.0.0.1:{proxy_port}"),
    );
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");
    let gw = TestGateway::start(&gateway_config(port)).await;
    for _ in 0..2 {
        let (status, answer) = gw.chat_json("k", user("m", "hi")).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["choices"][0]["message"]["content"], "over tls");
    }
    let tunnels = tunnels.lock().unwrap().clone();
    assert_eq!(tunnels.len(), 1, "one kept-alive tunnel: {tunnels:?}");
    assert!(
        tunnels[0].starts_with(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n")),
        "{}",
        tunnels[0]
    );
    // base64("proxy-user:proxy-pass")
    assert!(
        tunnels[0].contains("Proxy-Authorization: Basic cHJveHktdXNlcjpwcm94eS1wYXNz\r\n"),
        "{}",
        tunnels[0]
    );
    let heads = seen.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    for spelled in ["X-API-key", "x-lower-case", "OpenAI-Organization"] {
        assert!(
            header_names(&heads[1]).contains(&spelled),
            "{spelled} in {}",
            heads[1]
        );
    }
    assert!(!heads[1].contains("Proxy-Authorization"), "{}", heads[1]);
}
