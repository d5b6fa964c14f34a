//! Shared rate limits through a real Redis started by the harness: 429s with headers, several
//! enforcers sharing one tenant's limit, round trips per request, Redis killed and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tenantry_tests::Redis;

/// One inline command to Redis; returns the reply as text (bulk strings unwrapped).
fn redis_cmd(port: u16, cmd: &str) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(format!("{cmd}\r\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len.trim().parse().unwrap();
        if len < 0 {
            return String::new();
        }
        let mut buf = vec![0; len as usize + 2];
        r.read_exact(&mut buf).unwrap();
        return String::from_utf8_lossy(&buf[..len as usize]).into_owned();
    }
    line.trim().to_string()
}

/// Script calls Redis has served (EVALSHA, plus EVAL after a restart emptied its script cache).
fn script_calls(port: u16) -> u64 {
    redis_cmd(port, "INFO commandstats")
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `tenant`'s own traffic into its own pods: the bucket in its keyspace.
fn assert_keys_expire(port: u16, tenant: &str) {
    for key in [
        format!("tenantry:ratelimit:{{{tenant}}}:{tenant}"),
        format!("tenantry:ratelimit:{{{tenant}}}:{tenant}:peers"),
    ] {
        let ttl: i64 = redis_cmd(port, &format!("PTTL {key}"))
            .trim_start_matches(':')
            .parse()
            .unwrap();
        assert!(ttl > 0, "`{key}` has no expiry (PTTL {ttl})");
    }
}

#[test]
fn over_the_limit_is_429_with_ratelimit_headers() {
    let redis = Redis::start().unwrap();
    let app = echo_upstream();
    // globex is on the free tier: 10 requests per second, burst 20.
    let e = Enforcer::start("globex", app, &["--redis", &redis.url()]);
    let mut allowed = 0;
    let mut limited = None;
    for _ in 0..40 {
        let (status, h, body) = get(e.addr, "/", &["X-Tenant-ID: globex"]);
        match status {
            200 => {
                allowed += 1;
                assert_eq!(header(&h, "ratelimit-limit"), Some("20"));
                assert!(header(&h, "ratelimit-remaining").is_some());
                assert!(header(&h, "ratelimit-reset").is_some());
            }
            429 => limited = Some((h, body)),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let (h, body) = limited.expect("never limited");
    assert!((20..=24).contains(&allowed), "{allowed} allowed");
    assert!(body.contains("\"error\":\"rate_limited\""), "{body}");
    let retry: u64 = header(&h, "retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(header(&h, "ratelimit-limit"), Some("20"));
    assert_eq!(header(&h, "ratelimit-remaining"), Some("0"));
    assert!(header(&h, "ratelimit-reset").is_some());
    assert_keys_expire(redis.port, "globex");
}

#[test]
fn four_enforcers_share_one_limit_within_five_percent() {
    const RATE: f64 = 300.0;
    const BURST: f64 = 300.0;
    let redis = Redis::start().unwrap();
    let app = echo_upstream();
    let tenants = tenants_file("share", RATE as u32, BURST as u32);
    let args = [
        "--redis",
        &redis.url(),
        "--tenants",
        tenants.to_str().unwrap(),
    ];
    let enforcers: Vec<Enforcer> = (0..4)
        .map(|_| Enforcer::start("metro", app, &args))
        .collect();
    let calls_before = script_calls(redis.port);
    let run_for = Duration::from_secs(6);
    let start = Instant::now();
    let workers: Vec<_> = enforcers
        .iter()
        .flat_map(|e| [e.addr, e.addr])
        .map(|addr| {
            std::thread::spawn(move || {
                let mut c = KeepAlive::connect(addr);
                let (mut ok, mut limited, mut total) = (0u64, 0u64, 0u64);
                while start.elapsed() < run_for {
                    match c.get("metro") {
                        200 => ok += 1,
                        429 => limited += 1,
                        other => panic!("unexpected status {other}"),
                    }
                    total += 1;
                }
                (ok, limited, total)
            })
        })
        .collect();
    let (mut ok, mut limited, mut total) = (0, 0, 0);
    for w in workers {
        let (a, b, c) = w.join().unwrap();
        ok += a;
        limited += b;
        total += c;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = BURST + RATE * elapsed;
    let ratio = ok as f64 / allowed;
    assert!(
        limited > 0,
        "the load never exceeded the limit ({total} requests)"
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "admitted {ok}, the tier allows {allowed:.0} ({ratio:.3})"
    );
    let calls = script_calls(redis.port) - calls_before;
    let per_request = calls as f64 / total as f64;
    assert!(
        per_request <= 0.1,
        "{calls} Redis round trips for {total} requests"
    );
    // The enforcers learnt from the script that they are four.
    assert_eq!(
        redis_cmd(redis.port, "ZCARD tenantry:ratelimit:{metro}:metro:peers"),
        ":4"
    );
    assert_keys_expire(redis.port, "metro");
    eprintln!("admitted {ok} of {total} (tier allows {allowed:.0}); {calls} round trips");
}

#[test]
fn steady_load_takes_leases_not_a_round_trip_per_request() {
    let redis = Redis::start().unwrap();
    let app = echo_upstream();
    // acme: enterprise, 1000 requests per second, burst 2000.
    let e = Enforcer::start("acme", app, &["--redis", &redis.url()]);
    let before = script_calls(redis.port);
    let mut c = KeepAlive::connect(e.addr);
    for _ in 0..1500 {
        assert_eq!(c.get("acme"), 200);
    }
    let calls = script_calls(redis.port) - before;
    assert!(calls >= 1, "Redis was never asked");
    assert!(
        calls as f64 / 1500.0 <= 0.1,
        "{calls} round trips for 1500 requests"
    );
    // The enforcer's own count agrees with Redis's (give or take the one EVALSHA that Redis
    // rejected with NOSCRIPT before the script was loaded).
    let counted = e.metric("tenantry_enforcer_ratelimit_redis_round_trips_total");
    assert!(
        (counted - calls as f64).abs() <= 1.0,
        "metric {counted}, Redis {calls}"
    );
}

#[test]
fn redis_down_open_mode_uses_the_local_share_and_recovers() {
    let mut redis = Redis::start().unwrap();
    let app = echo_upstream();
    let tenants = tenants_file("open", 20, 20);
    let e = Enforcer::start(
        "metro",
        app,
        &[
            "--redis",
            &redis.url(),
            "--redis-failure",
            "open",
            "--tenants",
            tenants.to_str().unwrap(),
        ],
    );
    assert_eq!(get(e.addr, "/", &["X-Tenant-ID: metro"]).0, 200);
    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(get(e.addr, "/", &["X-Tenant-ID: metro"]).0);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // The local bucket holds this pod's share (the whole limit: it is the only peer).
    assert!(
        (10..=25).contains(&ok),
        "{ok} admitted while Redis was down: {statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(e.metric("tenantry_enforcer_ratelimit_fallback_decisions_total{mode=\"open\"}") > 0.0);
    assert_eq!(e.metric("tenantry_enforcer_ratelimit_circuit_open"), 1.0);

    redis.restart().unwrap();
    let calls_before = e.metric("tenantry_enforcer_ratelimit_redis_round_trips_total");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let _ = get(e.addr, "/", &["X-Tenant-ID: metro"]);
        if script_calls(redis.port) > 0
            && e.metric("tenantry_enforcer_ratelimit_circuit_open") == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "never went back to Redis");
    }
    assert!(e.metric("tenantry_enforcer_ratelimit_redis_round_trips_total") > calls_before);
    assert_keys_expire(redis.port, "metro");
}

#[test]
fn redis_down_closed_mode_refuses_and_recovers() {
    let mut redis = Redis::start().unwrap();
    let app = echo_upstream();
    let e = Enforcer::start(
        "acme",
        app,
        &["--redis", &redis.url(), "--redis-failure", "closed"],
    );
    assert_eq!(get(e.addr, "/", &["X-Tenant-ID: acme"]).0, 200);
    redis.kill();
    // The lease taken before the crash is still good; once it is used up, requests are refused.
    let mut refused = None;
    for _ in 0..200 {
        let (status, h, body) = get(e.addr, "/", &["X-Tenant-ID: acme"]);
        if status != 200 {
            refused = Some((status, h, body));
            break;
        }
    }
    let (status, h, body) = refused.expect("never refused with Redis down");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("rate_limiter_unavailable"), "{body}");
    assert!(header(&h, "retry-after").is_some());
    assert!(
        e.metric("tenantry_enforcer_ratelimit_fallback_decisions_total{mode=\"closed\"}") > 0.0
    );

    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(e.addr, "/", &["X-Tenant-ID: acme"]).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never recovered after Redis came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn enforcers_share_one_limit_through_a_redis_cluster() {
    let cluster = tenantry_tests::RedisCluster::start().unwrap();
    let app = echo_upstream();
    // globex: free tier, 10 requests per second, burst 20, across both enforcers.
    let a = Enforcer::start("globex", app, &["--redis", &cluster.url()]);
    let b = Enforcer::start("globex", app, &["--redis", &cluster.url()]);
    let mut allowed = 0;
    for i in 0..60 {
        let e = if i % 2 == 0 { &a } else { &b };
        match get(e.addr, "/", &["X-Tenant-ID: globex"]).0 {
            200 => allowed += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (20..=30).contains(&allowed),
        "{allowed} allowed: the two enforcers must share globex's burst of 20"
    );
    assert_eq!(
        a.metric("tenantry_enforcer_ratelimit_store_errors_total")
            + b.metric("tenantry_enforcer_ratelimit_store_errors_total"),
        0.0,
        "every lease went through the cluster"
    );
}
