//! The enforcer as a hardened edge, tried as an attacker would over raw sockets (hyper would
//! normalise the attacks away before they reached the enforcer) and real h2 frames: one canonical
//! path, identity headers in no other spelling or in trailers, forwarding headers from the
//! connection, sizes checked before rate-limit tokens are spent, and bounded connections. Each
//! attack sits beside a legitimate look-alike that must still work.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

/// The shipped policies plus an operator's rule closing `/admin*`.
fn policies_with_admin_rule() -> String {
    let dir = temp_dir("admin-policies");
    let root = tenantry_tests::repo_root().join("policies");
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".cedar") || name.ends_with(".cedarschema") {
            std::fs::copy(entry.path(), dir.join(&*name)).unwrap();
        }
    }
    std::fs::write(
        dir.join("admin.cedar"),
        "@id(\"no-admin\")\n@message(\"the admin API is internal\")\n\
         forbid (principal, action == Action::\"request\", resource)\n\
         when { context.path like \"/admin*\" };\n",
    )
    .unwrap();
    dir.to_string_lossy().into_owned()
}

#[test]
fn policy_decides_on_the_canonical_path_and_the_application_gets_exactly_that() {
    let app = echo_upstream();
    let policies = policies_with_admin_rule();
    let e = Enforcer::start("acme", app, &["--policies", &policies]);
    let acme = ["X-Tenant-ID: acme"];
    for attack in [
        "/admin/users",
        "/%61dmin/users",
        "//admin/users",
        "/./admin/users",
        "/x/../admin/users",
        "/%2e/admin/users",
        "/%2E%2E/admin",
        "/public/../admin",
    ] {
        let (status, _, body) = get(e.addr, attack, &acme);
        assert_eq!(status, 403, "{attack}: {body}");
        assert!(
            body.contains("the admin API is internal"),
            "{attack}: {body}"
        );
    }
    for ambiguous in [
        "/admin%2fusers",
        "/public%2F..%2Fadmin",
        "/a%5cadmin",
        "/a%zz",
        "/a%",
    ] {
        let (status, _, body) = get(e.addr, ambiguous, &acme);
        assert_eq!(status, 400, "{ambiguous}: {body}");
        assert!(
            body.contains("\"error\":\"invalid_path\""),
            "{ambiguous}: {body}"
        );
    }
    // The look-alikes: allowed, forwarded in the form policy saw, the query untouched.
    let (status, _, body) = get(
        e.addr,
        "/%7Euser/./pages//administrators?next=%2Fadmin",
        &acme,
    );
    assert_eq!(status, 200, "{body}");
    let seen = seen(&body);
    assert_eq!(seen["path"], "/~user/pages/administrators");
    assert_eq!(seen["query"], "next=%2Fadmin");
    let (status, _, body) = get(e.addr, "/adminx/../public/", &acme);
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen_path(&body), "/public/");
}

fn seen_path(body: &str) -> String {
    seen(body)["path"].as_str().unwrap().to_string()
}

#[test]
fn the_tier_header_in_any_spelling_never_reaches_the_application() {
    let app = echo_upstream();
    let e = Enforcer::start("globex", app, &[]);
    let (status, _, body) = get(
        e.addr,
        "/",
        &[
            "X-Tenant-ID: globex",
            "X-Tenant-Tier: enterprise",
            "X-Tenant_Tier: enterprise",
            "X_Tenant-Tier: enterprise",
            "x_tenant_tier: enterprise",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let headers = &seen(&body)["headers"];
    assert_eq!(headers["x-tenant-tier"], serde_json::json!(["free"]));
    for spelling in ["x-tenant_tier", "x_tenant-tier", "x_tenant_tier"] {
        assert!(headers.get(spelling).is_none(), "{spelling}: {headers}");
    }
    // The tenant header's aliases are refused outright, as before.
    let (status, _, _) = get(e.addr, "/", &["X-Tenant-ID: globex", "X-Tenant_ID: acme"]);
    assert_eq!(status, 401);
}

#[test]
fn identity_headers_in_chunked_trailers_are_removed() {
    let app = echo_upstream();
    let e = Enforcer::start("acme", app, &[]);
    let (status, _, body) = send(
        e.addr,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Tenant-ID: acme\r\n\
          Transfer-Encoding: chunked\r\nTrailer: X-Tenant-ID, X-Checksum\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Tenant-ID: globex\r\nX_Tenant_Tier: enterprise\r\n\
          X-Checksum: abc\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let seen = seen(&body);
    assert_eq!(seen["body_bytes"], 5);
    assert_eq!(
        seen["trailers"],
        serde_json::json!({"x-checksum": "abc"}),
        "only the legitimate trailer arrives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_h2_the_tier_header_and_trailers_carry_no_identity_either() {
    let app = echo_upstream();
    let e = tokio::task::spawn_blocking(move || Enforcer::start("acme", app, &[]))
        .await
        .unwrap();
    let client: hyper_util::client::legacy::Client<_, StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-tenant-id", "globex".parse().unwrap());
    trailers.insert("x-tenant_tier", "gold".parse().unwrap());
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = http::Request::post(format!("http://{}/grpc.Service/Method", e.addr))
        .header("x-tenant-id", "acme")
        .header("x-tenant_tier", "enterprise")
        .header("te", "trailers")
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen = seen(&String::from_utf8_lossy(&body));
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(
        seen["headers"]["x-tenant-tier"],
        serde_json::json!(["enterprise"])
    );
    assert!(seen["headers"].get("x-tenant_tier").is_none(), "{seen}");
    assert_eq!(seen["trailers"], serde_json::json!({"grpc-status": "0"}));
}

#[test]
fn forwarding_headers_come_from_the_connection_unless_the_peer_is_a_trusted_proxy() {
    let app = echo_upstream();
    let spoofed = [
        "X-Tenant-ID: acme",
        "X-Forwarded-For: 203.0.113.9",
        "X-Forwarded-Host: admin.internal",
        "X-Forwarded-Proto: https",
        "Forwarded: for=203.0.113.9;proto=https",
        "X-Real-IP: 203.0.113.9",
        "X-HTTP-Method-Override: DELETE",
        "X-Original-URL: /admin",
    ];
    let e = Enforcer::start("acme", app, &[]);
    let (status, _, body) = get(e.addr, "/orders", &spoofed);
    assert_eq!(status, 200, "{body}");
    let h = &seen(&body)["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["test"]));
    for gone in [
        "forwarded",
        "x-real-ip",
        "x-http-method-override",
        "x-original-url",
    ] {
        assert!(h.get(gone).is_none(), "{gone}: {h}");
    }
    drop(e);

    // Behind a trusted ingress the client's chain is kept and the peer appended; overrides are
    // still removed.
    let e = Enforcer::start("acme", app, &["--trusted-proxies", "127.0.0.0/8"]);
    let (_, _, body) = get(e.addr, "/orders", &spoofed);
    let h = &seen(&body)["headers"];
    assert_eq!(
        h["x-forwarded-for"],
        serde_json::json!(["203.0.113.9, 127.0.0.1"])
    );
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]));
    assert!(h.get("x-http-method-override").is_none());
}

#[test]
fn requests_refused_for_their_size_spend_no_rate_limit_tokens() {
    let app = echo_upstream();
    // globex: free tier, 10 requests per second, burst 20.
    let e = Enforcer::start("globex", app, &["--max-body-bytes", "100"]);
    for _ in 0..40 {
        let (status, _, body) = raw(
            e.addr,
            "POST /upload HTTP/1.1",
            &["X-Tenant-ID: globex", "Content-Length: 1000000"],
        );
        assert_eq!(status, 413, "{body}");
    }
    let (status, _, body) = get(e.addr, "/", &["X-Tenant-ID: globex"]);
    assert_eq!(status, 200, "the budget is intact: {body}");
}

/// Reads until the peer closes; the time it took, or `None` if it stayed open past `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn connections_that_say_nothing_or_stall_are_closed_and_do_not_keep_others_out() {
    let app = echo_upstream();
    let e = Enforcer::start(
        "acme",
        app,
        &[
            "--header-timeout-ms",
            "500",
            "--idle-timeout-ms",
            "800",
            "--max-connections",
            "64",
        ],
    );
    // A flood of silent sockets up to the cap, a partial h2 preface, half a request head.
    let mut silent: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(e.addr).unwrap())
        .collect();
    let mut preface = TcpStream::connect(e.addr).unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let mut half_head = TcpStream::connect(e.addr).unwrap();
    half_head
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Tenant")
        .unwrap();
    for (what, s) in [
        ("partial h2 preface", &mut preface),
        ("half a request head", &mut half_head),
    ] {
        let took = closed_within(s, Duration::from_secs(5));
        assert!(took.is_some(), "{what}: still open after 5 s");
    }
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(5)).is_some(),
            "a silent socket stayed open"
        );
    }
    // Legitimate requests get through within a few seconds of the flood.
    let (status, _, body) = get(e.addr, "/", &["X-Tenant-ID: acme"]);
    assert_eq!(status, 200, "{body}");

    // An h2 connection that completed its handshake and then idles is closed (GOAWAY, then EOF).
    let mut h2 = TcpStream::connect(e.addr).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let took = closed_within(&mut h2, Duration::from_secs(5));
    assert!(took.is_some(), "an idle h2 connection stayed open");
    // And an idle HTTP/1.1 keep-alive connection after a request: answered, then closed.
    let mut ka = TcpStream::connect(e.addr).unwrap();
    ka.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: acme\r\n\r\n")
        .unwrap();
    let took = closed_within(&mut ka, Duration::from_secs(5));
    assert!(
        took.is_some(),
        "an idle HTTP/1.1 keep-alive connection stayed open"
    );
    assert!(
        e.counter_reaching(
            "tenantry_enforcer_connections_closed_by_enforcer_total{reason=\"silent\"}",
            60.0
        ) >= 60.0
    );
    assert!(e.metric("tenantry_enforcer_open_files_limit") > 0.0);
}

#[test]
fn a_request_head_trickled_after_a_keep_alive_request_is_cut_at_the_header_timeout() {
    let app = echo_upstream();
    // The idle timeout is far away: only the header deadline can close these.
    let e = Enforcer::start(
        "acme",
        app,
        &["--header-timeout-ms", "400", "--idle-timeout-ms", "30000"],
    );
    // Attack: one honest request, then the next head a byte at a time, never finished.
    let mut slow = KeepAlive::connect(e.addr);
    assert_eq!(slow.get("acme"), 200);
    let mut stream = slow.into_stream();
    let started = Instant::now();
    let mut cut = None;
    for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: acme\r\nX-Padding: aaaaaaaaaaaaaaaa" {
        if stream.write_all(&[*byte]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        if let Some(t) = closed_within(&mut stream, Duration::from_millis(100)) {
            let _ = t;
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("a head trickled for longer than the header timeout was never cut");
    assert!(cut < Duration::from_secs(3), "cut only after {cut:?}");
    assert!(
        e.counter_reaching(
            "tenantry_enforcer_connections_closed_by_enforcer_total{reason=\"header_timeout\"}",
            1.0
        ) >= 1.0
    );

    // Look-alikes that must work: a keep-alive client idle longer than the header timeout
    // between requests, a head sent in two halves well within it, and a request whose body
    // arrives more slowly than the header timeout (bodies are not heads).
    let mut patient = KeepAlive::connect(e.addr);
    assert_eq!(patient.get("acme"), 200);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        patient.get("acme"),
        200,
        "an idle keep-alive connection was cut"
    );
    let mut halves = patient.into_stream();
    halves.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    halves.write_all(b"X-Tenant-ID: acme\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    halves.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut upload = TcpStream::connect(e.addr).unwrap();
    upload
        .write_all(b"POST / HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: acme\r\nContent-Length: 8\r\n\r\n")
        .unwrap();
    for chunk in [b"abcd", b"efgh"] {
        std::thread::sleep(Duration::from_millis(500));
        upload.write_all(chunk).unwrap();
    }
    upload
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    upload.read_exact(&mut head).unwrap();
    assert_eq!(
        &head, b"HTTP/1.1 200",
        "a slow body was cut as if it were a slow head"
    );
}

#[test]
fn past_the_connection_cap_new_connections_are_refused_clearly() {
    let app = echo_upstream();
    let e = Enforcer::start(
        "acme",
        app,
        &["--max-connections", "3", "--header-timeout-ms", "300"],
    );
    // The harness's own readiness probe held a slot until it timed out.
    std::thread::sleep(Duration::from_millis(600));
    let mut held: Vec<KeepAlive> = (0..3).map(|_| KeepAlive::connect(e.addr)).collect();
    for k in &mut held {
        assert_eq!(k.get("acme"), 200);
    }
    let (status, headers, body) = get(e.addr, "/", &["X-Tenant-ID: acme"]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too_many_connections"), "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = get(e.addr, "/", &["X-Tenant-ID: acme"]);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "a freed slot is never reused");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        e.counter_reaching(
            "tenantry_enforcer_connections_closed_by_enforcer_total{reason=\"over_limit\"}",
            1.0
        ) >= 1.0
    );
}

#[test]
fn a_response_streaming_longer_than_the_idle_timeout_is_not_cut() {
    // An application that streams 15 chunks over 3 s.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in app.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                for i in 0..15 {
                    let chunk = format!("chunk-{i:02}\n");
                    let _ = s.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
                    std::thread::sleep(Duration::from_millis(200));
                }
                let _ = s.write_all(b"0\r\n\r\n");
            });
        }
    });
    let e = Enforcer::start(
        "acme",
        app_addr,
        &["--idle-timeout-ms", "500", "--header-timeout-ms", "300"],
    );
    let (status, _, body) = get(e.addr, "/download", &["X-Tenant-ID: acme"]);
    assert_eq!(status, 200);
    assert!(body.contains("chunk-14"), "the stream was cut: {body}");
}
