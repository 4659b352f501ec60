//! The router client: one HTTP/1.1 request per unix-socket connection, written by hand (no async
//! runtime, no HTTP crate: the plugin must start fast).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{self, CniError};
use crate::protocol::{
    AddRequest, Allocation, Attachment, ErrorBody, GcRequest, GcResponse, PATH_ADD, PATH_CHECK,
    PATH_DEL, PATH_GC, PATH_STATUS, Status,
};
use crate::socket_dir::{self, UnsafeSocketDir};

/// How long the plugin waits for the router's answer (an allocation may wait for IPAM consensus).
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer the plugin reads.
const MAX_RESPONSE: u64 = 1 << 20;

/// An HTTP answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request got no HTTP answer.
#[derive(Debug)]
pub enum TransportError {
    /// The socket could not be connected to (missing, refused, permission).
    Connect(io::Error),
    /// Connected, but the exchange failed (reset, timeout).
    Io(io::Error),
    /// Bytes came back that are not an HTTP/1.1 response.
    Malformed(String),
    /// The socket's directory is not trusted (see [`crate::socket_dir`]): never connected.
    UnsafeSocketDir(UnsafeSocketDir),
}

/// Sends one request to the router's socket. The real one is [`UnixHttp`]; unit tests use a fake.
pub trait Transport {
    fn request(
        &self,
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, TransportError>;
}

/// HTTP/1.1 over a `UnixStream`, `Connection: close`.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnixHttp;

impl Transport for UnixHttp {
    fn request(
        &self,
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, TransportError> {
        socket_dir::check_path(socket).map_err(TransportError::UnsafeSocketDir)?;
        let mut stream = UnixStream::connect(socket).map_err(TransportError::Connect)?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(TransportError::Io)?;
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(TransportError::Io)?;
        let request = encode_request(method, path, body);
        stream.write_all(&request).map_err(TransportError::Io)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .map_err(TransportError::Io)?;
        parse_response(&raw).map_err(TransportError::Malformed)
    }
}

/// The request bytes.
pub fn encode_request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let body = body.unwrap_or_default();
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: weft\r\nUser-Agent: weft-cni\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if method != "GET" || !body.is_empty() {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Parses a whole response read to EOF: status line, headers, then a `Content-Length` body, a
/// chunked body, or everything up to EOF.
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = content_length {
        rest.get(..n)
            .ok_or_else(|| format!("body shorter than Content-Length {n}"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("truncated chunk size")?;
        let size_str = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_str = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| format!("bad chunk size {size_str:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What went wrong talking to the router.
#[derive(Debug)]
pub enum RouterError {
    /// No router answered at the socket: `"cannot reach the weft router at ..."`.
    Unreachable(String),
    /// The router answered with an error body: passed on as is.
    Refused(CniError),
    /// The router answered something the plugin cannot read.
    Protocol(String),
    /// The socket's directory is not trusted: the plugin did not connect.
    UnsafeSocketDir(UnsafeSocketDir),
}

impl RouterError {
    /// The CNI error, with `unreachable_code` (11 for ADD/DEL/CHECK/GC, 50 for STATUS) when the
    /// router did not answer.
    pub fn into_cni(self, unreachable_code: u32) -> CniError {
        match self {
            Self::Unreachable(msg) => CniError::new(unreachable_code, msg, ""),
            Self::Refused(e) => e,
            Self::Protocol(details) => CniError::new(
                error::ROUTER_PROTOCOL,
                "the weft router gave an answer the plugin cannot read",
                details,
            ),
            Self::UnsafeSocketDir(e) => CniError::new(error::UNSAFE_SOCKET_DIR, e.to_string(), ""),
        }
    }
}

/// The typed protocol on top of a [`Transport`].
pub struct RouterClient<'a> {
    pub transport: &'a dyn Transport,
    pub socket: &'a Path,
}

impl RouterClient<'_> {
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, RouterError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("protocol types serialize"));
        let unreachable = |e: &dyn std::fmt::Display| {
            RouterError::Unreachable(format!(
                "cannot reach the weft router at {}: {e}; is weft running?",
                self.socket.display()
            ))
        };
        let resp = match self
            .transport
            .request(self.socket, method, path, body.as_deref())
        {
            Ok(r) => r,
            Err(TransportError::Connect(e)) => return Err(unreachable(&e)),
            Err(TransportError::Io(e)) => {
                return Err(unreachable(&format_args!("{method} {path} failed: {e}")));
            }
            Err(TransportError::Malformed(e)) => {
                return Err(RouterError::Protocol(format!("{method} {path}: {e}")));
            }
            Err(TransportError::UnsafeSocketDir(e)) => return Err(RouterError::UnsafeSocketDir(e)),
        };
        if (200..300).contains(&resp.status) {
            let body = if resp.body.iter().all(u8::is_ascii_whitespace) {
                &b"null"[..]
            } else {
                &resp.body[..]
            };
            return serde_json::from_slice(body).map_err(|e| {
                RouterError::Protocol(format!("{method} {path}: status {}: {e}", resp.status))
            });
        }
        match serde_json::from_slice::<ErrorBody>(&resp.body) {
            Ok(e) => Err(RouterError::Refused(CniError::new(
                e.code, e.msg, e.details,
            ))),
            Err(_) => Err(RouterError::Protocol(format!(
                "{method} {path}: status {} with body {:?}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ))),
        }
    }

    pub fn add(&self, req: &AddRequest) -> Result<Allocation, RouterError> {
        self.call("POST", PATH_ADD, Some(req))
    }

    pub fn del(&self, req: &Attachment) -> Result<(), RouterError> {
        self.call::<serde_json::Value>("POST", PATH_DEL, Some(req))
            .map(drop)
    }

    pub fn check(&self, req: &Attachment) -> Result<Allocation, RouterError> {
        self.call("POST", PATH_CHECK, Some(req))
    }

    pub fn status(&self) -> Result<Status, RouterError> {
        self.call("GET", PATH_STATUS, None::<&()>)
    }

    pub fn gc(&self, req: &GcRequest) -> Result<GcResponse, RouterError> {
        self.call("POST", PATH_GC, Some(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let r = String::from_utf8(encode_request("POST", "/cni/del", Some(b"{}"))).unwrap();
        assert!(r.starts_with("POST /cni/del HTTP/1.1\r\n"));
        assert!(r.contains("Content-Length: 2\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\n{}"));
        let g = String::from_utf8(encode_request("GET", "/cni/status", None)).unwrap();
        assert!(!g.contains("Content-Length"));
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx: y\r\n\r\n{}trailing")
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"{}"[..]));
        let r = parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"code\":50}").unwrap();
        assert_eq!((r.status, &r.body[..]), (503, &b"{\"code\":50}"[..]));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, b"abcde");
        for bad in [
            &b"garbage"[..],
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200\r\nContent-Length: 9\r\n\r\n{}",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_socket_in_an_untrusted_directory_is_never_connected() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("weft-cni-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let socket = dir.join("cni.sock");
        // A listener someone else put there: the plugin must not talk to it.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let client = RouterClient {
            transport: &UnixHttp,
            socket: &socket,
        };
        let err = client.status().unwrap_err();
        assert!(matches!(err, RouterError::UnsafeSocketDir(_)), "{err:?}");
        let cni = err.into_cni(error::NOT_AVAILABLE);
        assert_eq!(cni.code, error::UNSAFE_SOCKET_DIR);
        assert!(
            cni.msg.contains(&dir.display().to_string()) && cni.msg.contains("writable"),
            "{}",
            cni.msg
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
