//! `tenantry`: review manifests offline exactly as the cluster would, write and test Cedar
//! policies, manage tenants in PostgreSQL, and run the demo.
//!
//! Exit codes: 0 success/allowed, 1 denied or failed check, 2 bad input or error.

mod cases;
mod demo;
mod inputs;
mod policy_cmd;
mod review_cmd;
mod tenants_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tenantry",
    version,
    about = "Keep tenants apart on a shared Kubernetes cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Review a manifest offline: mutation then validation, exactly as the webhook decides.
    Review(review_cmd::ReviewArgs),
    /// Check, format and test Cedar policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage tenants (PostgreSQL source; list and show also read YAML files).
    #[command(subcommand)]
    Tenants(tenants_cmd::TenantsCommand),
    /// Create or upgrade the Tenantry tables in PostgreSQL.
    Migrate {
        /// PostgreSQL URL of the tenant directory.
        #[arg(long, env = "TENANTRY_TENANTS")]
        tenants: String,
    },
    /// Show Tenantry at work on the embedded example tenants and policies (nothing to install).
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policies strictly against the schema; report problems as file:line:column.
    Check {
        /// Directory with tenantry.cedarschema and *.cedar files.
        #[arg(default_value = "policies", env = "TENANTRY_POLICIES")]
        dir: PathBuf,
    },
    /// Format *.cedar files in place (or only report with --check).
    Fmt {
        /// Directory with *.cedar files.
        #[arg(default_value = "policies", env = "TENANTRY_POLICIES")]
        dir: PathBuf,
        /// Do not write; exit 1 if any file is not formatted.
        #[arg(long, env = "TENANTRY_CHECK")]
        check: bool,
    },
    /// Run the policy test cases in DIR/tests/*.yaml against the policies in DIR.
    Test {
        /// Directory with the policies and a tests/ subdirectory.
        #[arg(default_value = "policies", env = "TENANTRY_POLICIES")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Review(args) => review_cmd::run(&args),
        Command::Policy(PolicyCommand::Check { dir }) => policy_cmd::check(&dir),
        Command::Policy(PolicyCommand::Fmt { dir, check }) => policy_cmd::fmt(&dir, check),
        Command::Policy(PolicyCommand::Test { dir }) => policy_cmd::test(&dir),
        Command::Tenants(command) => tenants_cmd::run(command),
        Command::Migrate { tenants } => tenants_cmd::migrate(&tenants),
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
