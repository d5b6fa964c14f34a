//! `tenantry tenants …` and `tenantry migrate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use tenantry_tenancy::{PostgresSource, Status, TenantSource};

use crate::inputs;

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// Load a tenants YAML file into PostgreSQL (creates or replaces what the file lists; idempotent).
    Import {
        file: PathBuf,
        /// PostgreSQL URL of the tenant directory.
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
    /// List tenants with tier, status and namespaces.
    List {
        /// A YAML file or postgres:// URL (default: the embedded example).
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: Option<String>,
    },
    /// Show one tenant as YAML.
    Show {
        id: String,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: Option<String>,
    },
    /// Move a tenant to another tier.
    SetTier {
        id: String,
        tier: String,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
    /// Suspend a tenant: its creates and updates are refused, its traffic gets 403.
    Suspend {
        id: String,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
    /// Resume a suspended tenant.
    Resume {
        id: String,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
}

fn postgres_url(source: &str) -> Result<String> {
    match TenantSource::parse(source) {
        TenantSource::Postgres(url) => Ok(url),
        TenantSource::File(path) => bail!(
            "`{}` is a YAML file; edit it directly, or give a postgres:// URL to change the database",
            path.display()
        ),
    }
}

fn with_postgres<T>(source: &str, f: impl AsyncFnOnce(PostgresSource) -> Result<T>) -> Result<T> {
    let url = postgres_url(source)?;
    inputs::runtime()?.block_on(async move {
        let pg = PostgresSource::connect(&url, Duration::from_secs(5)).await?;
        f(pg).await
    })
}

pub fn migrate(source: &str) -> Result<ExitCode> {
    with_postgres(source, async |pg| {
        pg.migrate().await?;
        println!("migrated: directory version {}", pg.version().await?);
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run(command: TenantsCommand) -> Result<ExitCode> {
    match command {
        TenantsCommand::Import { file, tenants } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read `{}`", file.display()))?;
            let parsed = tenantry_tenancy::source::parse_yaml(&text, &file)?;
            with_postgres(&tenants, async |pg| {
                pg.import(&parsed)
                    .await
                    .with_context(|| format!("cannot import `{}`", file.display()))?;
                let d = pg.load().await?;
                println!(
                    "imported {} tenants and {} tiers from {} (directory version {})",
                    parsed.tenants.len(),
                    parsed.tiers.len(),
                    file.display(),
                    d.version()
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        TenantsCommand::List { tenants } => {
            let directory = inputs::directory(tenants.as_deref())?;
            let mut rows: Vec<_> = directory.tenants().collect();
            rows.sort_by(|a, b| a.id.cmp(&b.id));
            println!(
                "{:<20} {:<12} {:<10} {:<12} NAMESPACES",
                "TENANT", "TIER", "STATUS", "CLIENT"
            );
            for t in rows {
                let client = t.client.as_ref().map_or("-", |c| &*c.id);
                println!(
                    "{:<20} {:<12} {:<10} {:<12} {}",
                    t.id,
                    t.tier.name,
                    t.status,
                    client,
                    t.namespaces.join(",")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Show { id, tenants } => {
            let directory = inputs::directory(tenants.as_deref())?;
            let Some(spec) = directory.source().tenants.get(&id) else {
                bail!("unknown tenant `{id}`");
            };
            let tier = directory.source().tiers.get(&spec.tier);
            let view = serde_json::json!({ "tenant": id, "spec": spec, "tier": tier });
            print!("{}", serde_saphyr::to_string(&view)?);
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::SetTier { id, tier, tenants } => with_postgres(&tenants, async |pg| {
            pg.set_tier(&id, &tier).await?;
            println!("tenant `{id}` is now on tier `{tier}`");
            Ok(ExitCode::SUCCESS)
        }),
        TenantsCommand::Suspend { id, tenants } => with_postgres(&tenants, async |pg| {
            pg.set_status(&id, Status::Suspended).await?;
            println!("tenant `{id}` is suspended");
            Ok(ExitCode::SUCCESS)
        }),
        TenantsCommand::Resume { id, tenants } => with_postgres(&tenants, async |pg| {
            pg.set_status(&id, Status::Active).await?;
            println!("tenant `{id}` is active");
            Ok(ExitCode::SUCCESS)
        }),
    }
}
