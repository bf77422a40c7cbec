//! The client side of the whole-proxy tests: hyper HTTP/1.1 and HTTP/2 (h2c) connections with no
//! pooling, requests in origin or absolute form, and responses read whole with their trailers.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::guard;

/// A received response, fully read.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

impl Got {
    /// Header (name, value) pairs in order, minus framing headers hyper owns.
    pub fn header_list(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.as_str() != "transfer-encoding")
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    }
}

/// An HTTP/1.1 client connection (no pooling, so each test controls its socket).
pub async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// An HTTP/2 prior-knowledge (h2c) client connection.
pub async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Builds an HTTP/1.1 request in origin form (as real clients send it); [`h2_request`] for HTTP/2.
pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    let _ = addr;
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

/// The same request with an absolute URI, as HTTP/2 needs (`:scheme`, `:authority`).
pub fn h2_request(mut req: Request<Full<Bytes>>, addr: SocketAddr) -> Request<Full<Bytes>> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    req.headers_mut().remove("host");
    req
}

/// Sends over HTTP/1.1 and reads the whole response.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    let mut sender = h1(addr).await;
    let response = guard("response", sender.send_request(req))
        .await
        .expect("response");
    collect(response).await
}

/// Reads a whole response, keeping trailers.
pub async fn collect(response: http::Response<hyper::body::Incoming>) -> Got {
    let (parts, body) = response.into_parts();
    let collected = guard("body", body.collect()).await.expect("body");
    let trailers = collected.trailers().cloned();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes().to_vec(),
        trailers,
    }
}
