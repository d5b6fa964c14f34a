//! A minimal HTTP(S) client for tests: one request per connection (so every request does a TLS
//! handshake, which is what certificate-rotation tests need), trusting a given CA.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A response: status, body, and the certificate the server presented (DER).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub peer_certificate: Option<Vec<u8>>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone)]
pub struct Client {
    tls: Option<tokio_rustls::TlsConnector>,
    server_name: String,
}

impl Client {
    /// HTTPS, trusting the PEM CA in `ca_pem`, expecting `server_name` in the certificate.
    pub fn https(ca_pem: &str, server_name: &str) -> Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.context("bad CA PEM")?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Full handshakes only: a resumed session would not show the server's current certificate.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Client {
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
            server_name: server_name.to_string(),
        })
    }

    /// Plain HTTP.
    pub fn http() -> Client {
        Client {
            tls: None,
            server_name: String::new(),
        }
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Reply> {
        self.send(addr, "GET", path, Vec::new()).await
    }

    pub async fn post(&self, addr: SocketAddr, path: &str, body: Vec<u8>) -> Result<Reply> {
        self.send(addr, "POST", path, body).await
    }

    pub async fn send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Reply> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from(self.server_name.clone())?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake failed")?;
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let (status, body) = exchange(TokioIo::new(tls), request).await?;
                Ok(Reply {
                    status,
                    body,
                    peer_certificate: peer,
                })
            }
            None => {
                let (status, body) = exchange(TokioIo::new(tcp), request).await?;
                Ok(Reply {
                    status,
                    body,
                    peer_certificate: None,
                })
            }
        }
    }
}

async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<(u16, Vec<u8>)>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}
