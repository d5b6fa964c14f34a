//! `tenantry demo`: the embedded example tenants and policies at work, as a readable transcript.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tenantry_webhook::embedded;

use crate::cases;

const SCENARIO: &str = include_str!("../../examples/demo.yaml");

#[derive(Args)]
pub struct DemoArgs {}

pub fn run(_args: &DemoArgs) -> Result<ExitCode> {
    let policies = embedded::policies()?;
    let suite = cases::load_str(SCENARIO, Path::new("<embedded>/demo.yaml"))?;
    println!(
        "Tenantry demo: {} tenants from the embedded directory, {} Cedar policies, no cluster.\n\
         Each write goes through mutation then validation, exactly as the webhook decides.\n",
        suite.directory.tenant_count(),
        policies.len()
    );
    let mut surprises = 0;
    for (i, case) in suite.cases.iter().enumerate() {
        let result = cases::run_case(&suite, &policies, i)?;
        let o = &result.outcome;
        println!("{:>2}. {}", i + 1, case.name);
        let kind = o
            .object
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or("object");
        if o.allowed {
            println!("    ALLOWED {kind}");
        } else {
            println!("    DENIED  {}", o.message);
        }
        let mut changed: Vec<String> = o
            .patch
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|op| op.get("path").and_then(|p| p.as_str()))
            .map(|p| p.replace("~1", "/"))
            .collect();
        changed.dedup();
        if o.allowed && !changed.is_empty() {
            println!("    mutated: {}", changed.join(", "));
        }
        for w in &o.warnings {
            println!("    warning: {w}");
        }
        if !result.failures.is_empty() {
            surprises += 1;
            println!("    UNEXPECTED: {}", result.failures.join("; "));
        }
        println!();
    }
    if surprises == 0 {
        println!(
            "All {} writes were decided as the scenario expects.",
            suite.cases.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{surprises} writes were not decided as the scenario expects.");
        Ok(ExitCode::from(1))
    }
}
