//! A minimal HTTP/1.1 client for tests (one connection per request, no pooling), so tests can
//! talk to Envoy, backends and admin endpoints without the code under test.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

/// GET `path` from `addr` with extra headers (`host` may be among them); returns status and body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    request(addr, "GET", path, headers).await
}

/// Sends a body-less request with any method; returns status and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    exchange(addr, method, path, headers, Bytes::new())
        .await
        .map(|(status, _, body)| (status, body))
}

/// Sends a request with a body; returns status, response headers and body.
pub async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(u16, http::HeaderMap, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// An answer to a raw request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawAnswer {
    /// The status code.
    pub status: u16,
    /// Header lines, names lower-cased, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (whatever came before the connection closed).
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The first value of header `name` (lower case), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Sends `request` as raw bytes over a new connection from `from` (an address on the
/// loopback, port 0; `None` for any) and reads the answer until the server closes: for requests
/// no HTTP library would write (odd paths, repeated or non-ASCII headers). The request
/// should say `connection: close`. `Err` when the connection is closed before a status line.
pub async fn raw(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    request: &[u8],
) -> Result<RawAnswer, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    if let Some(ip) = from {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let mut stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut data = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 16 * 1024];
        // Until the answer is complete: servers may hold the connection open a while after
        // a local reply (Envoy's delayed close), so EOF is not waited for when the length
        // is known.
        while !complete(&data) {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                // A reset after the answer (a server closing with unread input) still counts.
                Err(_) if !data.is_empty() => break,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) => parse_raw(&data),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

/// Whether `data` holds a whole answer: the head, and a body as long as `content-length`
/// says (or a last chunk).
fn complete(data: &[u8]) -> bool {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let body = &data[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    // 1xx, 204 and 304 have no body.
    let status = head.split(' ').nth(1).unwrap_or("");
    status.starts_with('1') || status == "204" || status == "304"
}

fn parse_raw(data: &[u8]) -> Result<RawAnswer, String> {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete head in {:?}", String::from_utf8_lossy(data)))?;
    let mut lines = data[..end]
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", String::from_utf8_lossy(status_line)))?;
    let headers = lines
        .filter_map(|l| {
            let colon = l.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&l[..colon]).to_ascii_lowercase();
            let value = l[colon + 1..].trim_ascii().to_vec();
            Some((name, value))
        })
        .collect();
    let mut body = data[end + 4..].to_vec();
    let chunked = data[..end]
        .windows(26)
        .any(|w| w.eq_ignore_ascii_case(b"transfer-encoding: chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Ok(RawAnswer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
    out
}
