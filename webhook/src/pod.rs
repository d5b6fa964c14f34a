//! Pods: the enforcer sidecar Tenantry injects, the tier scheduling it applies, and the facts the
//! policies need (host namespaces, whether the sidecar and scheduling are as Tenantry set them).
//!
//! Mutation and validation share these functions: validation asks "would mutation still change
//! this pod?", so a pod that reaches validation without the sidecar, with an altered one, or with
//! scheduling the tier does not grant, is caught however it got there.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value, json};
use tenantry_cluster::json::At;
pub use tenantry_cluster::resources::{PodResources, ResourceError, pod_resources, quantity_value};
use tenantry_tenancy::directory::Tier;
use tenantry_tenancy::model::Toleration;

/// The injected container's name.
pub const ENFORCER: &str = "tenantry-enforcer";
/// The init container that redirects inbound traffic to the enforcer (transparent mode).
pub const ENFORCER_INIT: &str = "tenantry-enforcer-init";
/// The enforcer's user id in transparent mode, excluded from the redirect.
pub const ENFORCER_UID: u16 = 1337;
/// `"false"` asks to skip injection; the `enforcer-opt-out` policy decides whether that stands.
pub const INJECT_ANNOTATION: &str = "tenantry.dev/inject";
/// The application port the enforcer forwards to.
pub const APP_PORT_ANNOTATION: &str = "tenantry.dev/app-port";
/// Labels, selectors and tolerations under this prefix are Tenantry's to set.
pub const PREFIX: &str = "tenantry.dev/";

/// How the enforcer is added to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29): starts before and
    /// stops after the application, and does not keep Jobs alive.
    #[default]
    Native,
    /// A plain container, for clusters without native sidecars.
    Container,
}

impl std::str::FromStr for SidecarMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(SidecarMode::Native),
            "container" => Ok(SidecarMode::Container),
            _ => Err(format!("`{s}` is not a sidecar mode (native, container)")),
        }
    }
}

/// What the webhook injects. Defaults suit the shipped `deploy/` manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionConfig {
    pub image: String,
    pub mode: SidecarMode,
    /// The enforcer's listening port; Services target it.
    pub proxy_port: u16,
    pub admin_port: u16,
    /// Used when a pod has no `tenantry.dev/app-port` and declares no container port.
    pub default_app_port: u16,
    /// `TENANTRY_TENANTS` for the sidecar (a Postgres URL or a mounted file path).
    pub tenants: Option<String>,
    /// `TENANTRY_REDIS` for the sidecar.
    pub redis: Option<String>,
    /// A Secret in the pod's namespace whose `url` is the sidecar's `TENANTRY_REDIS` (the
    /// controller's per-tenant `tenantry-ratelimit`): a credential for the tenant's own
    /// rate-limit budgets, never written into the pod spec.
    pub redis_secret: Option<String>,
    /// JWT verification for every injected enforcer, when the operator configures it.
    pub jwt: Option<SidecarJwt>,
    /// Transparent mode: an init container (`init-redirect`, NET_ADMIN) redirects inbound TCP for
    /// the application's port to the enforcer, so the Service can keep targeting the app's port
    /// and nothing reaches the app around the enforcer.
    pub redirect: bool,
    /// Injections already built for this configuration.
    pub built: Arc<InjectionCache>,
}

/// The JWT settings injected enforcers verify tokens with. Public keys only: everything here is
/// written into pod specs that tenants can read, so a shared secret (HS256) or a private key
/// would let any tenant mint tokens for every tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarJwt {
    /// The JWKS document (public keys).
    pub jwks: String,
    /// `RS256` or `ES256`.
    pub algorithm: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub tenant_claim: String,
}

impl SidecarJwt {
    /// Checks that `jwks` is a JWKS document holding public keys only.
    pub fn new(
        jwks: String,
        algorithm: String,
        issuer: Option<String>,
        audience: Option<String>,
        tenant_claim: String,
    ) -> Result<SidecarJwt, String> {
        if !matches!(algorithm.as_str(), "RS256" | "ES256") {
            return Err(format!(
                "`{algorithm}`: injected enforcers verify RS256 or ES256 tokens (a shared HS256 secret in every pod spec would let any tenant sign tokens)"
            ));
        }
        let doc: Value = serde_json::from_str(&jwks)
            .map_err(|e| format!("the sidecar JWKS is not JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .filter(|k| !k.is_empty())
            .ok_or("the sidecar JWKS has no `keys`")?;
        for key in keys {
            // `d` (and the CRT parameters) are private-key material; `k` a symmetric key.
            if ["d", "p", "q", "dp", "dq", "qi", "k"]
                .iter()
                .any(|member| key.get(member).is_some())
            {
                let kid = key.get("kid").and_then(Value::as_str).unwrap_or("?");
                return Err(format!(
                    "the sidecar JWKS holds private or symmetric key material (key `{kid}`): it is written into every tenant pod spec; give public keys only"
                ));
            }
        }
        Ok(SidecarJwt {
            jwks: doc.to_string(),
            algorithm,
            issuer,
            audience,
            tenant_claim,
        })
    }
}

/// Injections already built, by (tenant, tier, app port). Every pod is compared with exactly
/// what Tenantry injects, at mutation and again at validation; building that JSON cost more
/// than the comparison. Not part of the configuration's value: two configurations with the same
/// settings are equal whatever they have built.
#[derive(Debug, Default)]
pub struct InjectionCache {
    built: RwLock<HashMap<InjectionKey, Arc<Injection>>>,
}

/// (tenant, tier, app port).
type InjectionKey = (Arc<str>, Arc<str>, u16);

/// Most entries kept: tenants × app ports in use. Beyond it (app ports are the tenant's to
/// choose), the cache starts over rather than grow.
const INJECTION_CACHE_LIMIT: usize = 4096;

impl PartialEq for InjectionCache {
    fn eq(&self, _: &InjectionCache) -> bool {
        true
    }
}

impl Eq for InjectionCache {}

impl InjectionConfig {
    /// What Tenantry injects into a pod of `tenant` in `tier` whose app listens on `app_port`.
    pub fn injection(&self, tenant: &Arc<str>, tier: &Arc<str>, app_port: u16) -> Arc<Injection> {
        let key = (tenant.clone(), tier.clone(), app_port);
        if let Some(found) = self
            .built
            .built
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return found.clone();
        }
        let injection = Arc::new(Injection::for_pod(self, tenant, tier, app_port));
        let mut built = self.built.built.write().unwrap_or_else(|p| p.into_inner());
        if built.len() >= INJECTION_CACHE_LIMIT {
            built.clear();
        }
        built.insert(key, injection.clone());
        injection
    }
}

impl Default for InjectionConfig {
    fn default() -> Self {
        InjectionConfig {
            image: "ghcr.io/tenantry/tenantry-enforcer:0.1.0".to_string(),
            mode: SidecarMode::Native,
            proxy_port: 15001,
            admin_port: 15021,
            default_app_port: 8080,
            tenants: None,
            redis: None,
            redis_secret: None,
            jwt: None,
            redirect: false,
            built: Arc::default(),
        }
    }
}

/// Where the enforcer stands in a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforcerState {
    Injected,
    Missing,
    Altered,
    OptedOut,
    NotApplicable,
}

impl EnforcerState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcerState::Injected => "injected",
            EnforcerState::Missing => "missing",
            EnforcerState::Altered => "altered",
            EnforcerState::OptedOut => "opted-out",
            EnforcerState::NotApplicable => "not-applicable",
        }
    }
}

/// Whether a pod's scheduling is what its tier grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulingState {
    Tier,
    Altered,
    NotApplicable,
}

impl SchedulingState {
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulingState::Tier => "tier",
            SchedulingState::Altered => "altered",
            SchedulingState::NotApplicable => "not-applicable",
        }
    }
}

/// The pod spec inside an object: a Pod's own, or a workload's template.
pub fn pod_spec<'a>(kind: &str, object: &'a Value) -> Option<&'a Value> {
    let spec = object.get("spec")?;
    match kind {
        "Pod" => Some(spec),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController"
        | "PodTemplate" => spec
            .at("/template/spec")
            .or_else(|| object.at("/template/spec")),
        "CronJob" => spec.at("/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

/// The annotations of a pod (metadata of the object itself).
fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.at("/metadata/annotations")?.get(key)?.as_str()
}

pub fn opted_out(pod: &Value) -> bool {
    annotation(pod, INJECT_ANNOTATION) == Some("false")
}

/// The port the enforcer forwards to: the annotation, else the first declared container port.
pub fn app_port(pod: &Value, config: &InjectionConfig) -> Result<u16, String> {
    if let Some(raw) = annotation(pod, APP_PORT_ANNOTATION) {
        return raw.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            format!("annotation {APP_PORT_ANNOTATION}: `{raw}` is not a port number")
        });
    }
    let declared = pod
        .at("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) != Some(ENFORCER))
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find_map(|p| p.get("containerPort").and_then(Value::as_u64))
        .and_then(|p| u16::try_from(p).ok());
    Ok(declared.unwrap_or(config.default_app_port))
}

/// The enforcer container for a pod of `tenant` in `tier`, exactly as injected.
pub fn sidecar(config: &InjectionConfig, tenant: &str, tier: &str, app_port: u16) -> Value {
    let mut env = vec![
        json!({"name": "TENANTRY_TENANT", "value": tenant}),
        json!({"name": "TENANTRY_TIER", "value": tier}),
        json!({"name": "TENANTRY_LISTEN", "value": format!("0.0.0.0:{}", config.proxy_port)}),
        json!({"name": "TENANTRY_UPSTREAM", "value": format!("127.0.0.1:{app_port}")}),
        json!({"name": "TENANTRY_ADMIN_LISTEN", "value": format!("0.0.0.0:{}", config.admin_port)}),
    ];
    if let Some(tenants) = &config.tenants {
        env.push(json!({"name": "TENANTRY_TENANTS", "value": tenants}));
    }
    if let Some(redis) = &config.redis {
        env.push(json!({"name": "TENANTRY_REDIS", "value": redis}));
    } else if let Some(secret) = &config.redis_secret {
        // Optional: until the controller has written it, the enforcer limits per pod.
        env.push(
            json!({"name": "TENANTRY_REDIS", "valueFrom": {"secretKeyRef": {
            "name": secret, "key": "url", "optional": true}}}),
        );
    }
    if let Some(jwt) = &config.jwt {
        env.push(json!({"name": "TENANTRY_JWT_JWKS", "value": jwt.jwks}));
        env.push(json!({"name": "TENANTRY_JWT_ALGORITHM", "value": jwt.algorithm}));
        env.push(json!({"name": "TENANTRY_JWT_TENANT_CLAIM", "value": jwt.tenant_claim}));
        if let Some(issuer) = &jwt.issuer {
            env.push(json!({"name": "TENANTRY_JWT_ISSUER", "value": issuer}));
        }
        if let Some(audience) = &jwt.audience {
            env.push(json!({"name": "TENANTRY_JWT_AUDIENCE", "value": audience}));
        }
    }
    let mut container = json!({
        "name": ENFORCER,
        "image": config.image,
        "args": ["run"],
        "env": env,
        "ports": [
            {"name": "tenantry-proxy", "containerPort": config.proxy_port, "protocol": "TCP"},
            {"name": "tenantry-admin", "containerPort": config.admin_port, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": config.admin_port}},
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"memory": "64Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": if config.redirect { ENFORCER_UID } else { 65532 },
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if config.mode == SidecarMode::Native {
        container["restartPolicy"] = json!("Always");
    }
    container
}

/// The redirect init container of transparent mode, exactly as injected.
pub fn redirect_init(config: &InjectionConfig, app_port: u16) -> Value {
    json!({
        "name": ENFORCER_INIT,
        "image": config.image,
        "args": ["init-redirect"],
        "env": [
            {"name": "TENANTRY_APP_PORTS", "value": app_port.to_string()},
            {"name": "TENANTRY_PROXY_PORT", "value": config.proxy_port.to_string()},
            {"name": "TENANTRY_EXCLUDE_UID", "value": ENFORCER_UID.to_string()},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

/// What Tenantry injects into one pod: the enforcer, and in transparent mode its init container.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub sidecar: Value,
    pub init: Option<Value>,
}

impl Injection {
    pub fn for_pod(config: &InjectionConfig, tenant: &str, tier: &str, app_port: u16) -> Injection {
        Injection {
            sidecar: sidecar(config, tenant, tier, app_port),
            init: config.redirect.then(|| redirect_init(config, app_port)),
        }
    }
}

fn list_key(mode: SidecarMode) -> &'static str {
    match mode {
        SidecarMode::Native => "initContainers",
        SidecarMode::Container => "containers",
    }
}

fn find_named(spec: &Value, list: &str, name: &str) -> Option<usize> {
    spec.get(list)?
        .as_array()?
        .iter()
        .position(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

fn find_enforcer(spec: &Value, list: &str) -> Option<usize> {
    find_named(spec, list, ENFORCER)
}

/// `expected` holds every field of `actual` that Tenantry set. The API server adds defaults
/// (`imagePullPolicy`, probe timeouts, …) between mutation and validation; those are fine.
pub fn conforms(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| conforms(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(ev, av)| conforms(ev, av))
        }
        _ => expected == actual,
    }
}

/// Fields the API server fills in on containers after mutation; anything else a pod adds to the
/// enforcer container (a `command`, `envFrom`, volumes) changes what it runs and is an alteration.
const DEFAULTED_CONTAINER_FIELDS: &[&str] = &[
    "imagePullPolicy",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "volumeMounts",
];
/// The one volume the API server mounts into every container: the service account token.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Whether `actual` is the injected enforcer `expected`, give or take API-server defaults.
/// Nested objects (probes, resources, ports) may gain defaulted fields; the container itself may
/// not gain fields that change what it runs.
pub fn sidecar_conforms(expected: &Value, actual: &Value) -> bool {
    let (Some(e), Some(a)) = (expected.as_object(), actual.as_object()) else {
        return false;
    };
    let extra_ok = a.iter().all(|(k, v)| {
        e.contains_key(k)
            || match k.as_str() {
                "volumeMounts" => v.as_array().into_iter().flatten().all(|m| {
                    m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_MOUNT)
                }),
                other => DEFAULTED_CONTAINER_FIELDS.contains(&other),
            }
    });
    extra_ok
        && e.iter().all(|(k, ev)| {
            let Some(av) = a.get(k) else { return false };
            match k.as_str() {
                "readinessProbe" | "ports" | "resources" => conforms(ev, av),
                _ => ev == av,
            }
        })
}

/// The enforcer state of a pod being created, against what it should have.
pub fn enforcer_state_on_create(
    pod: &Value,
    expected: &Injection,
    mode: SidecarMode,
) -> EnforcerState {
    let Some(spec) = pod.get("spec") else {
        return EnforcerState::Missing;
    };
    let wrong_list = list_key(match mode {
        SidecarMode::Native => SidecarMode::Container,
        SidecarMode::Container => SidecarMode::Native,
    });
    if find_enforcer(spec, wrong_list).is_some()
        || find_named(spec, "containers", ENFORCER_INIT).is_some()
    {
        return EnforcerState::Altered;
    }
    let list = list_key(mode);
    let init = find_named(spec, "initContainers", ENFORCER_INIT);
    let init_ok = match (&expected.init, init) {
        (None, None) => true,
        (Some(e), Some(i)) => sidecar_conforms(e, &spec["initContainers"][i]),
        _ => false,
    };
    match find_enforcer(spec, list) {
        None if init.is_none() && opted_out(pod) => EnforcerState::OptedOut,
        None => EnforcerState::Missing,
        Some(i) if init_ok && sidecar_conforms(&expected.sidecar, &spec[list][i]) => {
            EnforcerState::Injected
        }
        Some(_) => EnforcerState::Altered,
    }
}

/// The enforcer state of a pod being updated: what it was created with must be untouched.
/// Pods created before Tenantry (no sidecar then, none now) are left alone.
pub fn enforcer_state_on_update(new: &Value, old: &Value) -> EnforcerState {
    let containers = |pod: &Value| {
        let spec = pod.get("spec")?;
        let find = |name: &str| {
            ["initContainers", "containers"]
                .iter()
                .find_map(|list| find_named(spec, list, name).map(|i| spec[*list][i].clone()))
        };
        let (sidecar, init) = (find(ENFORCER), find(ENFORCER_INIT));
        (sidecar.is_some() || init.is_some()).then_some((sidecar, init))
    };
    match (containers(old), containers(new)) {
        (None, None) => EnforcerState::NotApplicable,
        (Some(o), Some(n)) if o == n => EnforcerState::Injected,
        _ => EnforcerState::Altered,
    }
}

/// Puts the enforcer (and its init container in transparent mode) into `pod`, replacing any
/// containers of those names the pod brought itself. Returns whether the pod changed.
pub fn inject(pod: &mut Value, expected: &Injection, mode: SidecarMode) -> bool {
    if enforcer_state_on_create(pod, expected, mode) == EnforcerState::Injected {
        return false;
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return false;
    };
    for list in ["initContainers", "containers"] {
        if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
            items.retain(|c| {
                let name = c.get("name").and_then(Value::as_str);
                name != Some(ENFORCER) && name != Some(ENFORCER_INIT)
            });
        }
    }
    // First, so the redirect is in place and the enforcer is up before other init containers
    // and the application start.
    let mut front = Vec::new();
    if let Some(init) = &expected.init {
        front.push(("initContainers", init.clone()));
    }
    front.push((list_key(mode), expected.sidecar.clone()));
    let mut position = std::collections::HashMap::new();
    for (list, container) in front {
        let items = spec.entry(list).or_insert_with(|| Value::Array(Vec::new()));
        if !items.is_array() {
            *items = Value::Array(Vec::new());
        }
        if let Some(items) = items.as_array_mut() {
            let at: &mut usize = position.entry(list).or_default();
            items.insert(*at, container);
            *at += 1;
        }
    }
    true
}

fn toleration_json(t: &Toleration) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// A toleration only the tier may grant: one for Tenantry's own taints, or a wildcard that
/// tolerates every taint (and so every dedicated pool).
fn is_reserved_toleration(t: &Value) -> bool {
    let key = t.get("key").and_then(Value::as_str).unwrap_or("");
    key.starts_with(PREFIX)
        || (key.is_empty() && t.get("operator").and_then(Value::as_str) == Some("Exists"))
}

/// Whether a pod being created is scheduled as its tier says.
pub fn scheduling_state_on_create(spec: &Value, tier: &Tier) -> SchedulingState {
    // A pod naming its node skips the scheduler, and with it every taint and selector.
    if spec
        .get("nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return SchedulingState::Altered;
    }
    let s = &tier.scheduling;
    if let Some(class) = &s.priority_class
        && spec.get("priorityClassName").and_then(Value::as_str) != Some(class)
    {
        return SchedulingState::Altered;
    }
    let selector = spec.get("nodeSelector").and_then(Value::as_object);
    let selector_ok =
        s.node_selector.iter().all(|(k, v)| {
            selector.and_then(|m| m.get(k)).and_then(Value::as_str) == Some(v.as_str())
        }) && selector
            .into_iter()
            .flatten()
            .all(|(k, _)| !k.starts_with(PREFIX) || s.node_selector.contains_key(k));
    if !selector_ok {
        return SchedulingState::Altered;
    }
    let granted: Vec<Value> = s.tolerations.iter().map(toleration_json).collect();
    let present: Vec<&Value> = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let all_granted_present = granted
        .iter()
        .all(|g| present.iter().any(|p| conforms(g, p)));
    let no_reserved_extra = present
        .iter()
        .all(|p| !is_reserved_toleration(p) || granted.iter().any(|g| conforms(g, p)));
    if all_granted_present && no_reserved_extra {
        SchedulingState::Tier
    } else {
        SchedulingState::Altered
    }
}

/// Pods may gain tolerations on update; none of the added ones may be reserved.
pub fn scheduling_state_on_update(new_spec: &Value, old_spec: &Value) -> SchedulingState {
    let old: Vec<&Value> = old_spec
        .get("tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let added_reserved = new_spec
        .get("tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|t| !old.contains(&t) && is_reserved_toleration(t));
    if added_reserved {
        SchedulingState::Altered
    } else {
        SchedulingState::Tier
    }
}

/// Applies the tier's scheduling to a pod spec. Returns warnings for what was removed.
pub fn apply_scheduling(spec: &mut Map<String, Value>, tier: &Tier) -> Vec<String> {
    let s = &tier.scheduling;
    let mut warnings = Vec::new();
    if let Some(class) = &s.priority_class
        && spec.get("priorityClassName").and_then(Value::as_str) != Some(class)
    {
        spec.insert("priorityClassName".into(), Value::String(class.clone()));
        // The API server resolved `priority` from the old class before webhooks ran; it
        // recomputes it from the new class only if the integer is absent.
        spec.remove("priority");
    }
    let selector = spec
        .entry("nodeSelector")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(selector) = selector.as_object_mut() {
        let foreign: Vec<String> = selector
            .keys()
            .filter(|k| k.starts_with(PREFIX) && !s.node_selector.contains_key(*k))
            .cloned()
            .collect();
        for k in foreign {
            selector.remove(&k);
            warnings.push(format!(
                "removed nodeSelector `{k}`: not granted by tier `{}`",
                tier.name
            ));
        }
        for (k, v) in &s.node_selector {
            selector.insert(k.clone(), Value::String(v.clone()));
        }
    }
    if spec
        .get("nodeSelector")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        spec.remove("nodeSelector");
    }
    let granted: Vec<Value> = s.tolerations.iter().map(toleration_json).collect();
    let tolerations = spec
        .entry("tolerations")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(list) = tolerations.as_array_mut() {
        list.retain(|t| {
            let keep = !is_reserved_toleration(t) || granted.iter().any(|g| conforms(g, t));
            if !keep {
                warnings.push(format!(
                    "removed toleration {t}: not granted by tier `{}`",
                    tier.name
                ));
            }
            keep
        });
        for g in granted {
            if !list.iter().any(|t| conforms(&g, t)) {
                list.push(g);
            }
        }
    }
    if spec
        .get("tolerations")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        spec.remove("tolerations");
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn the_rate_limit_credential_comes_from_the_tenants_secret_not_the_pod_spec() {
        let config = InjectionConfig {
            redis_secret: Some("tenantry-ratelimit".into()),
            ..InjectionConfig::default()
        };
        let sidecar = sidecar(&config, "acme", "gold", 8080);
        let redis = sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "TENANTRY_REDIS")
            .unwrap()
            .clone();
        assert!(redis.get("value").is_none(), "{redis}");
        assert_eq!(
            redis["valueFrom"]["secretKeyRef"],
            json!({"name": "tenantry-ratelimit", "key": "url", "optional": true})
        );
        // The injected form is what validation expects, so such pods conform.
        assert!(sidecar_conforms(&sidecar, &sidecar));
    }

    #[test]
    fn injected_enforcers_get_the_operators_jwt_settings_with_public_keys_only() {
        let jwt = SidecarJwt::new(
            PUBLIC_JWKS.into(),
            "ES256".into(),
            Some("https://issuer.example".into()),
            None,
            "tenant".into(),
        )
        .unwrap();
        let config = InjectionConfig {
            jwt: Some(jwt),
            ..InjectionConfig::default()
        };
        let env = sidecar(&config, "acme", "gold", 8080)["env"].clone();
        let value = |name: &str| {
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].as_str().unwrap().to_string())
        };
        assert!(
            value("TENANTRY_JWT_JWKS")
                .unwrap()
                .contains("\"kid\":\"k1\"")
        );
        assert_eq!(value("TENANTRY_JWT_ALGORITHM").as_deref(), Some("ES256"));
        assert_eq!(
            value("TENANTRY_JWT_ISSUER").as_deref(),
            Some("https://issuer.example")
        );
        assert_eq!(value("TENANTRY_JWT_AUDIENCE"), None);

        // Everything injected is readable by tenants: no shared secret, no private key.
        let hs = SidecarJwt::new(PUBLIC_JWKS.into(), "HS256".into(), None, None, "t".into());
        assert!(hs.unwrap_err().contains("HS256"));
        let private = PUBLIC_JWKS.replace("\"kid\"", "\"d\":\"secret\",\"kid\"");
        let err = SidecarJwt::new(private, "ES256".into(), None, None, "t".into()).unwrap_err();
        assert!(err.contains("private or symmetric"), "{err}");
        let symmetric = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#;
        assert!(SidecarJwt::new(symmetric.into(), "RS256".into(), None, None, "t".into()).is_err());
        assert!(SidecarJwt::new("{}".into(), "RS256".into(), None, None, "t".into()).is_err());
    }

    #[test]
    fn effective_pod_resources_follow_resourcequota_rules() {
        let spec = json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "128Mi"}}},
            ],
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                {"name": "big-init", "resources": {"requests": {"cpu": "4"}}},
            ],
        });
        let r = pod_resources(&spec).unwrap();
        // init step: 50m sidecar + 4 CPU beats 250m + 1 + 50m
        assert_eq!(r.requests_cpu, 4050);
        assert_eq!(r.requests_memory, (64 + 128) << 20);
        assert_eq!(r.limits_cpu, 1000);
    }

    #[test]
    fn pod_level_resources_take_precedence_over_the_containers() {
        let spec = json!({
            "resources": {"requests": {"cpu": "3"}, "limits": {"memory": "1Gi"}},
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
        });
        let r = pod_resources(&spec).unwrap();
        assert_eq!(
            r.requests_cpu, 3000,
            "a tenant cannot hide pod-level CPU behind tiny containers"
        );
        assert_eq!(
            r.requests_memory,
            1 << 30,
            "the pod-level limit defaults the request"
        );
        assert_eq!(r.limits_memory, 1 << 30);
    }

    #[test]
    fn malformed_quantities_name_the_container() {
        let spec =
            json!({"containers": [{"name": "app", "resources": {"requests": {"cpu": "lots"}}}]});
        let err = pod_resources(&spec).unwrap_err().to_string();
        assert!(
            err.starts_with("container `app` resources.requests.cpu:"),
            "{err}"
        );
    }

    #[test]
    fn a_sidecar_with_extra_behaviour_does_not_conform() {
        let expected = json!({"name": "tenantry-enforcer", "image": "e", "args": ["run"],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15021}}});
        let defaulted = json!({"name": "tenantry-enforcer", "image": "e", "args": ["run"],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15021, "scheme": "HTTP"}, "timeoutSeconds": 1},
            "imagePullPolicy": "IfNotPresent",
            "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]});
        assert!(sidecar_conforms(&expected, &defaulted));
        for (field, value) in [
            ("command", json!(["/bin/sleep", "infinity"])),
            ("envFrom", json!([{"secretRef": {"name": "x"}}])),
            (
                "volumeMounts",
                json!([{"name": "host", "mountPath": "/host"}]),
            ),
        ] {
            let mut altered = defaulted.clone();
            altered[field] = value;
            assert!(!sidecar_conforms(&expected, &altered), "{field}");
        }
        let mut more_args = defaulted.clone();
        more_args["args"] = json!(["run", "--upstream", "10.0.0.1:80"]);
        assert!(!sidecar_conforms(&expected, &more_args));
    }

    #[test]
    fn defaulted_fields_still_conform() {
        let expected = json!({"name": "x", "ports": [{"containerPort": 1, "protocol": "TCP"}]});
        let actual = json!({"name": "x", "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 1, "protocol": "TCP"}], "terminationMessagePath": "/dev/termination-log"});
        assert!(conforms(&expected, &actual));
        let altered = json!({"name": "x", "ports": [{"containerPort": 2, "protocol": "TCP"}]});
        assert!(!conforms(&expected, &altered));
    }
}
