//! `tenantry review`: one manifest through mutation and validation, offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use tenantry_webhook::review::{self, Identity, Outcome, Write};
use tenantry_webhook::{InjectionConfig, Inputs, Operation};

use crate::inputs;

#[derive(Args)]
pub struct ReviewArgs {
    /// The manifest to review (YAML or JSON; several documents are reviewed one by one; - reads stdin).
    #[arg(short = 'f', long = "filename", env = "TENANTRY_FILENAME")]
    pub file: PathBuf,
    /// The user making the write (`system:serviceaccount:NS:NAME` for a service account).
    #[arg(long, env = "TENANTRY_USER")]
    pub user: String,
    /// A group of the user; repeat for several.
    #[arg(long = "group", env = "TENANTRY_GROUP", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Namespace of the object, if the manifest does not say (default `default`).
    #[arg(short, long, env = "TENANTRY_NAMESPACE")]
    pub namespace: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    #[arg(long, default_value = "CREATE", env = "TENANTRY_OPERATION")]
    pub operation: Operation,
    /// The object as it is now, for UPDATE.
    #[arg(long, env = "TENANTRY_OLD")]
    pub old: Option<PathBuf>,
    #[command(flatten)]
    pub sources: inputs::Sources,
    /// Existing objects (multi-document YAML) that give usage and taken Ingress hosts.
    #[arg(long, env = "TENANTRY_STATE")]
    pub state: Option<PathBuf>,
    /// Review as a dry-run request.
    #[arg(long, env = "TENANTRY_DRY_RUN")]
    pub dry_run: bool,
    /// Review a subresource request (`pods/eviction`, `serviceaccounts/token`,
    /// `deployments/scale`, …): the manifest is then the subresource's body.
    #[arg(long, env = "TENANTRY_SUBRESOURCE")]
    pub subresource: Option<String>,
    /// The parent object's name, when the subresource body does not carry it (a TokenRequest).
    #[arg(long, env = "TENANTRY_PARENT")]
    pub parent: Option<String>,
    /// Output format.
    #[arg(
        short,
        long,
        value_enum,
        default_value = "text",
        env = "TENANTRY_OUTPUT"
    )]
    pub output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub fn run(args: &ReviewArgs) -> Result<ExitCode> {
    let (directory, policies) = args.sources.load()?;
    let usage = inputs::state(args.state.as_deref())?;
    let injection = InjectionConfig::default();
    let boundary = tenantry_webhook::Boundary::default();
    let view = usage.view(None);
    let inputs = Inputs {
        directory: &directory,
        usage: &view,
        policies: &policies,
        injection: &injection,
        boundary: &boundary,
    };

    let objects = inputs::read_documents(&args.file)?;
    anyhow::ensure!(
        !objects.is_empty(),
        "`{}` holds no object",
        args.file.display()
    );
    let old = args.old.as_deref().map(inputs::read_one).transpose()?;
    let identity = Identity {
        user: args.user.clone(),
        groups: args.groups.clone(),
    };

    let mut outcomes = Vec::new();
    for (i, object) in objects.into_iter().enumerate() {
        let write = Write {
            object,
            old: old.clone(),
            identity: identity.clone(),
            namespace: args.namespace.clone(),
            operation: args.operation,
            dry_run: args.dry_run,
            subresource: args.subresource.clone(),
            name: args.parent.clone(),
        };
        let request = review::admission_request(&write, &format!("tenantry-review-{i}"))
            .with_context(|| format!("document {} of `{}`", i + 1, args.file.display()))?;
        outcomes.push(review::run(&inputs, &request)?);
    }

    match args.output {
        Output::Json if outcomes.len() == 1 => {
            out!("{}", serde_json::to_string_pretty(&outcomes[0])?)
        }
        Output::Json => out!("{}", serde_json::to_string_pretty(&outcomes)?),
        Output::Text => {
            for o in &outcomes {
                out_raw!("{}", render_text(o));
            }
        }
    }
    Ok(if outcomes.iter().all(|o| o.allowed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A human summary: the verdict, then what mutation changed.
pub fn render_text(o: &Outcome) -> String {
    let kind = o
        .object
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("object");
    let name = o
        .object
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let mut out = String::new();
    if o.allowed {
        out.push_str(&format!("ALLOWED  {kind} {name}\n"));
    } else {
        out.push_str(&format!("DENIED   {kind} {name}\n  {}\n", o.message));
    }
    for op in o.patch.as_array().into_iter().flatten() {
        let verb = op.get("op").and_then(|v| v.as_str()).unwrap_or("?");
        let path = op.get("path").and_then(|v| v.as_str()).unwrap_or("?");
        out.push_str(&format!("  patch: {verb} {path}\n"));
    }
    for w in &o.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    out
}
