//! `tenantry policy check|fmt|test`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use tenantry_tenancy::policy::{format_file, read_dir};
use tenantry_tenancy::{PolicyEngine, PolicyError};

use crate::cases;

pub fn check(dir: &Path) -> Result<ExitCode> {
    match PolicyEngine::load_dir(dir) {
        Ok(engine) => {
            out!(
                "ok: {} policies in `{}` are valid against the schema",
                engine.len(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(PolicyError::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "{} problem(s); nothing in `{}` would be loaded",
                problems.len(),
                dir.display()
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn fmt(dir: &Path, check_only: bool) -> Result<ExitCode> {
    let (_, files) = read_dir(dir)?;
    let mut unformatted = Vec::new();
    for file in files {
        let pretty = format_file(&file)?;
        if pretty == file.text {
            continue;
        }
        if check_only {
            out!("would reformat {}", file.path.display());
        } else {
            std::fs::write(&file.path, &pretty)
                .with_context(|| format!("cannot write `{}`", file.path.display()))?;
            out!("formatted {}", file.path.display());
        }
        unformatted.push(file.path);
    }
    Ok(if check_only && !unformatted.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs every case file in `dir/tests`; reports forbid policies that no case shows denying.
pub fn test(dir: &Path) -> Result<ExitCode> {
    let policies = match PolicyEngine::load_dir(dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let tests_dir = dir.join("tests");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .with_context(|| format!("cannot read test cases from `{}`", tests_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    anyhow::ensure!(
        !paths.is_empty(),
        "no test cases (*.yaml) in `{}`",
        tests_dir.display()
    );

    let (mut passed, mut failed) = (0usize, 0usize);
    let mut denied_by_some_case = BTreeSet::new();
    let mut allowed_cases = 0usize;
    for path in &paths {
        let suite = cases::load(path)?;
        for (i, case) in suite.cases.iter().enumerate() {
            let result = cases::run_case(&suite, &policies, i)
                .with_context(|| format!("{}: case `{}`", path.display(), case.name))?;
            denied_by_some_case.extend(result.outcome.reasons.iter().cloned());
            if result.outcome.allowed {
                allowed_cases += 1;
            }
            if result.failures.is_empty() {
                passed += 1;
                out!("ok    {}: {}", path.display(), case.name);
            } else {
                failed += 1;
                out!("FAIL  {}: {}", path.display(), case.name);
                for f in &result.failures {
                    out!("        {f}");
                }
            }
        }
    }
    let untested: Vec<&str> = policies
        .policies()
        .filter(|p| p.effect_forbid && !denied_by_some_case.contains(&p.id))
        .filter(|p| p.annotations.get("test").is_none_or(|t| t != "skip"))
        .map(|p| p.id.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    out!("\n{passed} passed, {failed} failed ({allowed_cases} allowed cases)");
    if !untested.is_empty() {
        out!(
            "forbid policies no case shows denying: {}",
            untested.join(", ")
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
