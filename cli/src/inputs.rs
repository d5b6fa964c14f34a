//! Loading what a decision needs from the command line: tenants, policies, cluster state,
//! manifests. Absent flags fall back to the embedded default.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tenantry_tenancy::{Directory, PolicyEngine, PostgresSource, TenantSource};
use tenantry_webhook::{Ledger, embedded};

/// What a decision is made against: `--tenants` and `--policies`, shared by `review` and
/// `audit` so both read the same defaults.
#[derive(clap::Args)]
pub struct Sources {
    /// Tenant source: a YAML file or postgres:// URL (default: the embedded example).
    #[arg(long, env = "TENANTRY_TENANTS")]
    pub tenants: Option<String>,
    /// Policy directory (default: ./policies when it exists, else the policies built into
    /// this binary; the one used is named on standard error).
    #[arg(long, env = "TENANTRY_POLICIES")]
    pub policies: Option<std::path::PathBuf>,
}

impl Sources {
    pub fn load(&self) -> Result<(Directory, PolicyEngine)> {
        Ok((
            directory(self.tenants.as_deref())?,
            policies(self.policies.as_deref())?,
        ))
    }
}

/// The tenant directory from `--tenants` (a YAML file or Postgres URL), or the embedded example.
pub fn directory(source: Option<&str>) -> Result<Directory> {
    match source.map(TenantSource::parse) {
        None => Ok(embedded::directory()?),
        Some(TenantSource::File(path)) => Ok(tenantry_tenancy::source::load_file(&path)?),
        Some(TenantSource::Postgres(url)) => {
            let runtime = runtime()?;
            runtime.block_on(async {
                let pg = PostgresSource::connect(&url, Duration::from_secs(5)).await?;
                Ok(pg.load().await?)
            })
        }
    }
}

/// The directory every policy command reads when none is given: `policy check`, `fmt` and
/// `test` take it as their default argument, and `review` uses it when it exists.
pub const DEFAULT_POLICY_DIR: &str = "policies";

/// The policies from `--policies DIR`; else `./policies` when it holds a schema (the same
/// default as `policy check` and `test`); else the set built into this binary. Which one was used
/// is said on standard error, so a review is never read against the wrong set.
pub fn policies(dir: Option<&Path>) -> Result<PolicyEngine> {
    let default = Path::new(DEFAULT_POLICY_DIR);
    let dir = dir.or_else(|| {
        default
            .join(tenantry_tenancy::policy::SCHEMA_FILE)
            .is_file()
            .then_some(default)
    });
    let engine = match dir {
        None => embedded::policies()?,
        Some(dir) => PolicyEngine::load_dir(dir)?,
    };
    match dir {
        Some(dir) => eprintln!("policies: {} ({} policies)", dir.display(), engine.len()),
        None => eprintln!(
            "policies: built into this binary ({} policies; no ./{DEFAULT_POLICY_DIR} here, --policies DIR to choose)",
            engine.len()
        ),
    }
    Ok(engine)
}

/// Usage from `--state FILE` (existing objects), or nothing.
pub fn state(path: Option<&Path>) -> Result<Ledger> {
    let Some(path) = path else {
        return Ok(Ledger::new());
    };
    let objects = read_documents(path)?;
    Ledger::from_objects(&objects)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot count usage from `{}`", path.display()))
}

/// Every non-empty YAML/JSON document of a file (`-` reads standard input).
pub fn read_documents(path: &Path) -> Result<Vec<Value>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?
    };
    parse_documents(&text).with_context(|| format!("`{}` is not valid YAML", path.display()))
}

pub fn parse_documents(text: &str) -> Result<Vec<Value>> {
    tenantry_webhook::usage::parse_objects(text).map_err(anyhow::Error::msg)
}

/// Exactly one document.
pub fn read_one(path: &Path) -> Result<Value> {
    let mut docs = read_documents(path)?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        0 => bail!("`{}` holds no object", path.display()),
        n => bail!("`{}` holds {n} objects; expected one", path.display()),
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
