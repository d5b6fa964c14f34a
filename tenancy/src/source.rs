//! Where tenant data comes from: a YAML file (the embedded default) or PostgreSQL.
//!
//! Both sources produce the same [`TenantsFile`] and go through the same [`Directory::build`], so
//! a tenant behaves identically whichever source a deployment uses.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::directory::{Directory, DirectoryError};
use crate::model::TenantsFile;
use crate::postgres::PostgresError;

/// Why tenant data could not be loaded.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot read tenants file `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tenants file `{path}` is not valid: {source}")]
    Yaml {
        path: PathBuf,
        // Boxed: the parser's error is large and errors travel through every Result here.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("tenants data in `{origin}` is invalid: {source}")]
    Invalid {
        origin: String,
        #[source]
        source: DirectoryError,
    },
    #[error(transparent)]
    Postgres(#[from] PostgresError),
}

/// A `--tenants` argument: a Postgres URL or a path to a YAML file.
#[derive(Clone, PartialEq, Eq)]
pub enum TenantSource {
    Postgres(String),
    File(PathBuf),
}

impl TenantSource {
    pub fn parse(arg: &str) -> TenantSource {
        if arg.starts_with("postgres://") || arg.starts_with("postgresql://") {
            TenantSource::Postgres(arg.to_string())
        } else {
            TenantSource::File(PathBuf::from(arg))
        }
    }
}

impl fmt::Display for TenantSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TenantSource::Postgres(url) => f.write_str(&redact_url(url)),
            TenantSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

// Never print a database password into logs or error messages.
impl fmt::Debug for TenantSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantSource({self})")
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Parses tenants YAML; `origin` names it in errors.
pub fn parse_yaml(text: &str, origin: &Path) -> Result<TenantsFile, SourceError> {
    serde_saphyr::from_str(text).map_err(|source| SourceError::Yaml {
        path: origin.to_path_buf(),
        source: Box::new(source),
    })
}

/// Reads, parses and validates a tenants file into a directory snapshot.
pub fn load_file(path: &Path) -> Result<Directory, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    directory_from_yaml(&text, path)
}

/// Parses and validates tenants YAML held in memory (the embedded default).
pub fn directory_from_yaml(text: &str, origin: &Path) -> Result<Directory, SourceError> {
    let file = parse_yaml(text, origin)?;
    // A file has no version of its own; its content hash orders nothing, so reloads count up.
    Directory::build(file, 1).map_err(|source| SourceError::Invalid {
        origin: origin.display().to_string(),
        source,
    })
}

/// Follows a tenants file: every `every`, reloads it if it changed and publishes the new
/// snapshot; a broken file is logged and the last good snapshot stays (and stays fresh: the
/// file is broken, not unreachable, so the last snapshot is what the operator last had working).
/// `reloaded` hears whether each reload succeeded.
pub async fn follow_file(
    path: std::path::PathBuf,
    store: std::sync::Arc<crate::DirectoryStore>,
    every: std::time::Duration,
    reloaded: impl Fn(bool),
) {
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut last = stamp(&path);
    let mut version = store.current().version();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == last {
            store.record_fresh();
            continue;
        }
        last = now;
        match load_file(&path) {
            Ok(loaded) => {
                // Files carry no version; count reloads so metrics show the change.
                version += 1;
                let loaded = loaded.with_version(version);
                tracing::info!(
                    tenants = loaded.tenant_count(),
                    version,
                    "tenants file reloaded"
                );
                store.publish(loaded);
                reloaded(true);
            }
            Err(e) => {
                tracing::error!(error = %e, "tenants file not reloaded; the last good snapshot stays");
                store.record_fresh();
                reloaded(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_urls_from_paths() {
        assert!(matches!(
            TenantSource::parse("postgres://h/db"),
            TenantSource::Postgres(_)
        ));
        assert!(matches!(
            TenantSource::parse("postgresql://h/db"),
            TenantSource::Postgres(_)
        ));
        assert!(matches!(
            TenantSource::parse("tenants.yaml"),
            TenantSource::File(_)
        ));
    }

    #[test]
    fn never_shows_passwords() {
        let s = TenantSource::parse("postgres://app:hunter2@db:5432/tenantry");
        assert_eq!(s.to_string(), "postgres://app:***@db:5432/tenantry");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn malformed_yaml_names_the_file_and_line() {
        let err = parse_yaml("tiers:\n  free: [unclosed\n", Path::new("t.yaml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.yaml"), "{msg}");
        assert!(
            msg.contains("line") || msg.contains(":2") || msg.contains("2:"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_not_ignored() {
        let err =
            parse_yaml("tenants:\n  acme:\n    teir: free\n", Path::new("t.yaml")).unwrap_err();
        assert!(err.to_string().contains("teir"), "{err}");
    }
}
