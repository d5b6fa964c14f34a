//! `tenantry tenants …` and `tenantry migrate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use tenantry_tenancy::{PostgresSource, Role, Status, TenantSource};

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
    /// Print the whole directory as a tenants YAML file (what `import` reads): a backup, or the
    /// start of a GitOps workflow.
    Export {
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
    /// Resume a suspended tenant, or restore a deleted one before it is purged.
    Resume {
        id: String,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
    /// Delete a tenant: everything it does is refused at once (admission and traffic) and its
    /// workloads are scaled to zero; its namespaces, with their data, are deleted by the
    /// provisioning controller once the grace period has passed. `resume` restores it until then.
    Delete {
        id: String,
        /// How long the data is kept before the namespaces are deleted.
        #[arg(long, default_value = "30d", value_parser = tenantry_tenancy::config::parse_duration)]
        grace_period: Duration,
        /// Delete the namespaces now, without a grace period.
        #[arg(long, conflicts_with = "grace_period")]
        now: bool,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
    /// Make an identity a member of a tenant (or of one of its teams) with a role; run again to
    /// change the role.
    AddMember {
        id: String,
        #[command(flatten)]
        identity: MemberIdentity,
        /// admin (Kubernetes `admin`), developer (`edit`) or viewer (`view`).
        #[arg(long, default_value = "developer")]
        role: Role,
        /// A team of the tenant: the member is bound in the team's namespaces only.
        #[arg(long)]
        team: Option<String>,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
    /// Give a tenant a namespace: the provisioning controller creates and isolates it.
    AddNamespace {
        id: String,
        namespace: String,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
    /// Take a namespace from a tenant. The namespace is not deleted; it is no longer the
    /// tenant's, and the tenant's members lose their bindings in it.
    RemoveNamespace {
        id: String,
        namespace: String,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
    /// Remove a member from a tenant (or from one of its teams).
    RemoveMember {
        id: String,
        #[command(flatten)]
        identity: MemberIdentity,
        #[arg(long)]
        team: Option<String>,
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
}

/// Exactly one identity.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct MemberIdentity {
    /// A Kubernetes user name.
    #[arg(long)]
    user: Option<String>,
    /// A Kubernetes group.
    #[arg(long)]
    group: Option<String>,
    /// A service account, `namespace:name`.
    #[arg(long)]
    serviceaccount: Option<String>,
}

impl MemberIdentity {
    /// `(kind, name)` as the members table stores them.
    fn kind_and_name(&self) -> (&'static str, &str) {
        match (&self.user, &self.group, &self.serviceaccount) {
            (Some(u), _, _) => ("user", u),
            (_, Some(g), _) => ("group", g),
            (_, _, Some(sa)) => ("serviceaccount", sa),
            // clap's group makes one of the three required.
            (None, None, None) => ("user", ""),
        }
    }
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
        out!("migrated: directory version {}", pg.version().await?);
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
                out!(
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
            out!(
                "{:<20} {:<12} {:<10} {:<12} NAMESPACES",
                "TENANT",
                "TIER",
                "STATUS",
                "CLIENT"
            );
            for t in rows {
                let client = t.client.as_ref().map_or("-", |c| &*c.id);
                out!(
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
        TenantsCommand::Export { tenants } => {
            let directory = inputs::directory(tenants.as_deref())?;
            out_raw!("{}", serde_saphyr::to_string(directory.source())?);
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::AddNamespace {
            id,
            namespace,
            tenants,
        } => with_postgres(&tenants, async |pg| {
            pg.add_namespace(&id, &namespace).await?;
            out!("namespace `{namespace}` is tenant `{id}`'s");
            Ok(ExitCode::SUCCESS)
        }),
        TenantsCommand::RemoveNamespace {
            id,
            namespace,
            tenants,
        } => with_postgres(&tenants, async |pg| {
            if !pg.remove_namespace(&id, &namespace).await? {
                bail!("namespace `{namespace}` is not tenant `{id}`'s");
            }
            out!("namespace `{namespace}` is no longer tenant `{id}`'s (it was not deleted)");
            Ok(ExitCode::SUCCESS)
        }),
        TenantsCommand::Show { id, tenants } => {
            let directory = inputs::directory(tenants.as_deref())?;
            let Some(spec) = directory.source().tenants.get(&id) else {
                bail!("unknown tenant `{id}`");
            };
            let tier = directory.source().tiers.get(&spec.tier);
            let view = serde_json::json!({ "tenant": id, "spec": spec, "tier": tier });
            out_raw!("{}", serde_saphyr::to_string(&view)?);
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::SetTier { id, tier, tenants } => with_postgres(&tenants, async |pg| {
            pg.set_tier(&id, &tier).await?;
            out!("tenant `{id}` is now on tier `{tier}`");
            Ok(ExitCode::SUCCESS)
        }),
        TenantsCommand::Suspend { id, tenants } => with_postgres(&tenants, async |pg| {
            pg.set_status(&id, Status::Suspended).await?;
            out!("tenant `{id}` is suspended");
            Ok(ExitCode::SUCCESS)
        }),
        TenantsCommand::Delete {
            id,
            grace_period,
            now,
            tenants,
        } => with_postgres(&tenants, async |pg| {
            let grace = if now { Duration::ZERO } else { grace_period };
            let purge_after = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::try_from(grace)?)
                .context("the grace period is too long")?;
            pg.delete_tenant(&id, purge_after).await?;
            if now {
                out!("tenant `{id}` is deleted; its namespaces are being deleted now");
            } else {
                out!(
                    "tenant `{id}` is deleted; its namespaces are deleted after {purge_after} (`tenantry tenants resume {id}` restores it until then)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
        TenantsCommand::Resume { id, tenants } => with_postgres(&tenants, async |pg| {
            pg.set_status(&id, Status::Active).await?;
            out!("tenant `{id}` is active");
            Ok(ExitCode::SUCCESS)
        }),
        TenantsCommand::AddMember {
            id,
            identity,
            role,
            team,
            tenants,
        } => with_postgres(&tenants, async |pg| {
            let (kind, name) = identity.kind_and_name();
            pg.set_member(&id, team.as_deref(), kind, name, role)
                .await?;
            let place = team.map_or(format!("tenant `{id}`"), |t| format!("team `{id}/{t}`"));
            out!("{kind} `{name}` is a {role} of {place}");
            Ok(ExitCode::SUCCESS)
        }),
        TenantsCommand::RemoveMember {
            id,
            identity,
            team,
            tenants,
        } => with_postgres(&tenants, async |pg| {
            let (kind, name) = identity.kind_and_name();
            let place = team
                .as_deref()
                .map_or(format!("tenant `{id}`"), |t| format!("team `{id}/{t}`"));
            if !pg.remove_member(&id, team.as_deref(), kind, name).await? {
                bail!("{kind} `{name}` is not a member of {place}");
            }
            out!("{kind} `{name}` is no longer a member of {place}");
            Ok(ExitCode::SUCCESS)
        }),
    }
}
