//! `tenantry policy verify` and `tenantry policy diff`: proofs about a policy set, for every
//! request the schema allows, by Cedar's symbolic compiler (`cedar-policy-symcc`) and the cvc5
//! SMT solver.
//!
//! Tests show what the policies decide for the requests someone thought of; a proof covers every
//! request of every shape the schema admits (any tenant, any labels, any pod facts, any quota
//! numbers). A property is a `permit` in `DIR/properties/*.cedar` describing a set of requests:
//! `@check("never")` says the policies allow none of them, `@check("always")` that they allow all
//! of them. Only enforced policies are proved about: an audit-mode forbid denies nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cedar_policy::{
    Authorizer, Decision, Entities, EntityUid, EvalResult, Expression, Policy, PolicyId, PolicySet,
    RequestEnv, Schema,
};
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet, Env};
use clap::Args;
use tenantry_tenancy::policy::{SourceFile, read_dir};
use tenantry_tenancy::{PolicyEngine, PolicyError};

/// Where the solver is, how long it may think, how much of a counterexample to show.
#[derive(Args, Debug)]
pub struct ProofArgs {
    /// The cvc5 executable. Default: $CVC5 (the variable cedar-policy-symcc reads), else `cvc5`
    /// on PATH. scripts/test installs one.
    #[arg(long, env = "TENANTRY_CVC5")]
    cvc5: Option<PathBuf>,
    /// Give up on one solver query after this many seconds (reported as unknown, not as proved).
    #[arg(long, default_value_t = 120, env = "TENANTRY_SOLVER_TIMEOUT")]
    timeout: u64,
    /// Show every attribute of a counterexample, not only those the deciding policies and the
    /// property read (the solver fills the others with arbitrary values).
    #[arg(long, env = "TENANTRY_ALL_ATTRIBUTES")]
    all_attributes: bool,
}

/// What a property claims about the requests its `permit` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The policies allow none of them.
    Never,
    /// The policies allow all of them.
    Always,
}

/// One property from a `properties/*.cedar` file.
#[derive(Debug)]
struct Property {
    id: String,
    sentence: String,
    check: Check,
    /// Policies carrying any of these annotations are left out of the set proved about
    /// (`@ignore_annotated("quota")`: "never denied by a non-quota policy").
    ignore_annotated: BTreeSet<String>,
    policy: PolicySet,
}

/// The annotations a property may carry; anything else is a typo worth refusing.
const PROPERTY_ANNOTATIONS: &[&str] = &["id", "property", "check", "ignore_annotated"];

/// A loaded, validated policy directory, reduced to what is enforced.
struct Enforced {
    schema: Schema,
    schema_text: String,
    /// `(policy, its annotations)` of every enforced policy, renamed to its `@id`.
    policies: Vec<(Policy, BTreeMap<String, String>)>,
    audited: Vec<String>,
}

impl Enforced {
    fn load(dir: &Path) -> Result<Enforced, Refused> {
        let (schema, files) = read_dir(dir).map_err(Refused::from_policy_error)?;
        Enforced::from_files(&schema, &files)
    }

    /// Validates exactly as the webhook loads (`PolicyEngine`), then keeps the enforced policies.
    fn from_files(schema: &SourceFile, files: &[SourceFile]) -> Result<Enforced, Refused> {
        let engine =
            PolicyEngine::from_sources(schema, files).map_err(Refused::from_policy_error)?;
        let mut policies = Vec::new();
        let mut audited = Vec::new();
        for policy in parse_renamed(files)? {
            let id = policy.id().to_string();
            let Some(info) = engine.policy(&id) else {
                return Err(Refused(format!(
                    "policy `{id}` is missing from the validated set"
                )));
            };
            if info.audit {
                audited.push(id);
            } else {
                policies.push((policy, info.annotations.clone()));
            }
        }
        audited.sort();
        Ok(Enforced {
            schema: engine.schema().clone(),
            schema_text: schema.text.clone(),
            policies,
            audited,
        })
    }

    /// The enforced set without the policies carrying one of `ignored` annotations.
    fn set_without(&self, ignored: &BTreeSet<String>) -> Result<PolicySet> {
        let kept = self
            .policies
            .iter()
            .filter(|(_, annotations)| !ignored.iter().any(|a| annotations.contains_key(a)))
            .map(|(policy, _)| policy.clone());
        PolicySet::from_policies(kept).context("cannot assemble the enforced policy set")
    }
}

/// Bad input: printed as is, exit 2.
#[derive(Debug)]
struct Refused(String);

impl Refused {
    fn from_policy_error(e: PolicyError) -> Refused {
        Refused(e.to_string())
    }
}

/// Every policy of `files`, named by its `@id` (the files were validated, so each has one).
fn parse_renamed(files: &[SourceFile]) -> Result<Vec<Policy>, Refused> {
    let mut out = Vec::new();
    for file in files {
        let set = PolicySet::from_str(&file.text)
            .map_err(|e| Refused(format!("{}: {e}", file.path.display())))?;
        for policy in set.policies() {
            let Some(id) = policy.annotation("id") else {
                return Err(Refused(format!(
                    "{}: a policy has no `@id`",
                    file.path.display()
                )));
            };
            out.push(policy.new_id(PolicyId::new(id)));
        }
    }
    Ok(out)
}

/// Reads and validates `dir/*.cedar` as properties over `schema`.
fn load_properties(dir: &Path, schema: &SourceFile) -> Result<Vec<Property>, Refused> {
    let files =
        tenantry_tenancy::policy::read_cedar_files(dir).map_err(Refused::from_policy_error)?;
    if files.is_empty() {
        return Err(Refused(format!(
            "no `*.cedar` property files in `{}`",
            dir.display()
        )));
    }
    // The same strict validation (and unique `@id`s, with file:line:column) as policies get.
    PolicyEngine::from_sources(schema, &files).map_err(Refused::from_policy_error)?;

    let mut problems = Vec::new();
    let mut properties = Vec::new();
    for policy in parse_renamed(&files)? {
        let id = policy.id().to_string();
        let mut bad = |message: String| problems.push(format!("property `{id}`: {message}"));
        if policy.effect() != cedar_policy::Effect::Permit {
            bad("must be a `permit` describing the requests it is about".into());
            continue;
        }
        if let Some((unknown, _)) = policy
            .annotations()
            .find(|(k, _)| !PROPERTY_ANNOTATIONS.contains(k))
        {
            bad(format!(
                "unknown annotation `@{unknown}` (known: {})",
                PROPERTY_ANNOTATIONS
                    .iter()
                    .map(|a| format!("@{a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        }
        let Some(sentence) = policy.annotation("property").map(str::to_string) else {
            bad("has no `@property(\"…\")` saying in words what is proved".into());
            continue;
        };
        let check = match policy.annotation("check") {
            Some("never") => Check::Never,
            Some("always") => Check::Always,
            Some(other) => {
                bad(format!(
                    "has @check(\"{other}\"): the checks are \"never\" (the policies allow none of these requests) and \"always\" (they allow all of them)"
                ));
                continue;
            }
            None => {
                bad("has no `@check(\"never\")` or `@check(\"always\")`".into());
                continue;
            }
        };
        let ignore_annotated = policy
            .annotation("ignore_annotated")
            .map(|list| {
                list.split(',')
                    .map(|a| a.trim().to_string())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let single = PolicySet::from_policies([policy.clone()])
            .map_err(|e| Refused(format!("property `{id}`: {e}")))?;
        properties.push(Property {
            id,
            sentence,
            check,
            ignore_annotated,
            policy: single,
        });
    }
    if problems.is_empty() {
        Ok(properties)
    } else {
        Err(Refused(problems.join("\n")))
    }
}

/// The cvc5 to run: `--cvc5`, else `$CVC5`, else `cvc5` on PATH.
fn find_solver(args: &ProofArgs) -> Result<PathBuf> {
    let missing = |what: String| {
        anyhow!(
            "{what}: `tenantry policy verify` and `diff` need the cvc5 SMT solver (Debian and \
             Ubuntu: `apt-get install cvc5`; scripts/test installs it), or point --cvc5 or CVC5 \
             at one"
        )
    };
    let configured = args
        .cvc5
        .clone()
        .or_else(|| std::env::var_os("CVC5").map(PathBuf::from));
    if let Some(path) = configured {
        if path.is_file() {
            return Ok(path);
        }
        return Err(missing(format!("no cvc5 at `{}`", path.display())));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("cvc5"))
        .find(|p| p.is_file())
        .ok_or_else(|| missing("no `cvc5` on PATH and CVC5 is not set".into()))
}

/// `cvc5 1.0.3` from `cvc5 --version`, for the report.
fn solver_version(path: &Path) -> String {
    std::process::Command::new(path)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().next()?.to_string();
            let version = line.split("version").nth(1)?.trim().to_string();
            Some(format!("cvc5 {version}"))
        })
        .unwrap_or_else(|| "cvc5 (version unknown)".into())
}

/// One solver process for the whole run; SymCC resets it between queries.
struct Prover {
    symcc: CedarSymCompiler<LocalSolver>,
    runtime: tokio::runtime::Runtime,
    description: String,
}

impl Prover {
    fn start(args: &ProofArgs) -> Result<Prover> {
        let path = find_solver(args)?;
        let description = format!("{} ({})", solver_version(&path), path.display());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime the solver is driven from")?;
        let timeout_ms = Duration::from_secs(args.timeout).as_millis().to_string();
        let symcc = runtime.block_on(async {
            // `--tlimit-per`: a limit per query, not for the whole process, which serves many.
            let solver = LocalSolver::from_command(
                tokio::process::Command::new(&path)
                    .args(["--lang", "smt"])
                    .arg(format!("--tlimit-per={timeout_ms}"))
                    .kill_on_drop(true),
            )
            .with_context(|| format!("cannot start the solver `{}`", path.display()))?;
            CedarSymCompiler::new(solver).context("cannot start the symbolic compiler")
        })?;
        Ok(Prover {
            symcc,
            runtime,
            description,
        })
    }

    fn compile(
        &self,
        set: &PolicySet,
        env: &RequestEnv,
        schema: &Schema,
    ) -> Result<CompiledPolicySet> {
        CompiledPolicySet::compile(set, env, schema)
            .map_err(|e| anyhow!("cannot compile the policies for {}: {e}", env_name(env)))
    }

    /// Runs one SymCC query to completion. `unknown` (the solver gave up) is kept apart from
    /// real failures: it proves nothing either way.
    fn run<'a, T, F>(
        &'a mut self,
        query: impl FnOnce(&'a mut CedarSymCompiler<LocalSolver>) -> F,
    ) -> Result<T, ProofError>
    where
        F: std::future::Future<Output = Result<T, cedar_policy_symcc::err::Error>> + 'a,
    {
        match self.runtime.block_on(query(&mut self.symcc)) {
            Ok(value) => Ok(value),
            Err(cedar_policy_symcc::err::Error::SolverUnknown) => Err(ProofError::Unknown),
            Err(e) => Err(ProofError::Other(anyhow!(e))),
        }
    }
}

/// Why a query gave no answer.
#[derive(Debug)]
enum ProofError {
    /// The solver answered `unknown` (time limit reached).
    Unknown,
    Other(anyhow::Error),
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProofError::Unknown => write!(f, "the solver gave up (time limit reached)"),
            ProofError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ProofError {}

/// Every (principal type, action, resource type) the schema allows, in a stable order.
fn request_envs(schema: &Schema) -> Vec<RequestEnv> {
    let mut envs: Vec<RequestEnv> = schema.request_envs().collect();
    envs.sort_by_key(env_name);
    envs
}

/// `User create Object`.
fn env_name(env: &RequestEnv) -> String {
    format!(
        "{} {} {}",
        env.principal(),
        env.action().id().unescaped(),
        env.resource()
    )
}

pub fn verify(dir: &Path, properties_dir: Option<&Path>, args: &ProofArgs) -> Result<ExitCode> {
    let default_properties = dir.join("properties");
    let properties_dir = properties_dir.unwrap_or(&default_properties);
    let loaded = Enforced::load(dir).and_then(|enforced| {
        let schema = SourceFile {
            path: dir.join(tenantry_tenancy::policy::SCHEMA_FILE),
            text: enforced.schema_text.clone(),
        };
        let properties = load_properties(properties_dir, &schema)?;
        Ok((enforced, properties))
    });
    let (enforced, properties) = match loaded {
        Ok(loaded) => loaded,
        Err(Refused(message)) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(2));
        }
    };
    let prover = Prover::start(args)?;
    let envs = request_envs(&enforced.schema);
    out!(
        "proving {} propert{} of the {} enforced policies in `{}` for every request the schema allows ({} kinds), with {}",
        properties.len(),
        if properties.len() == 1 { "y" } else { "ies" },
        enforced.policies.len(),
        dir.display(),
        envs.len(),
        prover.description
    );
    if !enforced.audited.is_empty() {
        out!(
            "left out (audit mode, never deny): {}",
            enforced.audited.join(", ")
        );
    }
    let started = Instant::now();
    let mut verifier = Verifier {
        prover,
        enforced: &enforced,
        envs,
        compiled: BTreeMap::new(),
        can_fail: BTreeMap::new(),
    };
    let (mut held, mut failed, mut unproved) = (0usize, 0usize, 0usize);
    for property in &properties {
        let clock = Instant::now();
        let findings = verifier.prove(property)?;
        let took = seconds(clock.elapsed());
        let say = |status: &str| {
            out!("{status:<8} {}  ({took})", property.id);
            out_raw!("{}", wrap(&property.sentence, "         "));
            if !property.ignore_annotated.is_empty() {
                let left_out: Vec<String> = property
                    .ignore_annotated
                    .iter()
                    .map(|a| format!("@{a}"))
                    .collect();
                out!(
                    "         (policies annotated {} left out)",
                    left_out.join(", ")
                );
            }
        };
        if !findings.describes_some {
            failed += 1;
            say("VACUOUS");
            out!("         describes no request the schema allows, so it proves nothing");
        } else if let Some((kind, example)) = findings.example {
            failed += 1;
            say("FAILS");
            report_counterexample(property, &enforced, &kind, *example, args.all_attributes)?;
            if findings.failing.len() > 1 {
                let also = format!("also fails for: {}", findings.failing[1..].join(", "));
                out_raw!("{}", wrap(&also, "         "));
            }
        } else if !findings.unknown.is_empty() {
            unproved += 1;
            say("UNKNOWN");
            out!(
                "         the solver gave up on {} (--timeout {} s): not proved",
                findings.unknown.join(", "),
                args.timeout
            );
        } else if !findings.may_fail.is_empty() {
            unproved += 1;
            say("UNPROVED");
            let text = format!(
                "holds where every policy evaluates, but {} can fail to evaluate on some requests of the same kinds, which the webhook denies: not proved",
                findings.may_fail.into_iter().collect::<Vec<_>>().join(", ")
            );
            out_raw!("{}", wrap(&text, "         "));
        } else {
            held += 1;
            say("holds");
        }
    }
    out!(
        "\n{held} held, {failed} failed, {unproved} not proved in {}",
        seconds(started.elapsed())
    );
    Ok(if failed + unproved == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What proving one property found, over every kind of request.
#[derive(Default)]
struct Findings {
    /// Some kind of request has requests the property describes.
    describes_some: bool,
    /// The first counterexample, with the kind of request it is.
    example: Option<(String, Box<Env>)>,
    /// Every kind with a counterexample.
    failing: Vec<String>,
    /// Kinds the solver gave up on.
    unknown: Vec<String>,
    /// For "always": policies that can fail to evaluate on the requests it is about.
    may_fail: BTreeSet<String>,
}

/// Proves properties of one enforced set, compiling each (set, kind of request) once.
struct Verifier<'a> {
    prover: Prover,
    enforced: &'a Enforced,
    envs: Vec<RequestEnv>,
    /// The enforced set without the ignored annotations, by kind of request.
    compiled: BTreeMap<(BTreeSet<String>, usize), CompiledPolicySet>,
    /// Whether a policy can fail to evaluate on some request of a kind (quota sums can
    /// overflow, and that takes the solver a while to see: asked once).
    can_fail: BTreeMap<(usize, String), bool>,
}

impl Verifier<'_> {
    fn prove(&mut self, property: &Property) -> Result<Findings> {
        let mut findings = Findings::default();
        for index in 0..self.envs.len() {
            let env = &self.envs[index];
            let kind = env_name(env);
            let key = (property.ignore_annotated.clone(), index);
            if !self.compiled.contains_key(&key) {
                let set = self.enforced.set_without(&property.ignore_annotated)?;
                let compiled = self.prover.compile(&set, env, &self.enforced.schema)?;
                self.compiled.insert(key.clone(), compiled);
            }
            let Some(policies) = self.compiled.get(&key) else {
                bail!("the compiled policies for {kind} went missing");
            };
            let prop = self
                .prover
                .compile(&property.policy, env, &self.enforced.schema)
                .with_context(|| format!("property `{}`", property.id))?;
            // A property that describes no request holds of every policy set: it is reported
            // as vacuous when that is so for every kind.
            if self
                .prover
                .run(|symcc| symcc.check_always_denies_opt(&prop))?
            {
                continue;
            }
            findings.describes_some = true;
            let outcome = if findings.example.is_some() {
                // One counterexample is enough to read; the other kinds are only named.
                let holds = match property.check {
                    Check::Never => self
                        .prover
                        .run(|symcc| symcc.check_disjoint_opt(policies, &prop)),
                    Check::Always => self
                        .prover
                        .run(|symcc| symcc.check_implies_opt(&prop, policies)),
                };
                holds.map(|holds| (!holds).then_some(None))
            } else {
                let found = match property.check {
                    Check::Never => self
                        .prover
                        .run(|symcc| symcc.check_disjoint_with_counterexample_opt(policies, &prop)),
                    Check::Always => self
                        .prover
                        .run(|symcc| symcc.check_implies_with_counterexample_opt(&prop, policies)),
                };
                found.map(|found| found.map(Some))
            };
            match outcome {
                Ok(None) if property.check == Check::Always => {
                    let may_fail = self.may_fail(index, &property.ignore_annotated)?;
                    findings.may_fail.extend(may_fail);
                }
                Ok(None) => {}
                Ok(Some(found)) => {
                    findings.failing.push(kind.clone());
                    if let Some(found) = found {
                        findings.example = Some((kind, Box::new(found)));
                    }
                }
                Err(ProofError::Unknown) => findings.unknown.push(kind),
                Err(ProofError::Other(e)) => {
                    return Err(e.context(format!("proving `{}` for {kind}", property.id)));
                }
            }
        }
        Ok(findings)
    }

    /// The policies of the set (without `ignored`) that can fail to evaluate on some request of
    /// kind `index`. SymCC follows Cedar, which skips such a policy; the webhook denies
    /// instead. A "never" proof only gets stronger for the webhook (an error denies more), but
    /// an "always" proof carries over only where no policy can fail.
    fn may_fail(&mut self, index: usize, ignored: &BTreeSet<String>) -> Result<Vec<String>> {
        let env = &self.envs[index];
        let mut out = Vec::new();
        for (policy, annotations) in &self.enforced.policies {
            if ignored.iter().any(|a| annotations.contains_key(a)) {
                continue;
            }
            let id = policy.id().to_string();
            let fails = match self.can_fail.get(&(index, id.clone())) {
                Some(fails) => *fails,
                None => {
                    let compiled = CompiledPolicy::compile(policy, env, &self.enforced.schema)
                        .map_err(|e| anyhow!("cannot compile `{id}` for {}: {e}", env_name(env)))?;
                    let fails = !self
                        .prover
                        .run(|symcc| symcc.check_never_errors_opt(&compiled))
                        .with_context(|| format!("can `{id}` fail for {}", env_name(env)))?;
                    self.can_fail.insert((index, id.clone()), fails);
                    fails
                }
            };
            if fails {
                out.push(id);
            }
        }
        Ok(out)
    }
}

/// Prints a failed property's counterexample as the evaluator sees it.
fn report_counterexample(
    property: &Property,
    enforced: &Enforced,
    kind: &str,
    example: Env,
    all_attributes: bool,
) -> Result<()> {
    let set = enforced.set_without(&property.ignore_annotated)?;
    let shows = |judgement: &Judgement| judgement.allowed == (property.check == Check::Never);
    let clean = |candidate: &Env| Judgement::of(&set, candidate).errors.is_empty();
    let example = if clean(&example) {
        example
    } else {
        tidy(example, &enforced.schema, |candidate| {
            let judgement = Judgement::of(&set, candidate);
            Judgement::of(&property.policy, candidate).allowed
                && judgement.errors.is_empty()
                && shows(&judgement)
        })
    };
    let judgement = Judgement::of(&set, &example);
    let reads = Reads::of(
        property
            .policy
            .policies()
            .cloned()
            .chain(judgement.policies(&set)),
    );
    let what = match property.check {
        Check::Never => "the policies allow this request",
        Check::Always => "the policies deny this request",
    };
    out!("         counterexample ({kind}): {what}");
    out_raw!(
        "{}",
        render_example(&example, &reads, all_attributes, "           ")
    );
    out!("         evaluated: {judgement}");
    if !shows(&judgement) {
        bail!(
            "the solver's counterexample for `{}` does not evaluate as it should ({judgement}): a bug in the solver or in cedar-policy-symcc",
            property.id
        );
    }
    Ok(())
}

pub fn diff(old_dir: &Path, new_dir: &Path, args: &ProofArgs) -> Result<ExitCode> {
    let loaded = (|| {
        let new = Enforced::load(new_dir)?;
        let (old_schema, old_files) = read_dir(old_dir).map_err(Refused::from_policy_error)?;
        if old_schema.text != new.schema_text {
            // Both sets must be judged over the same requests: the old policies under the new
            // schema. If they do not validate there, the change is more than a policy change.
            eprintln!(
                "note: the schemas differ; the old policies are compared under `{}`",
                new_dir
                    .join(tenantry_tenancy::policy::SCHEMA_FILE)
                    .display()
            );
        }
        let new_schema = SourceFile {
            path: new_dir.join(tenantry_tenancy::policy::SCHEMA_FILE),
            text: new.schema_text.clone(),
        };
        let old = Enforced::from_files(&new_schema, &old_files)?;
        Ok::<_, Refused>((old, new))
    })();
    let (old, new) = match loaded {
        Ok(loaded) => loaded,
        Err(Refused(message)) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut prover = Prover::start(args)?;
    let none = BTreeSet::new();
    let (old_set, new_set) = (old.set_without(&none)?, new.set_without(&none)?);
    let envs = request_envs(&new.schema);
    out!(
        "comparing the enforced policies of `{}` ({}) with `{}` ({}) for every request the schema allows ({} kinds), with {}",
        old_dir.display(),
        old.policies.len(),
        new_dir.display(),
        new.policies.len(),
        envs.len(),
        prover.description
    );
    for (label, enforced) in [("old", &old), ("new", &new)] {
        if !enforced.audited.is_empty() {
            out!(
                "left out of {label} (audit mode, never deny): {}",
                enforced.audited.join(", ")
            );
        }
    }
    let started = Instant::now();
    let mut unchanged = Vec::new();
    let (mut newly_allowed, mut newly_denied) = (0usize, 0usize);
    for env in &envs {
        let (a, b) = (
            prover.compile(&old_set, env, &new.schema)?,
            prover.compile(&new_set, env, &new.schema)?,
        );
        let mut changed = false;
        for (direction, allowing, denying) in [("newly allowed", &b, &a), ("newly denied", &a, &b)]
        {
            // A request `allowing` allows and `denying` does not, if there is one.
            let found = prover
                .run(|symcc| symcc.check_implies_with_counterexample_opt(allowing, denying))
                .with_context(|| format!("comparing {}", env_name(env)))?;
            let Some(example) = found else { continue };
            changed = true;
            if direction == "newly allowed" {
                newly_allowed += 1;
            } else {
                newly_denied += 1;
            }
            let shows = |candidate: &Env| {
                let (was, now) = (
                    Judgement::of(&old_set, candidate),
                    Judgement::of(&new_set, candidate),
                );
                was.errors.is_empty() && now.errors.is_empty() && was.allowed != now.allowed
            };
            let example = if shows(&example) {
                example
            } else {
                tidy(example, &new.schema, shows)
            };
            let (was, now) = (
                Judgement::of(&old_set, &example),
                Judgement::of(&new_set, &example),
            );
            let reads = Reads::of(was.policies(&old_set).chain(now.policies(&new_set)));
            out!("\n{}: {direction}, e.g.", env_name(env));
            out_raw!(
                "{}",
                render_example(&example, &reads, args.all_attributes, "    ")
            );
            out!("  old: {was}");
            out!("  new: {now}");
            if was.allowed == now.allowed {
                bail!(
                    "the solver's example for {} decides the same under both sets: a bug in the solver or in cedar-policy-symcc",
                    env_name(env)
                );
            }
        }
        if !changed {
            unchanged.push(env_name(env));
        }
    }
    let flips = newly_allowed + newly_denied;
    if flips == 0 {
        out!(
            "\nno change: the two policy sets decide every request alike ({})",
            seconds(started.elapsed())
        );
    } else {
        out!(
            "\n{} of {} kinds of request change: {newly_allowed} with requests newly allowed, {newly_denied} with requests newly denied ({})",
            envs.len() - unchanged.len(),
            envs.len(),
            seconds(started.elapsed())
        );
        if !unchanged.is_empty() {
            out_raw!(
                "{}",
                wrap(&format!("unchanged: {}", unchanged.join(", ")), "")
            );
        }
    }
    Ok(if flips == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What the concrete evaluator decides for a counterexample: the cross-check that the proof's
/// example is real, and the policies an operator has to look at.
struct Judgement {
    allowed: bool,
    /// Ids of the forbids that matched.
    forbids: Vec<String>,
    /// `(policy id, error)` of the policies that failed to evaluate.
    errors: Vec<(String, String)>,
}

impl Judgement {
    fn of(set: &PolicySet, example: &Env) -> Judgement {
        let response = Authorizer::new().is_authorized(&example.request, set, &example.entities);
        let mut forbids: Vec<String> = response
            .diagnostics()
            .reason()
            .filter(|id| {
                set.policy(id)
                    .is_some_and(|p| p.effect() == cedar_policy::Effect::Forbid)
            })
            .map(ToString::to_string)
            .collect();
        forbids.sort();
        Judgement {
            allowed: response.decision() == Decision::Allow,
            forbids,
            errors: response
                .diagnostics()
                .errors()
                .map(|e| match e {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                        (e.policy_id().to_string(), e.inner().to_string())
                    }
                })
                .collect(),
        }
    }

    fn policies<'a>(&'a self, set: &'a PolicySet) -> impl Iterator<Item = Policy> + 'a {
        self.forbids
            .iter()
            .filter_map(|id| set.policy(&PolicyId::new(id)).cloned())
    }
}

impl std::fmt::Display for Judgement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.allowed {
            write!(f, "allowed (no enforced forbid matches)")?;
        } else if self.forbids.is_empty() {
            write!(f, "denied (no permit matches)")?;
        } else {
            write!(f, "denied by {}", self.forbids.join(", "))?;
        }
        if let Some((_, first)) = self.errors.first() {
            // Cedar skips a policy it cannot evaluate; the webhook denies the request instead.
            let ids: Vec<&str> = self.errors.iter().map(|(id, _)| id.as_str()).collect();
            write!(
                f,
                "; {} cannot be evaluated on this example ({first}), which the webhook would deny",
                ids.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The solver fills numbers nothing constrains with anything, often `i64::MAX`, on which
/// arithmetic (the quota policies' sums) fails to evaluate; Cedar then skips those policies and
/// the webhook denies. For such an example: when the same one with every context number at 0
/// still shows what it must (`shows`, checked by the evaluator), that one is shown instead.
fn tidy(example: Env, schema: &Schema, shows: impl Fn(&Env) -> bool) -> Env {
    let zeroed = (|| {
        let request = &example.request;
        let mut json = request.context()?.to_json_value().ok()?;
        zero_numbers(&mut json);
        let action = request.action()?;
        let context = cedar_policy::Context::from_json_value(json, Some((schema, action))).ok()?;
        let request = cedar_policy::Request::new(
            request.principal()?.clone(),
            action.clone(),
            request.resource()?.clone(),
            context,
            Some(schema),
        )
        .ok()?;
        Some(Env {
            request,
            entities: example.entities.clone(),
        })
    })();
    match zeroed {
        Some(zeroed) if shows(&zeroed) => zeroed,
        _ => example,
    }
}

fn zero_numbers(json: &mut serde_json::Value) {
    match json {
        serde_json::Value::Number(n) => *n = 0.into(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(zero_numbers),
        serde_json::Value::Object(map) => map.values_mut().for_each(zero_numbers),
        _ => {}
    }
}

/// The attributes some policies read, by variable: `resource.owner.status` is
/// `("resource", ["owner", "status"])`. A counterexample shows these and leaves out the rest,
/// which the solver filled with arbitrary values that decide nothing.
#[derive(Debug, Default)]
struct Reads {
    paths: BTreeMap<String, BTreeSet<Vec<String>>>,
    /// Variables whose tags (labels) are read.
    tags: BTreeSet<String>,
}

impl Reads {
    fn of(policies: impl IntoIterator<Item = Policy>) -> Reads {
        let mut reads = Reads::default();
        for policy in policies {
            if let Ok(json) = policy.to_json() {
                reads.walk(&json);
            }
        }
        reads
    }

    fn walk(&mut self, value: &serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    match key.as_str() {
                        "." | "has" => {
                            let attrs = match inner.get("attr") {
                                Some(serde_json::Value::String(a)) => vec![a.clone()],
                                Some(serde_json::Value::Array(a)) => a
                                    .iter()
                                    .filter_map(|a| a.as_str().map(str::to_string))
                                    .collect(),
                                _ => Vec::new(),
                            };
                            if let Some((var, mut path)) = inner.get("left").and_then(chain) {
                                // Only the whole path: `resource.pod.scheduling` does not read
                                // all of `resource.pod`.
                                path.extend(attrs);
                                self.paths.entry(var).or_default().insert(path);
                                continue;
                            }
                        }
                        "getTag" | "hasTag" => {
                            if let Some((var, path)) = inner.get("left").and_then(chain)
                                && path.is_empty()
                            {
                                self.tags.insert(var);
                            }
                        }
                        _ => {}
                    }
                    self.walk(inner);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| self.walk(v)),
            _ => {}
        }
    }

    fn of_var(&self, var: &str) -> BTreeSet<Vec<String>> {
        self.paths.get(var).cloned().unwrap_or_default()
    }
}

/// `resource.owner.status` in the policy JSON, as `("resource", ["owner", "status"])`.
fn chain(value: &serde_json::Value) -> Option<(String, Vec<String>)> {
    if let Some(var) = value.get("Var").and_then(|v| v.as_str()) {
        return Some((var.to_string(), Vec::new()));
    }
    let inner = value.get(".")?;
    let (var, mut path) = chain(inner.get("left")?)?;
    path.push(inner.get("attr")?.as_str()?.to_string());
    Some((var, path))
}

/// Paths grouped by their first attribute: `{owner: {[status]}, pod: {[]}}`; an empty rest
/// means the attribute is read whole.
fn by_head(paths: &BTreeSet<Vec<String>>) -> BTreeMap<String, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for path in paths {
        if let Some((head, rest)) = path.split_first() {
            out.entry(head.clone()).or_default().insert(rest.to_vec());
        }
    }
    out
}

/// A counterexample as a person reads it: the request, its principal's groups and tenants,
/// and the attributes the deciding policies (and the property) read; `all` shows everything.
fn render_example(example: &Env, reads: &Reads, all: bool, indent: &str) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, text: &str| {
        let _ = writeln!(out, "{indent}{label:<10} {text}");
    };
    if all {
        for text in example.to_string().lines() {
            let _ = writeln!(out, "{indent}{text}");
        }
        return out;
    }
    let request = &example.request;
    let entities = &example.entities;
    let mut reached: Vec<(EntityUid, BTreeSet<Vec<String>>)> = Vec::new();
    if let Some(uid) = request.principal() {
        // `principal in …` decides on its groups and tenants: shown even when there are none.
        let text = describe_entity(
            entities,
            uid,
            &reads.of_var("principal"),
            reads.tags.contains("principal"),
            true,
            &mut reached,
        );
        line(&mut out, "principal", &text);
    }
    if let Some(action) = request.action() {
        line(&mut out, "action", &action.to_string());
    }
    if let Some(uid) = request.resource() {
        let text = describe_entity(
            entities,
            uid,
            &reads.of_var("resource"),
            reads.tags.contains("resource"),
            false,
            &mut reached,
        );
        line(&mut out, "resource", &text);
    }
    let context_paths = reads.of_var("context");
    if !context_paths.is_empty() {
        let context = Expression::from_str("context")
            .ok()
            .and_then(|expr| cedar_policy::eval_expression(request, entities, &expr).ok());
        if let Some(EvalResult::Record(record)) = context {
            let text = describe_record(&record, &context_paths, false, &mut reached);
            line(&mut out, "context", &text);
        }
    }
    // Entities reached through attributes (`resource.owner.status`), each once.
    let mut shown = BTreeSet::new();
    while let Some((uid, paths)) = reached.pop() {
        let mut paths = paths;
        reached.retain(|(other, more)| {
            if *other == uid {
                paths.extend(more.iter().cloned());
                false
            } else {
                true
            }
        });
        if !shown.insert(uid.clone()) {
            continue;
        }
        let text = describe_entity(entities, &uid, &paths, false, false, &mut reached);
        line(&mut out, "", &text);
    }
    out
}

/// `User::"a" {tenant_member: true} in [Tenant::"t"]`: the attributes `paths` read, the labels
/// if read, and the ancestors (what `in` decides on; `in []` too if `empty_ancestors`).
fn describe_entity(
    entities: &Entities,
    uid: &EntityUid,
    paths: &BTreeSet<Vec<String>>,
    tags: bool,
    empty_ancestors: bool,
    reached: &mut Vec<(EntityUid, BTreeSet<Vec<String>>)>,
) -> String {
    let mut text = uid.to_string();
    let Some(entity) = entities.get(uid) else {
        return text;
    };
    let fields: Vec<String> = by_head(paths)
        .into_iter()
        .map(|(attr, rest)| match entity.attr(&attr) {
            Some(Ok(value)) => format!("{attr}: {}", describe_value(&value, &rest, reached)),
            Some(Err(_)) => format!("{attr}: ?"),
            None => format!("{attr}: (absent)"),
        })
        .collect();
    if !fields.is_empty() {
        let _ = write!(text, " {{{}}}", fields.join(", "));
    }
    if tags {
        let labels: Vec<String> = entity
            .tags()
            .filter_map(|(k, v)| v.ok().map(|v| format!("\"{}\": {v}", k.escape_debug())))
            .collect();
        let _ = write!(text, " labels {{{}}}", labels.join(", "));
    }
    let mut names: Vec<String> = entities
        .ancestors(uid)
        .map(|a| a.map(ToString::to_string).collect())
        .unwrap_or_default();
    names.sort();
    if !names.is_empty() || empty_ancestors {
        let _ = write!(text, " in [{}]", names.join(", "));
    }
    text
}

/// The fields of `record` that `paths` read. Inside an attribute (`resource.pod`,
/// `context.requested`) fields that are false, empty or 0 are left out: such records are long
/// lists of facts, and what a counterexample turns on is the few that are set.
fn describe_record(
    record: &cedar_policy::Record,
    paths: &BTreeSet<Vec<String>>,
    nested: bool,
    reached: &mut Vec<(EntityUid, BTreeSet<Vec<String>>)>,
) -> String {
    let fields: Vec<String> = by_head(paths)
        .into_iter()
        .filter_map(|(attr, rest)| match record.get(&attr) {
            Some(value) if nested && compact_value(value).is_none() => None,
            Some(value) => Some(format!(
                "{}: {}",
                key(&attr),
                describe_value(value, &rest, reached)
            )),
            None => Some(format!("{}: (absent)", key(&attr))),
        })
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// A value read at `rest` below it: a record shows the fields read (all of its non-default
/// fields when read whole); an entity is shown on its own line when its attributes are read.
fn describe_value(
    value: &EvalResult,
    rest: &BTreeSet<Vec<String>>,
    reached: &mut Vec<(EntityUid, BTreeSet<Vec<String>>)>,
) -> String {
    let deeper: BTreeSet<Vec<String>> = rest.iter().filter(|p| !p.is_empty()).cloned().collect();
    match value {
        EvalResult::Record(record) if rest.contains(&Vec::new()) => compact_value(value)
            .unwrap_or_else(|| {
                if record.is_empty() {
                    "{}".into()
                } else {
                    "{all false, empty or 0}".into()
                }
            }),
        EvalResult::Record(record) => describe_record(record, &deeper, true, reached),
        EvalResult::EntityUid(uid) => {
            if !deeper.is_empty() {
                reached.push((uid.clone(), deeper));
            }
            uid.to_string()
        }
        other => other.to_string(),
    }
}

/// A record without its false, empty and zero fields; `None` when nothing is left.
fn compact_value(value: &EvalResult) -> Option<String> {
    match value {
        EvalResult::Bool(false) => None,
        EvalResult::Long(0) => None,
        EvalResult::String(s) if s.is_empty() => None,
        EvalResult::Set(s) if s.is_empty() => None,
        EvalResult::Record(r) => {
            let fields: Vec<String> = r
                .iter()
                .filter_map(|(k, v)| compact_value(v).map(|v| format!("{}: {v}", key(k))))
                .collect();
            (!fields.is_empty()).then(|| format!("{{{}}}", fields.join(", ")))
        }
        other => Some(other.to_string()),
    }
}

/// A record key as Cedar writes it: bare when it is an identifier, quoted otherwise.
fn key(k: &str) -> String {
    let ident = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        k.to_string()
    } else {
        format!("\"{}\"", k.escape_debug())
    }
}

/// `text` in lines of at most 100 columns, each starting with `indent`.
fn wrap(text: &str, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > 100 {
            let _ = writeln!(out, "{indent}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{indent}{line}");
    }
    out
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
