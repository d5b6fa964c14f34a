//! The enforcer's HTTP/1.1 connections to the application, through the real binary: reused
//! while the application keeps them open and they are not idle too long, replaced when it
//! closes them, never reused after a response that was not read to its end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// How a scripted application answers.
#[derive(Clone, Copy)]
enum App {
    /// Keep-alive, `Content-Length` bodies.
    KeepAlive,
    /// Keep-alive, chunked bodies.
    Chunked,
    /// Answers one request per connection, then closes it without saying so beforehand.
    CloseAfterEach,
}

/// A scripted HTTP/1.1 application: answers `GET /big` with an endless `Content-Length` body
/// and anything else with `conn <n>` (the number of the connection it came on). Returns its
/// address and how many connections it has accepted.
fn app(kind: App) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::spawn(move || serve(stream, n, kind));
        }
    });
    (addr, accepted)
}

fn serve(stream: TcpStream, n: usize, kind: App) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        if request_line.starts_with("GET /big ") {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            while out.write_all(&chunk).is_ok() {}
            return;
        }
        let body = format!("conn {n}");
        let written = match kind {
            App::KeepAlive | App::CloseAfterEach => out.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            ),
            App::Chunked => out.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nconn \r\n{:x}\r\n{}\r\n0\r\n\r\n",
                    body.len() - 5,
                    &body[5..]
                )
                .as_bytes(),
            ),
        };
        if written.is_err() || matches!(kind, App::CloseAfterEach) {
            return;
        }
    }
}

/// A scripted application of `kind` behind an enforcer with one worker (one upstream pool),
/// and the application's count of accepted connections.
fn enforcer_before(kind: App) -> (Enforcer, Arc<AtomicUsize>) {
    let (addr, accepted) = app(kind);
    (Enforcer::start("acme", addr, &["--workers", "1"]), accepted)
}

fn body_of(e: &Enforcer, path: &str) -> String {
    let (status, headers, body) = get(e.addr, path, &["X-Tenant-ID: acme"]);
    assert_eq!(status, 200, "{path}: {body}");
    if header(&headers, "transfer-encoding") == Some("chunked") {
        return dechunk(&body);
    }
    body
}

/// The data of a chunked body (sizes in hex, no extensions or trailers).
fn dechunk(mut body: &str) -> String {
    let mut data = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
        if size == 0 {
            return data;
        }
        data.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

#[test]
fn one_connection_carries_one_request_after_another() {
    for kind in [App::KeepAlive, App::Chunked] {
        let (e, accepted) = enforcer_before(kind);
        for _ in 0..5 {
            // Each request on a new client connection: only the application's side is pooled.
            assert_eq!(body_of(&e, "/"), "conn 1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}

/// A connection idle past `--upstream-idle-timeout-ms` (1 s by default, below the keep-alive
/// timeouts applications ship with) is not reused: the application could be closing it just
/// as a request is written to it. Within the timeout it is.
#[test]
fn a_connection_idle_past_the_upstream_idle_timeout_is_not_reused() {
    let (e, accepted) = enforcer_before(App::KeepAlive);
    assert_eq!(body_of(&e, "/"), "conn 1");
    assert_eq!(body_of(&e, "/"), "conn 1");
    std::thread::sleep(Duration::from_millis(1_300));
    assert_eq!(body_of(&e, "/"), "conn 2");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_connection_the_application_closed_is_replaced_not_reported() {
    let (e, accepted) = enforcer_before(App::CloseAfterEach);
    for i in 1..=5 {
        assert_eq!(body_of(&e, "/"), format!("conn {i}"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

#[test]
fn a_response_left_unread_is_not_followed_by_another_on_its_connection() {
    let (e, accepted) = enforcer_before(App::KeepAlive);
    assert_eq!(body_of(&e, "/"), "conn 1");
    // A client that reads the head of an endless download and goes away.
    let mut client = TcpStream::connect(e.addr).unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: acme\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 4096];
    let n = client.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    drop(client);
    // The download went out on the pooled connection 1; the next answer is whole and comes on
    // a new connection, not after the download's leftovers.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(body_of(&e, "/"), "conn 2");
    assert_eq!(body_of(&e, "/"), "conn 2");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_request_without_host_reaches_the_application_with_its_address() {
    let app = echo_upstream();
    let e = Enforcer::start("acme", app, &[]);
    // HTTP/1.0 needs no Host; the application speaks HTTP/1.1, which does.
    let (status, _, body) = send(e.addr, b"GET /hello HTTP/1.0\r\nX-Tenant-ID: acme\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let seen = seen(&body);
    assert_eq!(
        seen["headers"]["host"],
        serde_json::json!([app.to_string()])
    );
    assert_eq!(seen["path"], "/hello");
    // With a Host, the client's is kept.
    let (_, _, body) = get(e.addr, "/hello", &["X-Tenant-ID: acme"]);
    assert_eq!(seen_host(&body), "test");
}

fn seen_host(body: &str) -> String {
    seen(body)["headers"]["host"][0]
        .as_str()
        .unwrap()
        .to_string()
}
