//! TLS material for Tenantry's servers: PEM certificates that reload when their files change,
//! and a CA plus serving certificate generated for a Kubernetes Service.
//!
//! Rotation never fails a request: the server's rustls config asks [`ReloadingCert`] for the
//! certificate on every handshake, and a reload swaps it atomically. A half-written pair (the
//! certificate updated, the key not yet) does not load, so the old pair keeps serving until the
//! next poll sees a matching one.

pub mod client;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tracing::{info, warn};

#[derive(Debug, Error)]
pub enum CertError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("`{path}` holds no usable PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in `{key}` does not match the certificate in `{cert}`")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Reads a certificate chain and its private key, and checks that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let cert_pem = std::fs::read(cert).map_err(|source| CertError::Read {
        path: cert.into(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| CertError::Read {
        path: key.into(),
        source,
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate { path: cert.into() });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::BadKey {
        path: key.into(),
        reason: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| CertError::BadKey {
            path: key.into(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| CertError::Mismatch {
        cert: cert.into(),
        key: key.into(),
    })?;
    Ok(certified)
}

/// The serving certificate, swapped in place when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<Option<(SystemTime, SystemTime)>>,
}

impl ReloadingCert {
    /// Loads the pair now; fails if it is unusable (there is nothing to fall back to yet).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, CertError> {
        let pair = load_pair(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(pair)),
            stamp: RwLock::new(modified(cert, key)),
        }))
    }

    /// Reloads if either file changed. `Ok(true)` when a new pair is now serving; on error the
    /// old pair stays.
    pub fn reload_if_changed(&self) -> Result<bool, CertError> {
        let now = modified(&self.cert, &self.key);
        if now.is_some() && now == *self.stamp.read().unwrap_or_else(|p| p.into_inner()) {
            return Ok(false);
        }
        let pair = load_pair(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(true)
    }

    /// When the certificate now serving expires, in seconds since the Unix epoch (for the
    /// `certificate_expiry_timestamp_seconds` gauge and its alert); `None` if it cannot be read.
    pub fn not_after(&self) -> Option<i64> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let der = current.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// Polls the files every `interval` for as long as the task runs.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        on_reload: impl Fn(Result<(), String>),
    ) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    info!(cert = %self.cert.display(), "serving certificate reloaded");
                    on_reload(Ok(()));
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "serving certificate not reloaded; the previous one stays");
                    on_reload(Err(e.to_string()));
                }
            }
        }
    }

    /// A rustls server configuration that serves this certificate (HTTP/2 and HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn modified(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

/// A CA and a serving certificate signed by it, PEM encoded.
#[derive(Debug, Clone)]
pub struct Generated {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

/// The DNS names the API server uses for a Service: `svc`, `svc.ns`, `svc.ns.svc`,
/// `svc.ns.svc.cluster.local`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Generates a CA and a serving certificate for `names` (DNS names or IP addresses), valid for
/// `days`.
pub fn generate(names: &[String], days: u32) -> Result<Generated, CertError> {
    let (not_before, not_after) = validity(days);
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tenantry-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    // The CA outlives the serving certificates it signs, so rotating them keeps clients' trust.
    ca_params.not_after = not_after + time::Duration::days(i64::from(days) * 4);
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let (cert, key) = serving(names, days, &ca)?;
    Ok(Generated {
        ca_cert: ca.pem(),
        ca_key: ca_key_pem,
        cert,
        key,
    })
}

/// A new serving certificate signed by an existing CA (rotation without touching `caBundle`).
pub fn renew(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &[String],
    days: u32,
) -> Result<Generated, CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let (cert, key) = serving(names, days, &issuer)?;
    Ok(Generated {
        ca_cert: ca_cert_pem.to_string(),
        ca_key: ca_key_pem.to_string(),
        cert,
        key,
    })
}

fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    // Backdated a little so a node with a slow clock does not reject a fresh certificate.
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(i64::from(days)),
    )
}

fn serving(
    names: &[String],
    days: u32,
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
) -> Result<(String, String), CertError> {
    let (not_before, not_after) = validity(days);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("tenantry", String::as_str),
    );
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `contents` to `path` atomically (a temporary file renamed over it), so a reader never
/// sees half a certificate.
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tenantry-certs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generated_pairs_load_and_reload() {
        let dir = scratch("reload");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let first = generate(&service_names("tenantry-webhook", "tenantry-system"), 30).unwrap();
        write_atomic(&cert, &first.cert).unwrap();
        write_atomic(&key, &first.key).unwrap();
        let serving = ReloadingCert::load(&cert, &key).unwrap();
        assert!(!serving.reload_if_changed().unwrap(), "nothing changed");

        // A rotation that has written the certificate but not yet the key does not load.
        let second = generate(&["127.0.0.1".to_string()], 30).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        write_atomic(&cert, &second.cert).unwrap();
        assert!(matches!(
            serving.reload_if_changed(),
            Err(CertError::Mismatch { .. })
        ));
        write_atomic(&key, &second.key).unwrap();
        assert!(serving.reload_if_changed().unwrap());
    }

    #[test]
    fn bad_files_are_named_in_errors() {
        let dir = scratch("bad");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let err = load_pair(&cert, &key).unwrap_err().to_string();
        assert!(
            err.contains("tls.crt") && err.contains("no PEM certificate"),
            "{err}"
        );
        let missing = load_pair(&dir.join("nope.crt"), &key)
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with("cannot read"), "{missing}");
    }
}
