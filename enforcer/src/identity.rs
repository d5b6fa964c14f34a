//! Who is calling: exactly one well-formed `X-Tenant-ID` naming a known tenant, and optionally a
//! JWT whose tenant claim says the same.
//!
//! The header rules are strict on purpose. Anything a downstream framework might read as the
//! tenant (a second header, a comma-joined list, an `X_Tenant_ID` spelling that some servers fold
//! into the same variable) is refused, so the application never sees a value the enforcer did not
//! validate; the proxy then removes every spelling and sets the one validated value itself.

use std::collections::HashMap;
use std::path::Path;

use http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use thiserror::Error;

use crate::canonical::{self, IdentityHeader};
use crate::config::{JwtAlgorithm, JwtConfig, JwtKeySource};

pub const TENANT_HEADER: &str = "x-tenant-id";
pub const TIER_HEADER: &str = "x-tenant-tier";

/// Why a caller's identity was not accepted. Every variant is a 401.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    #[error("missing `X-Tenant-ID` header")]
    Missing,
    #[error("more than one `X-Tenant-ID` header")]
    Duplicate,
    #[error("header `{0}` is an alias of `X-Tenant-ID` and is not accepted")]
    Alias(String),
    #[error("`X-Tenant-ID` is empty")]
    Empty,
    #[error("`X-Tenant-ID` is not a single tenant id")]
    Malformed,
    #[error("unknown tenant `{0}`")]
    Unknown(String),
    #[error("missing bearer token")]
    NoToken,
    #[error("invalid token: {0}")]
    BadToken(String),
}

/// The one tenant id in `headers`, syntactically valid (not yet looked up).
pub fn tenant_header(headers: &HeaderMap) -> Result<&str, IdentityError> {
    let mut values = headers.get_all(TENANT_HEADER).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(IdentityError::Duplicate);
    }
    // Aliases are rare; only scan when the map could hold one (any name of the right length).
    for name in headers.keys() {
        if name.as_str() != TENANT_HEADER
            && canonical::identity_spelling(name.as_str()) == Some(IdentityHeader::Tenant)
        {
            return Err(IdentityError::Alias(name.as_str().to_string()));
        }
    }
    let value = first.ok_or(IdentityError::Missing)?;
    let value = value.to_str().map_err(|_| IdentityError::Malformed)?;
    if value.is_empty() {
        return Err(IdentityError::Empty);
    }
    // Tenant ids are DNS labels: lowercase letters, digits and `-`. No trimming, no case folding:
    // ` acme`, `ACME` and `acme,globex` are refused rather than reinterpreted.
    let ok = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(IdentityError::Malformed);
    }
    Ok(value)
}

#[derive(Debug, Error)]
pub enum JwtSetupError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file `{0}` is empty")]
    EmptySecret(std::path::PathBuf),
    #[error("`{path}` is not a JWKS document: {source}")]
    Jwks {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("key `{kid}` in the JWKS cannot be used: {source}")]
    Key {
        kid: String,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("the JWKS `{0}` has no usable {1} key")]
    NoKeys(std::path::PathBuf, &'static str),
}

/// Verifies bearer tokens with one pinned algorithm.
pub struct JwtVerifier {
    validation: Validation,
    tenant_claim: String,
    /// By `kid`; the empty string holds a key usable when the token names none.
    keys: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The keys of a JWKS document (`path` names it in errors) usable with `algorithm`, by key id
/// (and under "" when there is only one).
fn jwks_keys(
    path: std::path::PathBuf,
    document: &[u8],
    algorithm: JwtAlgorithm,
) -> Result<HashMap<String, DecodingKey>, JwtSetupError> {
    use jsonwebtoken::jwk::AlgorithmParameters;
    let set: JwkSet = serde_json::from_slice(document).map_err(|source| JwtSetupError::Jwks {
        path: path.clone(),
        source,
    })?;
    let usable: Vec<_> = set
        .keys
        .iter()
        .filter(|k| match algorithm {
            JwtAlgorithm::Es256 => matches!(k.algorithm, AlgorithmParameters::EllipticCurve(_)),
            _ => matches!(k.algorithm, AlgorithmParameters::RSA(_)),
        })
        .collect();
    let mut keys = HashMap::new();
    for jwk in &usable {
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        let key = DecodingKey::from_jwk(jwk).map_err(|source| JwtSetupError::Key {
            kid: kid.clone(),
            source,
        })?;
        if usable.len() == 1 {
            keys.insert(String::new(), key.clone());
        }
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err(JwtSetupError::NoKeys(path, algorithm.name()));
    }
    Ok(keys)
}

impl JwtVerifier {
    pub fn load(config: &JwtConfig) -> Result<JwtVerifier, JwtSetupError> {
        let algorithm = match config.algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        };
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| JwtSetupError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let mut keys = HashMap::new();
        match &config.key {
            JwtKeySource::SecretFile(path) => {
                let mut secret = read(path)?;
                // A trailing newline from `echo secret > file` is not part of the secret.
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                if secret.is_empty() {
                    return Err(JwtSetupError::EmptySecret(path.clone()));
                }
                keys.insert(String::new(), DecodingKey::from_secret(&secret));
            }
            JwtKeySource::JwksFile(path) => {
                keys = jwks_keys(path.clone(), &read(path)?, config.algorithm)?;
            }
            JwtKeySource::Jwks(document) => {
                keys = jwks_keys("--jwt-jwks".into(), document.as_bytes(), config.algorithm)?;
            }
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(JwtVerifier {
            validation,
            tenant_claim: config.tenant_claim.clone(),
            keys,
        })
    }

    /// Checks the `Authorization: Bearer` token and that its tenant claim equals `tenant`.
    pub fn verify(&self, headers: &HeaderMap, tenant: &str) -> Result<(), IdentityError> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(IdentityError::NoToken)?;
        if values.next().is_some() {
            return Err(IdentityError::BadToken(
                "more than one Authorization header".into(),
            ));
        }
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 9110 §11.1).
            .and_then(|(scheme, token)| {
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .ok_or(IdentityError::NoToken)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| IdentityError::BadToken(e.to_string()))?;
        let key = self
            .keys
            .get(header.kid.as_deref().unwrap_or(""))
            .ok_or_else(|| IdentityError::BadToken("unknown key id".into()))?;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &self.validation)
                .map_err(|e| IdentityError::BadToken(e.to_string()))?;
        // `nbf` is optional for jsonwebtoken; when present it must be a number, like `exp`.
        if let Some(nbf) = data.claims.get("nbf")
            && !nbf.is_u64()
            && !nbf.is_i64()
        {
            return Err(IdentityError::BadToken("`nbf` is not a number".into()));
        }
        match data.claims.get(&self.tenant_claim).and_then(Value::as_str) {
            Some(claimed) if claimed == tenant => Ok(()),
            Some(_) => Err(IdentityError::BadToken(format!(
                "the `{}` claim does not match `X-Tenant-ID`",
                self.tenant_claim
            ))),
            None => Err(IdentityError::BadToken(format!(
                "no `{}` claim",
                self.tenant_claim
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_rules() {
        assert_eq!(
            tenant_header(&headers(&[("X-Tenant-ID", "acme")])),
            Ok("acme")
        );
        assert_eq!(
            tenant_header(&headers(&[("x-TENANT-id", "acme")])),
            Ok("acme")
        );
        assert_eq!(tenant_header(&headers(&[])), Err(IdentityError::Missing));
        assert_eq!(
            tenant_header(&headers(&[
                ("X-Tenant-ID", "acme"),
                ("x-tenant-id", "acme")
            ])),
            Err(IdentityError::Duplicate)
        );
        assert_eq!(
            tenant_header(&headers(&[("X-Tenant-ID", "acme,globex")])),
            Err(IdentityError::Malformed)
        );
        assert_eq!(
            tenant_header(&headers(&[("X-Tenant-ID", "")])),
            Err(IdentityError::Empty)
        );
        assert_eq!(
            tenant_header(&headers(&[("X-Tenant-ID", "ACME")])),
            Err(IdentityError::Malformed)
        );
        assert_eq!(
            tenant_header(&headers(&[
                ("X-Tenant-ID", "acme"),
                ("X_Tenant_ID", "globex")
            ])),
            Err(IdentityError::Alias("x_tenant_id".into()))
        );
        assert_eq!(
            tenant_header(&headers(&[("x_tenant-id", "globex")])),
            Err(IdentityError::Alias("x_tenant-id".into()))
        );
    }

    #[test]
    fn stripping_removes_every_spelling() {
        let mut h = headers(&[
            ("X-Tenant-ID", "acme"),
            ("X_Tenant_ID", "x"),
            ("X-Tenant-Tier", "gold"),
            ("x_tenant_tier", "gold"),
            ("X-Tenant_Tier", "gold"),
            ("X_Tenant-Tier", "gold"),
            ("other", "1"),
        ]);
        canonical::strip_identity(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("other"));
    }
}
