//! A raw HTTP/1.1 client that sends exactly the bytes a test writes (hyper would normalise header
//! attacks away before they reached the server under test) and parses what comes back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Status, headers (lowercased names) and body.
pub type Reply = (u16, Vec<(String, String)>, String);

/// Sends `request_line`, `Host` and `Connection: close`, then `headers` (whole lines without
/// CRLF); `Err` when nothing listens.
pub fn try_raw(addr: SocketAddr, request_line: &str, headers: &[&str]) -> std::io::Result<Reply> {
    let mut req = format!("{request_line}\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    try_send(addr, req.as_bytes())
}

/// Writes `bytes` exactly as given on a new connection and reads the reply until the server
/// closes it; `Err` when nothing listens.
pub fn try_send(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(bytes)?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    Ok(parse_response(&buf))
}

/// [`try_send`] for a server that must be listening.
#[allow(clippy::panic)] // a test helper: failing loudly is its job
pub fn send(addr: SocketAddr, bytes: &[u8]) -> Reply {
    try_send(addr, bytes).unwrap_or_else(|e| panic!("cannot send to {addr}: {e}"))
}

/// [`try_raw`] for a server that must be listening.
#[allow(clippy::panic)] // a test helper: failing loudly is its job
pub fn raw(addr: SocketAddr, request_line: &str, headers: &[&str]) -> Reply {
    try_raw(addr, request_line, headers)
        .unwrap_or_else(|e| panic!("cannot send `{request_line}` to {addr}: {e}"))
}

pub fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Reply {
    raw(addr, &format!("GET {path} HTTP/1.1"), headers)
}

pub fn parse_response(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, vec![], text);
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
