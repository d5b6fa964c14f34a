//! What a pod spec asks of the node: the facts behind the Kubernetes Pod Security Standards
//! (baseline and restricted) and Tenantry's own pod rules, for a Pod or any workload's template.
//!
//! Every fact has the polarity of a violation (set = something to look at), so an UPDATE is
//! judged by what it *adds* ([`PodSecurity::added_since`]): an ephemeral container or a resize
//! cannot bring in what the pod was not allowed, and a pod admitted under older rules can still
//! have its labels or finalizers changed. The policies in `pods.cedar` decide with these facts.

use std::collections::BTreeSet;

use serde_json::Value;
use tenantry_cluster::json::At;

use crate::pod::{ENFORCER, ENFORCER_INIT};

/// Volume types the restricted profile allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Inline volume types that mount network storage by address: whoever writes the address reads
/// whatever export is there, another tenant's included.
const NETWORK_VOLUMES: &[&str] = &[
    "nfs",
    "iscsi",
    "cephfs",
    "rbd",
    "glusterfs",
    "fc",
    "flexVolume",
    "flocker",
    "cinder",
    "azureFile",
    "azureDisk",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "portworxVolume",
    "quobyte",
    "scaleIO",
    "storageos",
    "vsphereVolume",
    "photonPersistentDisk",
];

/// Fields of a volume that are not its type.
const VOLUME_NON_TYPE_FIELDS: &[&str] = &["name"];

/// SELinux types the baseline profile allows.
const BASELINE_SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Facts about one pod spec, each a potential violation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSecurity {
    pub privileged: bool,
    pub host_process: bool,
    /// Paths of `hostPath` volumes.
    pub host_paths: BTreeSet<String>,
    /// `hostPort`s of any container.
    pub host_ports: BTreeSet<i64>,
    /// Capabilities added by any container, upper case without `CAP_`.
    pub added_capabilities: BTreeSet<String>,
    /// Some container or the pod sets an AppArmor profile of `Unconfined`.
    pub apparmor_unconfined: bool,
    /// SELinux options beyond the container types (a user, a role, another type).
    pub selinux_custom: bool,
    /// Some container asks for an unmasked /proc.
    pub proc_mount_unmasked: bool,
    /// Some container or the pod sets seccomp `Unconfined`.
    pub seccomp_unconfined: bool,
    /// Sysctls the pod sets.
    pub sysctls: BTreeSet<String>,
    /// Volume types outside the restricted profile's list.
    pub restricted_volume_types: BTreeSet<String>,
    /// Inline network volume types (nfs, iscsi, cephfs, rbd, …).
    pub network_volumes: BTreeSet<String>,
    /// Some container does not set `allowPrivilegeEscalation: false`.
    pub privilege_escalation: bool,
    /// Some container may run as root (no effective `runAsNonRoot: true`).
    pub may_run_as_root: bool,
    /// Explicit `runAsUser` values of the pod and its containers.
    pub run_as_users: BTreeSet<i64>,
    /// Some container has no effective seccomp profile of `RuntimeDefault` or `Localhost`.
    pub seccomp_unset: bool,
    /// Some container does not drop ALL capabilities.
    pub capabilities_kept: bool,
    /// The pod shares one process namespace: its containers see each other's processes,
    /// the enforcer's included.
    pub share_process_namespace: bool,
    /// Container ports any container declares.
    pub container_ports: BTreeSet<i64>,
    /// An ephemeral container targets the enforcer (shares its process namespace).
    pub targets_enforcer: bool,
}

fn text<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.at(ptr).and_then(Value::as_str)
}

fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// Whether a container is Tenantry's own (judged separately by `enforcer-required`).
fn is_injected(container: &Value) -> bool {
    matches!(
        container.get("name").and_then(Value::as_str),
        Some(ENFORCER | ENFORCER_INIT)
    )
}

impl PodSecurity {
    /// The facts of `spec`. With `skip_injected`, the enforcer and its init container are left
    /// out (they are checked against exactly what Tenantry injects instead).
    pub fn of(spec: &Value, skip_injected: bool) -> PodSecurity {
        let mut f = PodSecurity {
            share_process_namespace: spec
                .get("shareProcessNamespace")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..PodSecurity::default()
        };
        let pod_sc = spec.get("securityContext").unwrap_or(&Value::Null);
        for sysctl in list(pod_sc, "sysctls") {
            if let Some(name) = sysctl.get("name").and_then(Value::as_str) {
                f.sysctls.insert(name.to_string());
            }
        }
        for volume in list(spec, "volumes") {
            let Some(map) = volume.as_object() else {
                continue;
            };
            for (ty, source) in map {
                if VOLUME_NON_TYPE_FIELDS.contains(&ty.as_str()) {
                    continue;
                }
                if ty == "hostPath" {
                    f.host_paths
                        .insert(text(source, "/path").unwrap_or("").to_string());
                }
                if !RESTRICTED_VOLUMES.contains(&ty.as_str()) {
                    f.restricted_volume_types.insert(ty.clone());
                }
                if NETWORK_VOLUMES.contains(&ty.as_str()) {
                    f.network_volumes.insert(ty.clone());
                }
            }
        }
        if pod_sc.at("/windowsOptions/hostProcess") == Some(&Value::Bool(true)) {
            f.host_process = true;
        }
        let pod_seccomp = text(pod_sc, "/seccompProfile/type");
        let pod_apparmor = text(pod_sc, "/appArmorProfile/type");
        let pod_non_root = pod_sc.get("runAsNonRoot").and_then(Value::as_bool);
        let pod_user = pod_sc.get("runAsUser").and_then(Value::as_i64);
        if let Some(u) = pod_user {
            f.run_as_users.insert(u);
        }
        f.selinux_custom |= selinux_custom(pod_sc.get("seLinuxOptions"));
        f.seccomp_unconfined |= pod_seccomp == Some("Unconfined");
        f.apparmor_unconfined |= pod_apparmor == Some("Unconfined");

        let containers = ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .flat_map(|k| list(spec, k).map(move |c| (k, c)));
        for (kind, c) in containers {
            if skip_injected && kind != "ephemeralContainers" && is_injected(c) {
                continue;
            }
            if kind == "ephemeralContainers"
                && matches!(
                    c.get("targetContainerName").and_then(Value::as_str),
                    Some(ENFORCER | ENFORCER_INIT)
                )
            {
                f.targets_enforcer = true;
            }
            for port in list(c, "ports") {
                if let Some(p) = port.get("hostPort").and_then(Value::as_i64)
                    && p != 0
                {
                    f.host_ports.insert(p);
                }
                if let Some(p) = port.get("containerPort").and_then(Value::as_i64) {
                    f.container_ports.insert(p);
                }
            }
            let sc = c.get("securityContext").unwrap_or(&Value::Null);
            let flag = |k: &str| sc.get(k).and_then(Value::as_bool);
            f.privileged |= flag("privileged") == Some(true);
            f.host_process |= sc.at("/windowsOptions/hostProcess") == Some(&Value::Bool(true));
            f.proc_mount_unmasked |= text(sc, "/procMount") == Some("Unmasked");
            f.selinux_custom |= selinux_custom(sc.get("seLinuxOptions"));
            f.privilege_escalation |= flag("allowPrivilegeEscalation") != Some(false);
            let seccomp = text(sc, "/seccompProfile/type").or(pod_seccomp);
            f.seccomp_unconfined |= seccomp == Some("Unconfined");
            f.seccomp_unset |= !matches!(seccomp, Some("RuntimeDefault" | "Localhost"));
            f.apparmor_unconfined |= text(sc, "/appArmorProfile/type") == Some("Unconfined");
            let user = sc.get("runAsUser").and_then(Value::as_i64);
            if let Some(u) = user {
                f.run_as_users.insert(u);
            }
            let non_root = flag("runAsNonRoot").or(pod_non_root) == Some(true);
            f.may_run_as_root |= !non_root || user.or(pod_user) == Some(0);
            for cap in sc
                .at("/capabilities/add")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                f.added_capabilities.insert(normalise_capability(cap));
            }
            let drops_all = sc
                .at("/capabilities/drop")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|d| normalise_capability(d) == "ALL");
            f.capabilities_kept |= !drops_all;
        }
        f
    }

    /// What `self` (the new spec) has that `old` did not: the violations an UPDATE adds.
    pub fn added_since(&self, old: &PodSecurity) -> PodSecurity {
        let set = |new: &BTreeSet<String>, old: &BTreeSet<String>| -> BTreeSet<String> {
            new.difference(old).cloned().collect()
        };
        let nums = |new: &BTreeSet<i64>, old: &BTreeSet<i64>| -> BTreeSet<i64> {
            new.difference(old).copied().collect()
        };
        PodSecurity {
            privileged: self.privileged && !old.privileged,
            host_process: self.host_process && !old.host_process,
            host_paths: set(&self.host_paths, &old.host_paths),
            host_ports: nums(&self.host_ports, &old.host_ports),
            added_capabilities: set(&self.added_capabilities, &old.added_capabilities),
            apparmor_unconfined: self.apparmor_unconfined && !old.apparmor_unconfined,
            selinux_custom: self.selinux_custom && !old.selinux_custom,
            proc_mount_unmasked: self.proc_mount_unmasked && !old.proc_mount_unmasked,
            seccomp_unconfined: self.seccomp_unconfined && !old.seccomp_unconfined,
            sysctls: set(&self.sysctls, &old.sysctls),
            restricted_volume_types: set(
                &self.restricted_volume_types,
                &old.restricted_volume_types,
            ),
            network_volumes: set(&self.network_volumes, &old.network_volumes),
            privilege_escalation: self.privilege_escalation && !old.privilege_escalation,
            may_run_as_root: self.may_run_as_root && !old.may_run_as_root,
            run_as_users: nums(&self.run_as_users, &old.run_as_users),
            seccomp_unset: self.seccomp_unset && !old.seccomp_unset,
            capabilities_kept: self.capabilities_kept && !old.capabilities_kept,
            share_process_namespace: self.share_process_namespace && !old.share_process_namespace,
            container_ports: nums(&self.container_ports, &old.container_ports),
            targets_enforcer: self.targets_enforcer && !old.targets_enforcer,
        }
    }
}

/// `cap_net_admin` → `NET_ADMIN`: the runtime accepts either spelling, so policies see one.
fn normalise_capability(cap: &str) -> String {
    let upper = cap.trim().to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .map_or(upper.clone(), str::to_string)
}

fn selinux_custom(options: Option<&Value>) -> bool {
    let Some(o) = options else { return false };
    let set = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    };
    set("user")
        || set("role")
        || !BASELINE_SELINUX_TYPES.contains(&o.get("type").and_then(Value::as_str).unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_ordinary_pod_raises_only_restricted_facts() {
        let spec = json!({"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}]}]});
        let f = PodSecurity::of(&spec, true);
        assert!(!f.privileged && f.host_paths.is_empty() && f.added_capabilities.is_empty());
        assert!(
            f.privilege_escalation && f.may_run_as_root && f.seccomp_unset && f.capabilities_kept
        );
        assert_eq!(f.container_ports, BTreeSet::from([8080]));
    }

    #[test]
    fn a_restricted_pod_raises_nothing() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "web", "image": "nginx", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "c", "configMap": {"name": "c"}}],
        });
        let f = PodSecurity::of(&spec, true);
        assert!(
            !f.privilege_escalation
                && !f.may_run_as_root
                && !f.seccomp_unset
                && !f.capabilities_kept
        );
        assert_eq!(
            f.added_capabilities,
            BTreeSet::from(["NET_BIND_SERVICE".to_string()])
        );
        assert!(f.restricted_volume_types.is_empty());
    }

    #[test]
    fn node_escapes_are_found_in_every_container_list() {
        let spec = json!({
            "shareProcessNamespace": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
            "initContainers": [{"name": "i", "securityContext": {"privileged": true}}],
            "containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}],
                            "securityContext": {"capabilities": {"add": ["cap_net_admin"]}, "runAsUser": 1337}}],
            "ephemeralContainers": [{"name": "dbg", "targetContainerName": "tenantry-enforcer",
                                     "securityContext": {"procMount": "Unmasked", "seccompProfile": {"type": "Unconfined"}}}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "share", "nfs": {"server": "10.0.0.9", "path": "/exports/globex"}}],
        });
        let f = PodSecurity::of(&spec, true);
        assert!(f.privileged && f.share_process_namespace && f.targets_enforcer);
        assert!(f.proc_mount_unmasked && f.seccomp_unconfined);
        assert_eq!(f.host_paths, BTreeSet::from(["/".to_string()]));
        assert_eq!(f.host_ports, BTreeSet::from([80]));
        assert_eq!(
            f.added_capabilities,
            BTreeSet::from(["NET_ADMIN".to_string()])
        );
        assert_eq!(f.run_as_users, BTreeSet::from([1337]));
        assert_eq!(f.sysctls, BTreeSet::from(["kernel.msgmax".to_string()]));
        assert_eq!(f.network_volumes, BTreeSet::from(["nfs".to_string()]));
        assert!(f.restricted_volume_types.contains("hostPath"));
    }

    #[test]
    fn the_injected_containers_are_judged_elsewhere_unless_ephemeral() {
        let spec = json!({"initContainers": [
            {"name": "tenantry-enforcer-init", "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}}],
            "containers": [{"name": "app"}]});
        assert!(PodSecurity::of(&spec, true).added_capabilities.is_empty());
        assert_eq!(PodSecurity::of(&spec, false).added_capabilities.len(), 2);
    }

    #[test]
    fn updates_are_judged_by_what_they_add() {
        let old = PodSecurity::of(
            &json!({"containers": [{"name": "a", "securityContext": {"privileged": true}}]}),
            true,
        );
        let same = old.added_since(&old);
        assert!(!same.privileged && !same.may_run_as_root);
        let new = PodSecurity::of(
            &json!({
            "containers": [{"name": "a", "securityContext": {"privileged": true}}],
            "ephemeralContainers": [{"name": "d", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}),
            true,
        );
        let added = new.added_since(&old);
        assert!(!added.privileged);
        assert_eq!(
            added.added_capabilities,
            BTreeSet::from(["SYS_ADMIN".to_string()])
        );
    }
}
