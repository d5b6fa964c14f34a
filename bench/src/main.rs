//! `tenantry-load`: a small closed-loop load generator. N keep-alive connections each send
//! requests back to back for D seconds against one URL (HTTP/1.1, or HTTPS with rustls and an
//! optional CA file), then it prints one JSON object: requests per second, latency percentiles
//! in microseconds, status counts and errors. It is shared by the enforcer and webhook benchmarks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "N keep-alive connections for D seconds against a URL; prints JSON")]
struct Args {
    /// `http://host:port/path` or `https://…`.
    url: String,
    /// Concurrent keep-alive connections.
    #[arg(short, long, default_value_t = 1)]
    connections: usize,
    /// Seconds to run (after the warm-up).
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up whose requests are not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Extra header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// HTTP method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// Request body read from this file (sent with every request).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for HTTPS, instead of nothing.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Runtime worker threads for the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let uri: hyper::Uri = args.url.parse().context("parsing the URL")?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("the URL must start with http:// or https://"),
    };
    let host = uri.host().context("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tls = if https {
        Some(tls_connector(args.cacert.as_deref())?)
    } else {
        None
    };
    let body = match &args.body_file {
        Some(p) => {
            Bytes::from(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => Bytes::new(),
    };
    let mut headers = hyper::HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header `{h}` is not `Name: value`"))?;
        headers.append(
            hyper::header::HeaderName::from_bytes(k.trim().as_bytes())?,
            hyper::header::HeaderValue::from_str(v.trim())?,
        );
    }
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let method: hyper::Method = args.method.parse()?;
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let until = measure_from + Duration::from_secs_f64(args.duration);
    let shared = Arc::new((headers, body, path, authority, method));
    let mut tasks = Vec::new();
    for _ in 0..args.connections.max(1) {
        let shared = shared.clone();
        let host = host.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let (headers, body, path, authority, method) = &*shared;
            while Instant::now() < until {
                let stream = match TcpStream::connect((host.as_str(), port)).await {
                    Ok(s) => s,
                    Err(_) => {
                        tally.errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let io: Box<dyn Io> = match &tls {
                    Some(c) => {
                        let name = match rustls_pki_types::ServerName::try_from(host.clone()) {
                            Ok(n) => n,
                            Err(_) => return tally,
                        };
                        match c.connect(name, stream).await {
                            Ok(s) => Box::new(s),
                            Err(_) => {
                                tally.errors += 1;
                                continue;
                            }
                        }
                    }
                    None => Box::new(stream),
                };
                let Ok((mut sender, conn)) =
                    http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)).await
                else {
                    tally.errors += 1;
                    continue;
                };
                tokio::spawn(conn);
                while Instant::now() < until {
                    let mut req = hyper::Request::new(Full::new(body.clone()));
                    *req.method_mut() = method.clone();
                    *req.uri_mut() = match path.parse() {
                        Ok(u) => u,
                        Err(_) => return tally,
                    };
                    *req.headers_mut() = headers.clone();
                    if let Ok(v) = hyper::header::HeaderValue::from_str(authority) {
                        req.headers_mut().insert(hyper::header::HOST, v);
                    }
                    let t0 = Instant::now();
                    let result = async {
                        let resp = sender.send_request(req).await?;
                        let status = resp.status().as_u16();
                        resp.into_body().collect().await?;
                        anyhow::Ok(status)
                    }
                    .await;
                    let t1 = Instant::now();
                    let counted = t0 >= measure_from && t1 <= until;
                    match result {
                        Ok(status) => {
                            if counted {
                                tally
                                    .latencies_us
                                    .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                                *tally.statuses.entry(status).or_default() += 1;
                            }
                        }
                        Err(_) => {
                            if counted {
                                tally.errors += 1;
                            }
                            break; // reconnect
                        }
                    }
                    if sender.ready().await.is_err() {
                        break;
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await?;
        all.latencies_us.extend(t.latencies_us);
        for (s, n) in t.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
        all.errors += t.errors;
    }
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.latencies_us.is_empty() {
            return 0;
        }
        let i = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        all.latencies_us[i.min(all.latencies_us.len() - 1)]
    };
    let n = all.latencies_us.len() as f64;
    let non_2xx: u64 = all
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let out = serde_json::json!({
        "label": args.label,
        "url": args.url,
        "connections": args.connections,
        "duration_s": args.duration,
        "requests": all.latencies_us.len(),
        "requests_per_second": (n / args.duration).round(),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": all.latencies_us.last().copied().unwrap_or(0),
        "statuses": all.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "non_2xx": non_2xx,
        "errors": all.errors,
    });
    println!("{out}");
    Ok(())
}

fn tls_connector(cacert: Option<&std::path::Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = cacert {
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
        {
            roots.add(cert?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
