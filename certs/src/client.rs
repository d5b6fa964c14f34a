//! A minimal HTTP(S) client for loopback tools: the demo, the load harness and tests. One request
//! per connection unless kept alive explicitly, trusting a given CA, full handshakes only (so a
//! rotated certificate is seen at once).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
}

type Result<T> = std::result::Result<T, ClientError>;

fn http_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Http(e.to_string())
}

fn tls_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Tls(e.to_string())
}

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
            roots.add(cert.map_err(tls_err)?).map_err(tls_err)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
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

    /// A raw TLS connection, for tests that write bytes the way a slow or hostile peer would.
    pub async fn connect_tls(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let connector = self
            .tls
            .as_ref()
            .ok_or_else(|| tls_err("this client speaks plain HTTP"))?;
        let name = ServerName::try_from(self.server_name.clone()).map_err(tls_err)?;
        connector.connect(name, tcp).await.map_err(tls_err)
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
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(http_err)?;
        match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from(self.server_name.clone()).map_err(tls_err)?;
                let tls = connector.connect(name, tcp).await.map_err(tls_err)?;
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
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http_err)?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await.map_err(http_err)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http_err)?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}
