//! `tenantry`: review manifests offline exactly as the cluster would, write and test Cedar
//! policies, manage tenants in PostgreSQL, and run the demo.
//!
//! Exit codes: 0 success/allowed, 1 denied or failed check, 2 bad input or error.

/// `println!` that ends the program quietly when the reader has gone (`tenantry review -o json |
/// head`): a closed pipe is the reader's choice, not an error, and must not panic.
macro_rules! out {
    () => {
        $crate::emit(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with the same care.
macro_rules! out_raw {
    ($($arg:tt)*) => {
        $crate::emit(format_args!($($arg)*))
    };
}

mod audit_cmd;
mod cases;
mod demo;
mod inputs;
mod policy_cmd;
mod review_cmd;
mod tenants_cmd;
mod verify_cmd;

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
    /// Check, format, test and prove properties of Cedar policy files.
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
    /// Generate TLS material for the webhook.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Judge the objects already in a cluster by the current policies and report every one they
    /// would refuse today (exit 1 if any). Quota policies are left out.
    Audit(audit_cmd::AuditArgs),
    /// Show Tenantry at work on the embedded example tenants and policies (nothing to install).
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a CA (ca.crt, ca.key) and a serving certificate (tls.crt, tls.key) for a Service.
    /// With an existing ca.crt and ca.key in OUT, only the serving certificate is renewed.
    Generate {
        /// The Service the API server calls.
        #[arg(long, default_value = "tenantry-webhook", env = "TENANTRY_SERVICE")]
        service: String,
        /// Its namespace.
        #[arg(long, default_value = "tenantry-system", env = "TENANTRY_NAMESPACE")]
        namespace: String,
        /// Extra DNS names or IP addresses (e.g. for a webhook reached by URL); repeatable.
        #[arg(long = "name", env = "TENANTRY_NAMES", value_delimiter = ',')]
        names: Vec<String>,
        /// Validity of the serving certificate in days.
        #[arg(long, default_value_t = 365, env = "TENANTRY_DAYS")]
        days: u32,
        /// Output directory.
        #[arg(long, default_value = ".", env = "TENANTRY_OUT")]
        out: PathBuf,
    },
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
    /// Prove the properties in DIR/properties/*.cedar for every request the schema allows
    /// (Cedar's symbolic compiler and the cvc5 solver); print a counterexample for each that
    /// fails. Audit-mode policies are left out: they deny nothing.
    Verify {
        /// Directory with tenantry.cedarschema and *.cedar files.
        #[arg(default_value = "policies", env = "TENANTRY_POLICIES")]
        dir: PathBuf,
        /// Directory with the property files [default: DIR/properties].
        #[arg(long, env = "TENANTRY_PROPERTIES")]
        properties: Option<PathBuf>,
        #[command(flatten)]
        solver: verify_cmd::ProofArgs,
    },
    /// List the kinds of requests whose decision changes from the policies in OLD to those in
    /// NEW, both ways, with an example request each (exit 1 if any change).
    Diff {
        /// Directory with the policies before the change.
        old: PathBuf,
        /// Directory with the policies after the change (its schema is used for both).
        new: PathBuf,
        #[command(flatten)]
        solver: verify_cmd::ProofArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Review(args) => review_cmd::run(&args),
        Command::Policy(PolicyCommand::Check { dir }) => policy_cmd::check(&dir),
        Command::Policy(PolicyCommand::Fmt { dir, check }) => policy_cmd::fmt(&dir, check),
        Command::Policy(PolicyCommand::Test { dir }) => policy_cmd::test(&dir),
        Command::Policy(PolicyCommand::Verify {
            dir,
            properties,
            solver,
        }) => verify_cmd::verify(&dir, properties.as_deref(), &solver),
        Command::Policy(PolicyCommand::Diff { old, new, solver }) => {
            verify_cmd::diff(&old, &new, &solver)
        }
        Command::Tenants(command) => tenants_cmd::run(command),
        Command::Migrate { tenants } => tenants_cmd::migrate(&tenants),
        Command::Demo(args) => demo::run(&args),
        Command::Audit(args) => audit_cmd::run(&args),
        Command::Certs(CertsCommand::Generate {
            service,
            namespace,
            names,
            days,
            out,
        }) => certs_generate(&service, &namespace, &names, days, &out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::from(2)
        }
    }
}

fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(2);
        }
        std::process::exit(0);
    }
}

/// The error and its causes, each said once: many errors already name their cause in their own
/// message (`cannot read policies from `x`: No such file…`), and repeating it helps nobody.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn certs_generate(
    service: &str,
    namespace: &str,
    extra: &[String],
    days: u32,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    // A Rust crate (the repository's own `certs/`) is no place for private keys.
    anyhow::ensure!(
        !out.join("Cargo.toml").exists(),
        "`{}` is a Rust crate directory (it has a Cargo.toml); write the keys elsewhere with --out",
        out.display()
    );
    let mut names = tenantry_certs::service_names(service, namespace);
    names.extend(extra.iter().cloned());
    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    let (ca_cert, ca_key) = (out.join("ca.crt"), out.join("ca.key"));
    let generated = if ca_cert.is_file() && ca_key.is_file() {
        let cert = std::fs::read_to_string(&ca_cert)?;
        let key = std::fs::read_to_string(&ca_key)?;
        out!(
            "renewing the serving certificate with the existing CA in {}",
            out.display()
        );
        tenantry_certs::renew(&cert, &key, &names, days)?
    } else {
        tenantry_certs::generate(&names, days)?
    };
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = out.join(name);
        tenantry_certs::write_atomic(&path, text)
            .with_context(|| format!("cannot write `{}`", path.display()))
    };
    write("ca.crt", &generated.ca_cert)?;
    write("ca.key", &generated.ca_key)?;
    write("tls.key", &generated.key)?;
    write("tls.crt", &generated.cert)?;
    out!(
        "wrote ca.crt, ca.key, tls.crt, tls.key to {} for {}",
        out.display(),
        names.join(", ")
    );
    out!(
        "caBundle for the webhook configurations: base64 -w0 {}",
        ca_cert.display()
    );
    Ok(ExitCode::SUCCESS)
}
