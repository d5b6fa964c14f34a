//! Proxy behaviour of the real binary: upstream failures, h2c, streaming, graceful drain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};

#[test]
fn upstream_down_is_502_and_slow_is_504() {
    // Nothing listens on this port.
    let dead = SocketAddr::from(([127, 0, 0, 1], tenantry_tests::free_port().unwrap()));
    let e = Enforcer::start("acme", dead, &[]);
    let (status, _, body) = get(e.addr, "/", &["X-Tenant-ID: acme"]);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("\"error\":\"upstream_unavailable\""),
        "{body}"
    );
    assert!(
        !body.contains(&dead.port().to_string()),
        "leaks the upstream address: {body}"
    );

    // Accepts connections and reads, but never answers.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_addr = slow.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in slow.incoming().flatten() {
            held.push(s);
        }
    });
    let e = Enforcer::start("acme", slow_addr, &["--upstream-timeout-ms", "300"]);
    let (status, _, body) = get(e.addr, "/", &["X-Tenant-ID: acme"]);
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("\"error\":\"upstream_timeout\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_are_forwarded_over_http2() {
    let app = echo_upstream();
    let e = tokio::task::spawn_blocking(move || Enforcer::start("acme", app, &[]))
        .await
        .unwrap();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::post(format!("http://{}/grpc.Service/Method", e.addr))
        .header("X-Tenant-ID", "acme")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen = seen(&String::from_utf8_lossy(&body));
    assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
    assert_eq!(seen["headers"]["te"], serde_json::json!(["trailers"]));
    assert_eq!(seen["headers"]["x-tenant-id"], serde_json::json!(["acme"]));
    assert_eq!(seen["body_bytes"], 10);
    // Missing header over h2 is refused the same way.
    let req = http::Request::get(format!("http://{}/", e.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 401);
    drop(e);
}

#[test]
fn a_large_streaming_body_flows_through_in_bounded_memory() {
    let app = echo_upstream();
    let e = Enforcer::start("acme", app, &[]);
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 128; // 128 MiB, far above what the enforcer may hold
    let mut s = TcpStream::connect(e.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: acme\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'x'; CHUNK];
    let mut peak_kb = 0;
    for i in 0..CHUNKS {
        write!(s, "{CHUNK:x}\r\n").unwrap();
        s.write_all(&chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
        if i % 16 == 0 {
            peak_kb = peak_kb.max(e.rss_kb());
        }
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let (status, _, body) = parse_response(&buf);
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&body)["body_bytes"], (CHUNK * CHUNKS) as u64);
    assert!(
        peak_kb > 0 && peak_kb < 48 * 1024,
        "enforcer RSS reached {peak_kb} kB"
    );

    // Over the body limit: refused up front when declared, cut off when streamed.
    let small = Enforcer::start("acme", app, &["--max-body-bytes", "1000"]);
    let (status, _, body) = raw(
        small.addr,
        "POST / HTTP/1.1",
        &["X-Tenant-ID: acme", "Content-Length: 5000"],
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
}

#[test]
fn oversized_headers_are_refused() {
    let app = echo_upstream();
    let e = Enforcer::start("acme", app, &["--max-header-bytes", "16384"]);
    let big = format!("X-Big: {}", "a".repeat(32 * 1024));
    let (status, _, _) = get(e.addr, "/", &["X-Tenant-ID: acme", &big]);
    assert_eq!(status, 431);
    // Under the limit it goes through.
    let fine = format!("X-Big: {}", "a".repeat(4 * 1024));
    assert_eq!(get(e.addr, "/", &["X-Tenant-ID: acme", &fine]).0, 200);
}

#[test]
fn sigterm_drains_in_flight_requests() {
    // An application that answers after 1.5 s.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_addr = slow.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in slow.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(Duration::from_millis(1500));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow");
            });
        }
    });
    let mut e = Enforcer::start("acme", slow_addr, &[]);
    let addr = e.addr;
    let in_flight = std::thread::spawn(move || get(addr, "/", &["X-Tenant-ID: acme"]));
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(e.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (status, _, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "the in-flight request was cut: {body}");
    assert_eq!(body, "slow");
    let exit = e.child.take().unwrap().wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}
