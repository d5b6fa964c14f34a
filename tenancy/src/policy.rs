//! The Cedar policy engine shared by the webhook and the enforcer.
//!
//! Loading is strict and all-or-nothing: every `*.cedar` file is parsed, every policy must carry
//! a unique `@id` (and a `@message` if it forbids), and the whole set is validated against
//! `tenantry.cedarschema` in strict mode. Any problem is reported as `file:line:column: reason`
//! and nothing is returned, so a broken file can never replace a good loaded set.
//!
//! Evaluation is sliced: a policy whose scope names one tenant (`principal in Tenant::"acme"`,
//! `resource in Tenant::"acme"`, or one of its teams) is only evaluated for requests involving that
//! tenant, so the cost of a decision does not grow with the number of tenants.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    ActionConstraint, Authorizer, Decision, Entities, Entity, EntityUid, Policy, PolicyId,
    PolicySet, PrincipalConstraint, Request, ResourceConstraint, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use thiserror::Error;

/// The schema file every policy directory carries.
pub const SCHEMA_FILE: &str = "tenantry.cedarschema";

/// A source file and its text, so errors can point into it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// One problem in a policy or schema file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Why a policy directory was refused.
#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("cannot read policies from `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no `{SCHEMA_FILE}` in `{0}`")]
    NoSchema(PathBuf),
    #[error("no `*.cedar` policy files in `{0}`")]
    NoPolicies(PathBuf),
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

fn render_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// Where a policy came from and what it says when it denies.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    pub id: String,
    pub path: PathBuf,
    pub line: usize,
    pub message: Option<String>,
    pub effect_forbid: bool,
    /// Every annotation, e.g. `@quota("pods")`, which the webhook uses to explain a denial.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// `@mode("audit")`: the forbid never denies; a request it matches is admitted with a
    /// warning and counted, so a new rule can be watched before it is enforced.
    pub audit: bool,
}

/// The outcome of one authorization: allowed, or the forbids that matched with their messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// `(policy id, @message)` of each forbid that matched, in id order.
    pub denied_by: Vec<(String, String)>,
    /// Policies that failed to evaluate. Any error denies: a forbid that cannot be evaluated
    /// must not turn into an allow.
    pub errors: Vec<String>,
    /// `(policy id, @message)` of each audit-mode forbid that matched (or could not be
    /// evaluated): reported, never denying.
    pub audited: Vec<(String, String)>,
}

/// A validated policy set with its schema, ready to evaluate.
#[derive(Debug)]
pub struct PolicyEngine {
    schema: Schema,
    action_entities: Vec<Entity>,
    /// The shared policies whose action scope admits each action of the schema, with that scope
    /// dropped (it holds for every request evaluated here, and Cedar would otherwise look the
    /// action up in every policy): a DELETE never runs the create-only pod rules.
    by_action: HashMap<EntityUid, PolicySet>,
    /// The same slices with their forbids merged into one policy (see [`fast_path`]), keyed
    /// like `by_action`, and the fast path of `all.shared`. Each is built on first use: merging
    /// costs Cedar's JSON conversion of every forbid (tens of milliseconds for the admission
    /// slices), which an enforcer, asking only about traffic, should never pay.
    fast_by_action: HashMap<EntityUid, OnceLock<Option<PolicySet>>>,
    fast_shared: OnceLock<Option<PolicySet>>,
    /// The shared policies whole, for a request whose action the schema does not declare, and
    /// each tenant's own policies apart: a request is evaluated against the shared slice and the
    /// own policies of the tenants involved, and the verdicts are combined as Cedar would
    /// combine them over the union (see `authorize`).
    all: Slices,
    /// The audit-mode forbids alone, evaluated only when there are any: with no permit in the
    /// set, every request is denied and the reasons are exactly the forbids that matched.
    audit: Option<PolicySet>,
    info: HashMap<String, PolicyInfo>,
    files: Vec<SourceFile>,
}

impl PolicyEngine {
    /// Loads `dir/tenantry.cedarschema` and every `dir/*.cedar` (sorted by name).
    pub fn load_dir(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let (schema, policies) = read_dir(dir)?;
        PolicyEngine::from_sources(&schema, &policies)
    }

    /// Builds an engine from sources already in memory (the embedded default, tests).
    pub fn from_sources(
        schema: &SourceFile,
        policies: &[SourceFile],
    ) -> Result<PolicyEngine, PolicyError> {
        let schema_parsed = parse_schema(schema)?;
        let mut problems = Vec::new();
        let mut all = PolicySet::new();
        let mut info: HashMap<String, PolicyInfo> = HashMap::new();
        let mut text_of: HashMap<String, usize> = HashMap::new();

        for (index, file) in policies.iter().enumerate() {
            let set = match PolicySet::from_str(&file.text) {
                Ok(set) => set,
                Err(errs) => {
                    for e in errs.iter() {
                        problems.push(problem(file, e, e.to_string()));
                    }
                    continue;
                }
            };
            // The parser names policies `policy0`, `policy1`, … in source order.
            let mut in_file: Vec<(usize, &Policy)> = set
                .policies()
                .map(|p| {
                    let id: &str = p.id().as_ref();
                    let n = id.trim_start_matches("policy").parse().unwrap_or(0);
                    (n, p)
                })
                .collect();
            in_file.sort_by_key(|(n, _)| *n);
            for (n, policy) in in_file {
                let id = policy.annotation("id").map(str::to_string);
                let (line, column) = policy_position(&file.text, id.as_deref(), n);
                let at = |message: String| Problem {
                    path: file.path.clone(),
                    line,
                    column,
                    message,
                };
                let Some(id) = id else {
                    problems.push(at(format!(
                        "policy #{} of this file has no `@id(\"…\")` annotation",
                        n + 1
                    )));
                    continue;
                };
                let forbid = policy.effect() == cedar_policy::Effect::Forbid;
                let message = policy.annotation("message").map(str::to_string);
                let audit = match policy.annotation("mode") {
                    None | Some("enforce") => false,
                    Some("audit") if forbid => true,
                    Some("audit") => {
                        problems.push(at(format!(
                            "policy `{id}` is a permit in audit mode: only a forbid can be audited (it would deny nothing)"
                        )));
                        continue;
                    }
                    Some(other) => {
                        problems.push(at(format!(
                            "policy `{id}` has @mode(\"{other}\"): the modes are \"enforce\" (the default) and \"audit\""
                        )));
                        continue;
                    }
                };
                if forbid && message.is_none() {
                    problems.push(at(format!(
                        "forbid policy `{id}` has no `@message(\"…\")`: users would be denied without a reason"
                    )));
                    continue;
                }
                if let Some(first) = info.get(&id) {
                    problems.push(at(format!(
                        "duplicate policy id `{id}` (first defined at {}:{})",
                        first.path.display(),
                        first.line
                    )));
                    continue;
                }
                let renamed = policy.new_id(PolicyId::new(&id));
                if let Err(e) = all.add(renamed) {
                    problems.push(at(e.to_string()));
                    continue;
                }
                text_of.insert(id.clone(), index);
                info.insert(
                    id.clone(),
                    PolicyInfo {
                        id,
                        path: file.path.clone(),
                        line,
                        message,
                        effect_forbid: forbid,
                        audit,
                        annotations: policy
                            .annotations()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    },
                );
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }

        let result = Validator::new(schema_parsed.clone()).validate(&all, ValidationMode::Strict);
        for e in result.validation_errors() {
            let pid: &str = e.policy_id().as_ref();
            let file = text_of.get(pid).and_then(|i| policies.get(*i));
            match file {
                Some(file) => problems.push(problem(file, e, e.to_string())),
                None => problems.push(Problem {
                    path: PathBuf::from("<policies>"),
                    line: 0,
                    column: 0,
                    message: e.to_string(),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }

        let action_entities: Vec<Entity> = schema_parsed
            .action_entities()
            .map_err(|e| {
                PolicyError::Invalid(vec![Problem {
                    path: schema.path.clone(),
                    line: 1,
                    column: 1,
                    message: e.to_string(),
                }])
            })?
            .into_iter()
            .collect();

        // Audit-mode forbids are validated with the rest but evaluated apart (see `authorize`).
        let audited = |p: &Policy| info.get::<str>(p.id().as_ref()).is_some_and(|i| i.audit);
        let audit_policies: Vec<Policy> = all.policies().filter(|p| audited(p)).cloned().collect();
        let audit =
            (!audit_policies.is_empty()).then(|| merge_policies(audit_policies.into_iter()));
        let all = merge_policies(all.policies().filter(|p| !audited(p)).cloned());
        let by_action: HashMap<EntityUid, PolicySet> = action_entities
            .iter()
            .map(|action: &Entity| {
                let ancestors = action.clone().into_inner().2;
                let uid = action.uid();
                let applies = all
                    .policies()
                    .filter(|p| scoped_tenant(p).is_none() && admits_action(p, &uid, &ancestors));
                let shared = merge_policies(applies.map(without_action_scope));
                (uid, shared)
            })
            .collect();
        let fast_by_action = by_action
            .keys()
            .map(|uid| (uid.clone(), OnceLock::new()))
            .collect();
        let all = Slices::of(all.policies());
        let fast_shared = OnceLock::new();
        let mut files = policies.to_vec();
        files.push(schema.clone());
        Ok(PolicyEngine {
            schema: schema_parsed,
            action_entities,
            by_action,
            fast_by_action,
            fast_shared,
            all,
            audit,
            info,
            files,
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The action entities the schema declares; requests need them for `action in …`.
    pub fn action_entities(&self) -> &[Entity] {
        &self.action_entities
    }

    pub fn policy(&self, id: &str) -> Option<&PolicyInfo> {
        self.info.get(id)
    }

    pub fn policies(&self) -> impl Iterator<Item = &PolicyInfo> {
        self.info.values()
    }

    pub fn len(&self) -> usize {
        self.info.len()
    }

    pub fn is_empty(&self) -> bool {
        self.info.is_empty()
    }

    /// The files the engine was built from.
    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// Evaluates `request` with the policies that apply to `tenants` (the resource's owner and the
    /// principal's tenants; usually one). Total: every outcome is a [`Verdict`].
    pub fn authorize(&self, tenants: &[&str], request: &Request, entities: &Entities) -> Verdict {
        let (shared, fast) = match request.action() {
            Some(action) if self.by_action.contains_key(action) => {
                (&self.by_action[action], self.fast_by_action.get(action))
            }
            _ => (&self.all.shared, Some(&self.fast_shared)),
        };
        let fast = fast.and_then(|cell| cell.get_or_init(|| fast_path(shared)).as_ref());
        let authorizer = Authorizer::new();
        let mut combined = Combined::default();
        // The merged forbid answers the common case, an allow with no error, exactly; any other
        // outcome is decided again policy by policy, for the reasons and the errors' owners.
        let quick = fast.map(|fast| authorizer.is_authorized(request, fast, entities));
        match quick {
            Some(r)
                if r.decision() == Decision::Allow && r.diagnostics().errors().next().is_none() =>
            {
                combined.permitted = true;
            }
            _ => combined.add(&authorizer.is_authorized(request, shared, entities)),
        }
        let mut seen: Vec<&str> = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            if seen.contains(tenant) {
                continue;
            }
            seen.push(tenant);
            if let Some(own) = self.all.by_tenant.get(*tenant) {
                combined.add(&authorizer.is_authorized(request, own, entities));
            }
        }
        let mut denied_by = Vec::new();
        if !combined.forbids.is_empty() {
            for id in combined.forbids {
                let message = self
                    .info
                    .get(&id)
                    .and_then(|i| i.message.clone())
                    .unwrap_or_else(|| format!("denied by policy `{id}`"));
                denied_by.push((id, message));
            }
            denied_by.sort();
        }
        let allowed = combined.permitted && denied_by.is_empty();
        Verdict {
            allowed: allowed && combined.errors.is_empty(),
            denied_by,
            errors: combined.errors,
            audited: self.audit(request, entities),
        }
    }

    /// The audit-mode forbids `request` would have hit. An audit policy that cannot be
    /// evaluated is reported too: it is being watched because nobody is sure of it yet.
    fn audit(&self, request: &Request, entities: &Entities) -> Vec<(String, String)> {
        let Some(set) = &self.audit else {
            return Vec::new();
        };
        let response = Authorizer::new().is_authorized(request, set, entities);
        let diagnostics = response.diagnostics();
        let mut out: Vec<(String, String)> = diagnostics
            .reason()
            .map(|id| {
                let id = id.to_string();
                let message = self
                    .info
                    .get(&id)
                    .and_then(|i| i.message.clone())
                    .unwrap_or_default();
                (id, message)
            })
            .collect();
        out.extend(diagnostics.errors().map(|e| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            (
                e.policy_id().to_string(),
                format!("could not be evaluated: {e}"),
            )
        }));
        out.sort();
        out
    }
}

/// A policy set split into the shared part and each tenant's own policies (those whose scope
/// names the tenant): with 1,000 tenants each carrying its own policies, a request is evaluated
/// against the shared ones and its own tenant's only.
#[derive(Debug)]
struct Slices {
    shared: PolicySet,
    by_tenant: HashMap<String, PolicySet>,
}

impl Slices {
    fn of<'a>(policies: impl Iterator<Item = &'a Policy>) -> Slices {
        let mut shared = Vec::new();
        let mut specific: HashMap<String, Vec<Policy>> = HashMap::new();
        for policy in policies {
            match scoped_tenant(policy) {
                Some(tenant) => specific.entry(tenant).or_default().push(policy.clone()),
                None => shared.push(policy.clone()),
            }
        }
        let by_tenant = specific
            .into_iter()
            .map(|(tenant, own)| (tenant, merge_policies(own.into_iter())))
            .collect();
        Slices {
            shared: merge_policies(shared.into_iter()),
            by_tenant,
        }
    }
}

/// Whether `policy`'s action scope can hold for `action` (whose ancestors, the action groups it
/// is `in`, are given): exactly the test Cedar applies, made once per policy set instead of on
/// every request.
fn admits_action(policy: &Policy, action: &EntityUid, ancestors: &HashSet<EntityUid>) -> bool {
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => a == *action,
        ActionConstraint::In(groups) => groups.iter().any(|a| a == action || ancestors.contains(a)),
    }
}

/// Cedar's verdict over a union of policy sets, from the verdicts of its parts: denied when any
/// forbid is satisfied (the reasons are every satisfied forbid), else allowed when any permit is
/// satisfied, else denied by default; the errors of every part.
#[derive(Default)]
struct Combined {
    forbids: BTreeSet<String>,
    permitted: bool,
    errors: Vec<String>,
}

impl Combined {
    fn add(&mut self, response: &cedar_policy::Response) {
        let diagnostics = response.diagnostics();
        match response.decision() {
            // A Deny's reasons are the satisfied forbids (none for a default deny).
            Decision::Deny => self
                .forbids
                .extend(diagnostics.reason().map(ToString::to_string)),
            Decision::Allow => self.permitted = true,
        }
        self.errors
            .extend(diagnostics.errors().map(ToString::to_string));
    }
}

/// Id of the merged forbid of a fast path; never reported (a deny is decided again in full).
const MERGED_FORBIDS: &str = "tenantry-merged-forbids";

/// `set` with every forbid merged into one: `forbid (principal, action, resource) when { c1 ||
/// c2 || … }`, each `ci` a forbid's whole condition (its scope, `when`s and negated `unless`es,
/// as Cedar evaluates it). `||` evaluates left to right and stops at the first `ci` that is true
/// or fails, so the merged forbid is false without error exactly when every `ci` was evaluated
/// and was false without error — exactly when no forbid of `set` holds or fails. An allow
/// without errors from this set is therefore the allow `set` gives, for one policy's overhead
/// (id, annotations, result maps) instead of one per forbid; any other outcome is decided again
/// in full. Built on Cedar's own syntax tree (no text or JSON form, whose readers cost grows with
/// depth). `None` when there is nothing to merge or a forbid is linked from a template.
fn fast_path(set: &PolicySet) -> Option<PolicySet> {
    use cedar_policy_core::ast;
    let mut out = PolicySet::new();
    let mut conditions: Vec<ast::Expr> = Vec::new();
    for policy in set.policies() {
        if policy.effect() != cedar_policy::Effect::Forbid {
            out.add(policy.clone()).ok()?;
            continue;
        }
        if !policy.is_static() {
            return None;
        }
        conditions.push(condition(policy.as_ref()));
    }
    if conditions.len() < 2 {
        return None;
    }
    let merged = conditions
        .into_iter()
        .rev()
        .reduce(|rest, c| ast::Expr::or(c, rest))?;
    let merged = ast::StaticPolicy::new(
        ast::PolicyID::from_string(MERGED_FORBIDS),
        None,
        ast::Annotations::new(),
        ast::Effect::Forbid,
        ast::PrincipalConstraint::any(),
        ast::ActionConstraint::any(),
        ast::ResourceConstraint::any(),
        Some(merged),
    )
    .ok()?;
    out.add(Policy::from(ast::Policy::from(merged))).ok()?;
    Some(out)
}

/// A policy's whole condition, as Cedar evaluates it: its scope constraints, then its `when`s
/// and negated `unless`es (one expression in the syntax tree), conjoined in that order. Unlike
/// Cedar's own `condition()`, an unconstrained scope adds nothing (not a `true &&`): merged,
/// those were three more operations per forbid on every review.
fn condition(policy: &cedar_policy_core::ast::Policy) -> cedar_policy_core::ast::Expr {
    use cedar_policy_core::ast::{ActionConstraint, Expr, PrincipalOrResourceConstraint as Scope};
    let (principal, resource) = (policy.principal_constraint(), policy.resource_constraint());
    let action = policy.action_constraint();
    let scope = [
        (!matches!(principal.as_inner(), Scope::Any)).then(|| principal.as_expr()),
        (!matches!(action, ActionConstraint::Any)).then(|| action.as_expr()),
        (!matches!(resource.as_inner(), Scope::Any)).then(|| resource.as_expr()),
    ];
    scope
        .into_iter()
        .flatten()
        .chain(policy.non_scope_constraints().cloned())
        .reduce(Expr::and)
        .unwrap_or_else(|| Expr::val(true))
}

/// `policy` with its action scope dropped, for a slice whose every request it admits: the same
/// decision for those requests, without an entity lookup per policy. Unchanged if its JSON form
/// cannot be rebuilt (it is then only slower).
fn without_action_scope(policy: &Policy) -> Policy {
    if matches!(policy.action_constraint(), ActionConstraint::Any) {
        return policy.clone();
    }
    let Ok(mut json) = policy.to_json() else {
        return policy.clone();
    };
    json["action"] = serde_json::json!({ "op": "All" });
    Policy::from_json(Some(policy.id().clone()), json).unwrap_or_else(|_| policy.clone())
}

fn merge_policies(policies: impl Iterator<Item = Policy>) -> PolicySet {
    let mut out = PolicySet::new();
    for p in policies {
        let _ = out.add(p);
    }
    out
}

/// The tenant a policy's scope is limited to, if any.
fn scoped_tenant(policy: &Policy) -> Option<String> {
    let from_principal = match policy.principal_constraint() {
        PrincipalConstraint::In(uid)
        | PrincipalConstraint::Eq(uid)
        | PrincipalConstraint::IsIn(_, uid) => tenant_of(&uid),
        _ => None,
    };
    from_principal.or_else(|| match policy.resource_constraint() {
        ResourceConstraint::In(uid)
        | ResourceConstraint::Eq(uid)
        | ResourceConstraint::IsIn(_, uid) => tenant_of(&uid),
        _ => None,
    })
}

fn tenant_of(uid: &EntityUid) -> Option<String> {
    let id: &str = uid.id().unescaped();
    match uid.type_name().basename() {
        "Tenant" => Some(id.to_string()),
        // Team ids are `tenant/team`; role ids `tenant/role` or `tenant/team/role`.
        "Team" | "Role" => id.split_once('/').map(|(t, _)| t.to_string()),
        _ => None,
    }
}

fn parse_schema(file: &SourceFile) -> Result<Schema, PolicyError> {
    match Schema::from_cedarschema_str(&file.text) {
        Ok((schema, _warnings)) => Ok(schema),
        Err(e) => Err(PolicyError::Invalid(vec![problem(file, &e, e.to_string())])),
    }
}

/// Reads the schema and policy files of a directory.
pub fn read_dir(dir: &Path) -> Result<(SourceFile, Vec<SourceFile>), PolicyError> {
    let read = |path: PathBuf| -> Result<SourceFile, PolicyError> {
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(SourceFile { path, text })
    };
    let schema_path = dir.join(SCHEMA_FILE);
    if !schema_path.is_file() {
        return Err(PolicyError::NoSchema(dir.to_path_buf()));
    }
    let schema = read(schema_path)?;
    let policies = read_cedar_files(dir)?;
    if policies.is_empty() {
        return Err(PolicyError::NoPolicies(dir.to_path_buf()));
    }
    Ok((schema, policies))
}

/// Every `dir/*.cedar` (not below it), sorted by name: policy files, or the properties
/// `tenantry policy verify` proves.
pub fn read_cedar_files(dir: &Path) -> Result<Vec<SourceFile>, PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| match std::fs::read_to_string(&path) {
            Ok(text) => Ok(SourceFile { path, text }),
            Err(source) => Err(PolicyError::Read { path, source }),
        })
        .collect()
}

/// Formats a policy file, or says where it does not parse (`file:line:column: message`, as
/// `policy check` does) rather than the formatter's own error.
pub fn format_file(file: &SourceFile) -> Result<String, PolicyError> {
    if let Err(errs) = PolicySet::from_str(&file.text) {
        let problems = errs.iter().map(|e| problem(file, e, e.to_string()));
        return Err(PolicyError::Invalid(problems.collect()));
    }
    format_policies(&file.text).map_err(|message| {
        PolicyError::Invalid(vec![Problem {
            path: file.path.clone(),
            line: 1,
            column: 1,
            message: format!("cannot be formatted: {message}"),
        }])
    })
}

/// Formats Cedar policy text the way `tenantry policy fmt` writes it.
pub fn format_policies(text: &str) -> Result<String, String> {
    let config = cedar_policy_formatter::Config {
        line_width: 100,
        indent_width: 2,
    };
    cedar_policy_formatter::policies_str_to_pretty(text, &config).map_err(|e| format!("{e:?}"))
}

fn problem(file: &SourceFile, diagnostic: &dyn Diagnostic, message: String) -> Problem {
    let offset = diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset())
        .unwrap_or(0);
    let (line, column) = line_col(&file.text, offset);
    let help = diagnostic
        .help()
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    Problem {
        path: file.path.clone(),
        line,
        column,
        message: format!("{message}{help}"),
    }
}

/// Where a policy starts: at its `@id` annotation, or else at its effect keyword.
fn policy_position(text: &str, id: Option<&str>, index: usize) -> (usize, usize) {
    let by_id = id.and_then(|id| {
        text.find(&format!("@id(\"{id}\")"))
            .or_else(|| text.find(&format!("@id(\"{id}")))
    });
    let offset = by_id.or_else(|| {
        let mut starts = text
            .match_indices("permit")
            .chain(text.match_indices("forbid"))
            .filter(|(at, _)| {
                text[..*at]
                    .lines()
                    .last()
                    .is_none_or(|l| !l.trim_start().starts_with("//"))
            });
        let mut all: Vec<usize> = starts.by_ref().map(|(at, _)| at).collect();
        all.sort_unstable();
        all.get(index).copied()
    });
    line_col(text, offset.unwrap_or(0))
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// The Cedar `Tenant` entity of a directory tenant — the same for admission and for traffic: its
/// name, tier, status and the tier's pod security level, inside its white-label client if any.
pub fn tenant_entity(tenant: &crate::directory::Tenant) -> Result<Entity, String> {
    let uid = |ty: &str, id: &str| -> Result<EntityUid, String> {
        let ty = cedar_policy::EntityTypeName::from_str(ty).map_err(|e| e.to_string())?;
        Ok(EntityUid::from_type_name_and_id(
            ty,
            cedar_policy::EntityId::new(id),
        ))
    };
    let text = |s: &str| cedar_policy::RestrictedExpression::new_string(s.to_string());
    let attrs = HashMap::from([
        ("name".to_string(), text(&tenant.id)),
        ("tier".to_string(), text(&tenant.tier.name)),
        ("status".to_string(), text(tenant.status.as_str())),
        (
            "pod_security".to_string(),
            text(tenant.tier.pod_security.as_str()),
        ),
    ]);
    let parents = tenant
        .client
        .iter()
        .map(|c| uid("Client", &c.id))
        .collect::<Result<std::collections::HashSet<_>, _>>()?;
    Entity::new(uid("Tenant", &tenant.id)?, attrs, parents).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
    }

    fn with_extra(extra: &str) -> Result<PolicyEngine, PolicyError> {
        let (schema, mut policies) = read_dir(&shipped()).unwrap();
        policies.push(SourceFile {
            path: "extra.cedar".into(),
            text: extra.to_string(),
        });
        PolicyEngine::from_sources(&schema, &policies)
    }

    #[test]
    fn shipped_policies_validate_strictly() {
        let engine = PolicyEngine::load_dir(&shipped()).unwrap_or_else(|e| panic!("{e}"));
        assert!(engine.policy("cross-tenant-write").is_some());
        assert!(
            engine
                .policies()
                .all(|p| !p.effect_forbid || p.message.is_some())
        );
    }

    #[test]
    fn type_errors_are_reported_with_file_and_line() {
        let err = with_extra(
            "\n@id(\"typo\")\n@message(\"m\")\nforbid (principal, action == Action::\"create\", resource)\nwhen { resource.kidn == \"Pod\" };\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("extra.cedar:5:"), "{text}");
        assert!(text.contains("kidn"), "{text}");
    }

    #[test]
    fn syntax_errors_are_reported_with_file_and_line() {
        let err = with_extra("@id(\"x\")\npermit (principal, action, resource\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("extra.cedar:"), "{text}");
    }

    #[test]
    fn ids_and_messages_are_required_and_unique() {
        let missing_id = with_extra("permit (principal, action, resource);").unwrap_err();
        assert!(
            missing_id.to_string().contains("has no `@id"),
            "{missing_id}"
        );
        let missing_message =
            with_extra("@id(\"quiet\")\nforbid (principal, action, resource);").unwrap_err();
        assert!(
            missing_message.to_string().contains("no `@message"),
            "{missing_message}"
        );
        let duplicate =
            with_extra("@id(\"baseline\")\npermit (principal, action, resource);").unwrap_err();
        assert!(
            duplicate
                .to_string()
                .contains("duplicate policy id `baseline`"),
            "{duplicate}"
        );
    }

    #[test]
    fn tenant_scoped_policies_are_sliced_out_of_the_shared_set() {
        let engine = with_extra(
            "@id(\"acme-only\")\n@message(\"no\")\nforbid (principal in Tenant::\"acme\", action, resource);\n",
        )
        .unwrap();
        let shared_ids: Vec<String> = engine
            .all
            .shared
            .policies()
            .map(|p| p.id().to_string())
            .collect();
        assert!(!shared_ids.contains(&"acme-only".to_string()));
        // A tenant's slice holds its own policies only; the shared ones are evaluated beside it.
        let acme = &engine.all.by_tenant["acme"];
        assert!(acme.policy(&PolicyId::new("acme-only")).is_some());
        assert!(acme.policy(&PolicyId::new("baseline")).is_none());
    }

    /// `principal` deleting `Object::"o"`, with `principal` the only entity.
    fn delete_by(principal: Entity) -> (Request, Entities) {
        let request = Request::new(
            principal.uid(),
            action("delete"),
            EntityUid::from_str("Object::\"o\"").unwrap(),
            cedar_policy::Context::empty(),
            None,
        )
        .unwrap();
        (request, Entities::from_entities([principal], None).unwrap())
    }

    /// A request on `Object::"o"` by `User::"u"` (in tenant `acme` when `member`).
    fn traffic_request(member: bool) -> (Request, Entities) {
        let user = EntityUid::from_str("User::\"u\"").unwrap();
        let tenant = EntityUid::from_str("Tenant::\"acme\"").unwrap();
        let parents: HashSet<EntityUid> = if member {
            HashSet::from([tenant])
        } else {
            HashSet::new()
        };
        delete_by(Entity::new_no_attrs(user, parents))
    }

    #[test]
    fn the_merged_forbids_allow_exactly_when_every_forbid_is_false_without_error() {
        let engine = PolicyEngine::from_sources(
            &SourceFile {
                path: PathBuf::from("s.cedarschema"),
                text: "entity User { name: String, weight: Long }; entity Object; action delete appliesTo { principal: User, resource: Object };".to_string(),
            },
            &[SourceFile {
                path: PathBuf::from("p.cedar"),
                text: concat!(
                    "@id(\"all\")\npermit (principal, action, resource);\n",
                    "@id(\"no-root\")\n@message(\"not root\")\nforbid (principal, action == Action::\"delete\", resource) when { principal.name like \"root*\" } unless { principal.name == \"rootless\" };\n",
                    "@id(\"overflows\")\n@message(\"never\")\nforbid (principal is User, action, resource) when { principal.name == \"calc\" && principal.weight * 4611686018427387904 < 0 };\n",
                )
                .to_string(),
            }],
        )
        .unwrap();
        assert!(
            engine.fast_by_action[&action("delete")].get().is_none(),
            "built on first use"
        );
        let ask = |name: &str, weight: i64| {
            let user = EntityUid::from_str("User::\"u\"").unwrap();
            let attrs = HashMap::from([
                (
                    "name".to_string(),
                    cedar_policy::RestrictedExpression::new_string(name.to_string()),
                ),
                (
                    "weight".to_string(),
                    cedar_policy::RestrictedExpression::new_long(weight),
                ),
            ]);
            let (request, entities) = delete_by(Entity::new(user, attrs, HashSet::new()).unwrap());
            engine.authorize(&[], &request, &entities)
        };
        // Every forbid false: allowed by the fast path.
        let verdict = ask("alice", 1);
        assert!(verdict.allowed && verdict.errors.is_empty(), "{verdict:?}");
        let fast = engine.fast_by_action[&action("delete")]
            .get()
            .and_then(Option::as_ref)
            .expect("the fast path of the delete slice");
        assert_eq!(
            ids(fast),
            BTreeSet::from(["all".to_string(), MERGED_FORBIDS.to_string()])
        );
        // A forbid holds: denied, and the reason is that forbid, never the merged one.
        let verdict = ask("root", 1);
        assert!(!verdict.allowed);
        assert_eq!(
            verdict.denied_by,
            vec![("no-root".to_string(), "not root".to_string())]
        );
        // Look-alike: the `unless` holds.
        let verdict = ask("rootless", 1);
        assert!(verdict.allowed && verdict.errors.is_empty(), "{verdict:?}");
        // A forbid fails to evaluate: refused, and the error names that forbid.
        let verdict = ask("calc", 2);
        assert!(!verdict.allowed);
        assert_eq!(verdict.errors.len(), 1, "{verdict:?}");
        assert!(verdict.errors[0].contains("overflows"), "{verdict:?}");
        assert!(!verdict.errors[0].contains(MERGED_FORBIDS), "{verdict:?}");
        // Look-alike: `&&` stops before the overflow, in the merged forbid as in its own.
        let verdict = ask("alice", 2);
        assert!(verdict.allowed && verdict.errors.is_empty(), "{verdict:?}");
    }

    #[test]
    fn sliced_and_merged_policies_decide_exactly_as_plain_cedar_on_the_whole_set() {
        // Every scope form the merged forbid has to rewrite: `in` an entity, `==`, `is … in`,
        // `in` a set of actions (kept for an action the schema does not declare).
        let schema = "entity Group; entity User in [Group]; entity Object; \
            action delete, read appliesTo { principal: User, resource: Object };";
        let text = concat!(
            "@id(\"all\")\npermit (principal, action, resource);\n",
            "@id(\"blocked\")\n@message(\"m\")\nforbid (principal in Group::\"blocked\", action, resource);\n",
            "@id(\"secret\")\n@message(\"m\")\nforbid (principal, action == Action::\"read\", resource == Object::\"secret\");\n",
            "@id(\"typed\")\n@message(\"m\")\nforbid (principal is User in Group::\"g2\", action in [Action::\"delete\"], resource) when { resource == Object::\"x\" };\n",
        );
        let engine = PolicyEngine::from_sources(
            &SourceFile {
                path: PathBuf::from("s.cedarschema"),
                text: schema.to_string(),
            },
            &[SourceFile {
                path: PathBuf::from("p.cedar"),
                text: text.to_string(),
            }],
        )
        .unwrap();
        let whole = PolicySet::from_str(text).unwrap();
        let mut compared = 0;
        for group in [None, Some("blocked"), Some("g2")] {
            for verb in ["read", "delete", "purge"] {
                for object in ["secret", "x", "other"] {
                    let user = EntityUid::from_str("User::\"u\"").unwrap();
                    let parents: HashSet<EntityUid> = group
                        .map(|g| EntityUid::from_str(&format!("Group::\"{g}\"")).unwrap())
                        .into_iter()
                        .collect();
                    let entities = Entities::from_entities(
                        [Entity::new_no_attrs(user.clone(), parents)],
                        None,
                    )
                    .unwrap();
                    let request = Request::new(
                        user,
                        action(verb),
                        EntityUid::from_str(&format!("Object::\"{object}\"")).unwrap(),
                        cedar_policy::Context::empty(),
                        None,
                    )
                    .unwrap();
                    let plain = Authorizer::new().is_authorized(&request, &whole, &entities);
                    let ours = engine.authorize(&[], &request, &entities);
                    let case = format!("{group:?} {verb} {object}");
                    assert_eq!(ours.allowed, plain.decision() == Decision::Allow, "{case}");
                    // The parser names policies `policy0`, …; the engine by their `@id`.
                    let reasons: BTreeSet<String> = plain
                        .diagnostics()
                        .reason()
                        .filter_map(|id| whole.policy(id)?.annotation("id").map(str::to_string))
                        .collect();
                    let denied: BTreeSet<String> =
                        ours.denied_by.iter().map(|(id, _)| id.clone()).collect();
                    if !ours.allowed {
                        assert_eq!(denied, reasons, "{case}");
                    }
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 27);
        // Both kinds of fast path were built and used: per action, and for the undeclared one.
        assert!(matches!(
            engine.fast_by_action[&action("delete")].get(),
            Some(Some(_))
        ));
        assert!(matches!(engine.fast_shared.get(), Some(Some(_))));
    }

    #[test]
    fn shared_and_own_slices_decide_as_their_union_would() {
        let engine = PolicyEngine::from_sources(
            &SourceFile {
                path: PathBuf::from("s.cedarschema"),
                text: "entity Tenant; entity User in [Tenant]; entity Object; action delete appliesTo { principal: User, resource: Object };".to_string(),
            },
            &[SourceFile {
                path: PathBuf::from("p.cedar"),
                text: concat!(
                    "@id(\"all\")\npermit (principal, action, resource);\n",
                    "@id(\"shared-never\")\n@message(\"m\")\nforbid (principal, action == Action::\"delete\", resource) when { false };\n",
                    "@id(\"acme-members\")\n@message(\"not for acme's members\")\nforbid (principal in Tenant::\"acme\", action, resource);\n",
                )
                .to_string(),
            }],
        )
        .unwrap();
        // The shared slice alone allows; acme's own forbid must still deny acme's members.
        let (member, entities) = traffic_request(true);
        let verdict = engine.authorize(&["acme"], &member, &entities);
        assert!(!verdict.allowed);
        assert_eq!(
            verdict.denied_by,
            vec![(
                "acme-members".to_string(),
                "not for acme's members".to_string()
            )]
        );
        // Named twice, evaluated once; a tenant without policies of its own changes nothing.
        let verdict = engine.authorize(&["acme", "globex", "acme"], &member, &entities);
        assert_eq!(verdict.denied_by.len(), 1);
        // Look-alike: a non-member is allowed by the shared permit though acme's slice alone
        // (a forbid and no permit) would deny by default.
        let (outsider, entities) = traffic_request(false);
        let verdict = engine.authorize(&["acme"], &outsider, &entities);
        assert!(verdict.allowed, "{verdict:?}");
        // The per-action slice carries no action scope, and still only the policies it admits.
        let delete = &engine.by_action[&action("delete")];
        for p in delete.policies() {
            assert!(
                matches!(p.action_constraint(), ActionConstraint::Any),
                "{p}"
            );
        }
        assert_eq!(
            ids(delete),
            BTreeSet::from(["all".to_string(), "shared-never".to_string()])
        );
    }

    fn action(name: &str) -> EntityUid {
        EntityUid::from_str(&format!("Action::\"{name}\"")).unwrap()
    }

    fn ids(set: &PolicySet) -> BTreeSet<String> {
        set.policies().map(|p| p.id().to_string()).collect()
    }

    #[test]
    fn each_action_is_evaluated_against_exactly_the_policies_its_scope_admits() {
        let engine = with_extra(concat!(
            "@id(\"any\")\n@message(\"m\")\nforbid (principal, action, resource) when { false };\n",
            "@id(\"by-group\")\n@message(\"m\")\nforbid (principal, action in Action::\"admission\", resource) when { false };\n",
            "@id(\"create-only\")\n@message(\"m\")\nforbid (principal, action == Action::\"create\", resource) when { false };\n",
            "@id(\"listed\")\n@message(\"m\")\nforbid (principal, action in [Action::\"update\", Action::\"delete\"], resource) when { false };\n",
        ))
        .unwrap();
        let of = |name: &str| ids(&engine.by_action[&action(name)]);
        let extra = ["any", "by-group", "create-only", "listed"];
        let expect = |names: &[&str], action: &str| {
            let got = of(action);
            for name in extra {
                assert_eq!(
                    got.contains(name),
                    names.contains(&name),
                    "{name} for {action}: {got:?}"
                );
            }
        };
        expect(&["any", "by-group", "create-only"], "create");
        expect(&["any", "by-group", "listed"], "delete");
        expect(&["any", "by-group"], "connect");
        expect(&["any"], "request");
        // Every shipped policy is somewhere: nothing is lost by slicing.
        let union: BTreeSet<String> = engine.by_action.values().flat_map(ids).collect();
        assert_eq!(union, ids(&engine.all.shared));
    }

    #[test]
    fn an_audited_forbid_reports_and_never_denies() {
        let engine = with_extra(
            "@id(\"no-latest\")\n@mode(\"audit\")\n@message(\"pin your images\")\nforbid (principal, action, resource) when { resource.name == \"web\" };\n",
        )
        .unwrap();
        assert!(engine.policy("no-latest").unwrap().audit);
        // Evaluated through the webhook in webhook/tests/decision.rs; here, the split itself.
        assert!(engine.audit.is_some());
        let enforced: BTreeSet<String> = ids(&engine.all.shared);
        assert!(
            !enforced.contains("no-latest"),
            "an audited policy never enforces"
        );
        assert!(enforced.contains("baseline"));
    }

    #[test]
    fn audit_mode_is_only_for_forbids_and_unknown_modes_are_refused() {
        let permit =
            with_extra("@id(\"p\")\n@mode(\"audit\")\npermit (principal, action, resource);\n")
                .unwrap_err()
                .to_string();
        assert!(permit.contains("only a forbid can be audited"), "{permit}");
        let typo = with_extra(
            "@id(\"f\")\n@mode(\"dryrun\")\n@message(\"m\")\nforbid (principal, action, resource);\n",
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("the modes are"), "{typo}");
        assert!(typo.starts_with("extra.cedar:"), "{typo}");
    }

    #[test]
    fn a_file_that_does_not_parse_is_not_formatted_and_the_place_is_named() {
        let file = SourceFile {
            path: "broken.cedar".into(),
            text: "@id(\"a\")\npermit (principal, action, resource);\n\n@id(\"b\")\npermit (principal, action resource);\n".into(),
        };
        let text = format_file(&file).unwrap_err().to_string();
        assert!(text.starts_with("broken.cedar:5:"), "{text}");
        assert!(!text.contains("offset"), "{text}");
    }

    #[test]
    fn formatting_is_stable() {
        let text = std::fs::read_to_string(shipped().join("baseline.cedar")).unwrap();
        let once = format_policies(&text).unwrap();
        assert_eq!(format_policies(&once).unwrap(), once);
    }
}
