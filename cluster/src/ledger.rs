//! The usage ledger: what Tenantry knows of the cluster, in as few bytes as practical — never
//! whole objects.
//!
//! - Observed objects are charged to their **namespace**, and a namespace belongs to whoever the
//!   directory (or, for self-service namespaces, the namespace's own label) says *now*: a
//!   namespace added to a tenant is charged to it at once, and no ownership change needs a recount.
//! - Admitted creates that are not observed yet are **reserved** per tenant: a create first
//!   reserves what it adds, then is decided against everyone else's usage and reservations, and
//!   releases its reservation if it is denied. Reservations expire, and are released early when
//!   the object is observed (a watch event) or, with no cluster to observe, settle into usage.
//! - Hosts are held **per object** (an Ingress, a Gateway or a Gateway API route): a host is free
//!   when no object serves it any more, and moves with the object that changes it.
//! - Tenant pods' IPs, PersistentVolumes' claims and namespaces' tenant labels are kept so that
//!   EndpointSlice addresses, claims naming a volume and self-service namespaces can be attributed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::json::At;
use crate::usage::{
    Amounts, ObjectRef, UsageView, VolumeClaim, count_key, host_covered, pod_ips, served_hosts,
};

/// `(ResourceQuota name, amount)` pairs one object adds.
pub type Charges = Vec<(String, i64)>;

/// The charges of an object of `group`/`resource`: its amounts plus its `count/…`.
pub fn charges(group: &str, resource: &str, amounts: &Amounts) -> Charges {
    let mut out: Charges = amounts
        .fields()
        .into_iter()
        .filter(|(k, v)| *k != "count" && *v != 0)
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    out.push((count_key(group, resource), amounts.count));
    out
}

#[derive(Debug)]
struct Reservation {
    tenant: Arc<str>,
    charges: Charges,
    expires: Instant,
}

/// One observed object: its namespace and resource (interned) and its charges as interned quota
/// names. Keys are hashes of `resource/namespace/name` (64-bit: a collision among a million
/// objects has odds below one in ten million).
#[derive(Debug, Clone)]
struct Observed {
    namespace: u32,
    resource: u16,
    charges: Box<[(u16, i64)]>,
}

/// The 64-bit key an object is tracked under.
pub fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The namespace part of a `resource/namespace/name` key.
fn key_namespace(key: &str) -> &str {
    key.split('/').nth(1).unwrap_or("")
}

#[derive(Debug, Default)]
struct State {
    /// Per namespace, per quota name: observed objects.
    counters: HashMap<u32, HashMap<u16, i64>>,
    /// Per tenant, per quota name: outstanding reservations.
    reserved: HashMap<Arc<str>, HashMap<String, i64>>,
    /// Observed objects by key hash, to undo them on delete or update.
    objects: HashMap<u64, Observed>,
    /// Interned quota and resource names.
    names: Vec<String>,
    name_ids: HashMap<String, u16>,
    /// Interned namespace names.
    namespaces: Vec<Arc<str>>,
    namespace_ids: HashMap<Arc<str>, u32>,
    /// The `tenantry.dev/tenant` label of each observed Namespace that has one, and the reverse.
    namespace_labels: HashMap<u32, Arc<str>>,
    labelled: HashMap<Arc<str>, Vec<u32>>,
    reservations: HashMap<String, Reservation>,
    /// Host → the objects (key hash, namespace) serving it.
    hosts: HashMap<String, Vec<(u64, u32)>>,
    host_keys: HashMap<u64, Vec<String>>,
    /// Pod IP → the pod's namespace.
    pod_ips: HashMap<IpAddr, u32>,
    ip_keys: HashMap<u64, Vec<IpAddr>>,
    /// PersistentVolume name → its claim and tenant label.
    volumes: HashMap<String, VolumeClaim>,
    volume_keys: HashMap<u64, String>,
}

impl State {
    fn intern(&mut self, name: &str) -> u16 {
        if let Some(id) = self.name_ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u16;
        self.names.push(name.to_string());
        self.name_ids.insert(name.to_string(), id);
        id
    }

    fn namespace_id(&mut self, namespace: &str) -> u32 {
        if let Some(id) = self.namespace_ids.get(namespace) {
            return *id;
        }
        let id = self.namespaces.len() as u32;
        let name: Arc<str> = namespace.into();
        self.namespaces.push(name.clone());
        self.namespace_ids.insert(name, id);
        id
    }

    fn compact(&mut self, charges: &Charges) -> Box<[(u16, i64)]> {
        charges.iter().map(|(k, v)| (self.intern(k), *v)).collect()
    }

    fn expand(&self, compact: &[(u16, i64)]) -> Charges {
        compact
            .iter()
            .map(|(id, v)| (self.names[*id as usize].clone(), *v))
            .collect()
    }

    /// Adds (sign 1) or removes (sign -1) an observed object's charges from its namespace.
    fn count(&mut self, o: &Observed, sign: i64) {
        let counters = self.counters.entry(o.namespace).or_default();
        for (id, v) in o.charges.iter() {
            *counters.entry(*id).or_default() += sign * v;
        }
    }

    fn insert_observed(&mut self, key: &str, charges: &Charges) -> (u64, u32) {
        let hash = key_hash(key);
        if let Some(old) = self.objects.remove(&hash) {
            self.count(&old, -1);
        }
        let resource = self.intern(key.split('/').next().unwrap_or(""));
        let namespace = self.namespace_id(key_namespace(key));
        let observed = Observed {
            namespace,
            resource,
            charges: self.compact(charges),
        };
        self.count(&observed, 1);
        self.objects.insert(hash, observed);
        (hash, namespace)
    }

    fn release(&mut self, key: &str) {
        if let Some(r) = self.reservations.remove(key) {
            apply(&mut self.reserved, &r.tenant, &r.charges, -1);
        }
    }

    fn set_hosts(&mut self, hash: u64, namespace: u32, hosts: Vec<String>) {
        self.clear_hosts(hash);
        for h in &hosts {
            self.hosts
                .entry(h.clone())
                .or_default()
                .push((hash, namespace));
        }
        if !hosts.is_empty() {
            self.host_keys.insert(hash, hosts);
        }
    }

    fn clear_hosts(&mut self, hash: u64) {
        for h in self.host_keys.remove(&hash).into_iter().flatten() {
            if let Some(holders) = self.hosts.get_mut(&h) {
                holders.retain(|(k, _)| *k != hash);
                if holders.is_empty() {
                    self.hosts.remove(&h);
                }
            }
        }
    }

    fn set_ips(&mut self, hash: u64, namespace: u32, ips: Vec<IpAddr>) {
        self.clear_ips(hash);
        for ip in &ips {
            self.pod_ips.insert(*ip, namespace);
        }
        if !ips.is_empty() {
            self.ip_keys.insert(hash, ips);
        }
    }

    fn clear_ips(&mut self, hash: u64) {
        for ip in self.ip_keys.remove(&hash).into_iter().flatten() {
            self.pod_ips.remove(&ip);
        }
    }

    fn set_label(&mut self, namespace: u32, tenant: Option<Arc<str>>) {
        if let Some(old) = self.namespace_labels.remove(&namespace)
            && let Some(list) = self.labelled.get_mut(&old)
        {
            list.retain(|n| *n != namespace);
            if list.is_empty() {
                self.labelled.remove(&old);
            }
        }
        if let Some(t) = tenant {
            self.labelled.entry(t.clone()).or_default().push(namespace);
            self.namespace_labels.insert(namespace, t);
        }
    }

    fn forget(&mut self, hash: u64) {
        if let Some(old) = self.objects.remove(&hash) {
            self.count(&old, -1);
            // A deleted Namespace takes its self-service label with it.
            if self
                .names
                .get(old.resource as usize)
                .is_some_and(|r| r == "namespaces")
            {
                self.set_label(old.namespace, None);
            }
        }
        self.clear_hosts(hash);
        self.clear_ips(hash);
        if let Some(name) = self.volume_keys.remove(&hash) {
            self.volumes.remove(&name);
        }
    }
}

fn apply(
    map: &mut HashMap<Arc<str>, HashMap<String, i64>>,
    tenant: &Arc<str>,
    charges: &Charges,
    sign: i64,
) {
    let counters = map.entry(tenant.clone()).or_default();
    for (k, v) in charges {
        *counters.entry(k.clone()).or_default() += sign * v;
    }
}

/// The in-process ledger, shared by every request of one webhook replica.
#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<State>,
}

/// The key an object is observed and reserved under: `resource/namespace/name` (see
/// [`ObjectRef::key`]).
pub fn object_key(resource: &str, namespace: &str, name: &str) -> String {
    format!("{resource}/{namespace}/{name}")
}

/// The key an update's growth is reserved under: apart from the object's own key, since the
/// object is already observed; [`Ledger::observe`] releases it when the object is seen again.
pub fn growth_key(key: &str) -> String {
    format!("{key}@update")
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// A ledger of `objects` (a `--state` file, a review).
    pub fn from_objects<'a>(
        objects: impl IntoIterator<Item = &'a Value>,
    ) -> Result<Ledger, String> {
        let ledger = Ledger::new();
        for object in objects {
            ledger.observe(object)?;
        }
        Ok(ledger)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an existing object (a `--state` entry or a watch event). Observing an object
    /// again replaces what it was charged, the hosts it serves and the IPs it holds; it also
    /// releases a reservation made for it.
    pub fn observe(&self, object: &Value) -> Result<(), String> {
        let r = ObjectRef::of(object);
        let key = r.key();
        let amounts = crate::usage::amounts_of(&r.group, &r.resource, object)
            .map_err(|e| format!("{} `{}/{}`: {e}", r.kind, r.namespace, r.name))?;
        let charges = charges(&r.group, &r.resource, &amounts);
        let hosts: Vec<String> = served_hosts(&r.group, r.kind, object)
            .into_iter()
            .map(str::to_string)
            .collect();
        let ips = if r.kind == "Pod" && amounts.pods > 0 {
            pod_ips(object)
        } else {
            Vec::new()
        };
        let mut s = self.state();
        let first_sight = !s.objects.contains_key(&key_hash(&key));
        let reserved_for = match s.reservations.contains_key(&key) {
            true => Some(key.clone()),
            // Objects created with generateName were reserved before they had a name: a new
            // object of that kind in that namespace settles the oldest such reservation.
            false if first_sight => {
                let unnamed = format!("{}~", object_key(&r.resource, r.namespace, ""));
                s.reservations
                    .iter()
                    .filter(|(k, _)| k.starts_with(&unnamed))
                    .min_by_key(|(_, r)| r.expires)
                    .map(|(k, _)| k.clone())
            }
            false => None,
        };
        if let Some(k) = reserved_for {
            s.release(&k);
        }
        // An update's growth was reserved apart (the object was already observed); seeing the
        // object again is seeing what the update left.
        s.release(&growth_key(&key));
        let (hash, namespace) = s.insert_observed(&key, &charges);
        s.set_hosts(hash, namespace, hosts);
        s.set_ips(hash, namespace, ips);
        match r.kind {
            "Namespace" => {
                let label = object
                    .at("/metadata/labels")
                    .and_then(|l| l.get(crate::LABEL_TENANT))
                    .and_then(Value::as_str);
                s.set_label(namespace, label.map(Arc::from));
            }
            "PersistentVolume" => {
                let text = |ptr: &str| object.at(ptr).and_then(Value::as_str);
                let claim = VolumeClaim {
                    claim_namespace: text("/spec/claimRef/namespace").map(Arc::from),
                    claim_name: text("/spec/claimRef/name").map(str::to_string),
                    tenant_label: object
                        .at("/metadata/labels")
                        .and_then(|l| l.get(crate::LABEL_TENANT))
                        .and_then(Value::as_str)
                        .map(Arc::from),
                };
                s.volumes.insert(r.name.to_string(), claim);
                s.volume_keys.insert(hash, r.name.to_string());
            }
            _ => {}
        }
        Ok(())
    }

    /// Removes an object that was deleted.
    pub fn forget(&self, key: &str) {
        self.forget_hash(key_hash(key));
    }

    /// Removes an object by its key hash (see [`key_hash`]).
    pub fn forget_hash(&self, hash: u64) {
        self.state().forget(hash);
    }

    /// Reserves `charges` for `tenant` under `key` until `ttl` passes.
    pub fn reserve(&self, key: &str, tenant: &Arc<str>, charges: Charges, ttl: Duration) {
        let mut s = self.state();
        let now = Instant::now();
        let expired: Vec<String> = s
            .reservations
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            s.release(&k);
        }
        apply(&mut s.reserved, tenant, &charges, 1);
        if let Some(old) = s.reservations.insert(
            key.to_string(),
            Reservation {
                tenant: tenant.clone(),
                charges,
                expires: now + ttl,
            },
        ) {
            apply(&mut s.reserved, &old.tenant, &old.charges, -1);
        }
    }

    /// Drops a reservation (the create was denied, or cannot happen).
    pub fn release(&self, key: &str) {
        self.state().release(key);
    }

    /// Turns a reservation into observed usage (no cluster will ever report the object).
    pub fn settle(&self, key: &str) {
        let mut s = self.state();
        if let Some(r) = s.reservations.remove(key) {
            apply(&mut s.reserved, &r.tenant, &r.charges, -1);
            s.insert_observed(key, &r.charges);
        }
    }

    /// Records that a self-service namespace was admitted for `tenant`, before the watch reports
    /// it, so the tenant's next writes into it are its own. The watch's view replaces this.
    pub fn admit_namespace(&self, namespace: &str, tenant: &Arc<str>) {
        let mut s = self.state();
        let id = s.namespace_id(namespace);
        if !s.namespace_labels.contains_key(&id) {
            s.set_label(id, Some(tenant.clone()));
        }
    }

    /// Key hashes of observed objects of `resource` (`pods`), to reconcile after a relist.
    pub fn hashes_of_resource(&self, resource: &str) -> Vec<u64> {
        let s = self.state();
        let Some(id) = s.name_ids.get(resource).copied() else {
            return Vec::new();
        };
        s.objects
            .iter()
            .filter(|(_, o)| o.resource == id)
            .map(|(h, _)| *h)
            .collect()
    }

    /// Outstanding reservations, for metrics.
    pub fn reservations(&self) -> usize {
        self.state().reservations.len()
    }

    /// Observed objects, for metrics.
    pub fn objects(&self) -> usize {
        self.state().objects.len()
    }

    /// Records an admitted object as used (no cluster will report it), without a local
    /// reservation (reservations are shared through Redis).
    pub fn record(&self, key: &str, charges: Charges) {
        self.state().insert_observed(key, &charges);
    }

    /// Whether this replica counts `key` as observed (its reservation no longer matters).
    pub fn is_observed(&self, key: &str) -> bool {
        self.state().objects.contains_key(&key_hash(key))
    }

    /// What an observed object is charged, for tests and debugging.
    pub fn charges_of(&self, key: &str) -> Option<Charges> {
        let s = self.state();
        s.objects.get(&key_hash(key)).map(|o| s.expand(&o.charges))
    }

    /// Usage as seen by the request holding `own` (its own reservation is not counted twice).
    pub fn view<'a>(&'a self, own: Option<&'a str>) -> LedgerView<'a> {
        LedgerView {
            ledger: self,
            own,
            shared: None,
        }
    }

    /// Usage with `tenant`'s reservations taken from the shared store instead of this replica.
    pub fn view_shared<'a>(
        &'a self,
        tenant: Arc<str>,
        reserved: HashMap<String, i64>,
    ) -> LedgerView<'a> {
        LedgerView {
            ledger: self,
            own: None,
            shared: Some((tenant, reserved)),
        }
    }
}

/// A read view of the ledger for one decision.
pub struct LedgerView<'a> {
    ledger: &'a Ledger,
    own: Option<&'a str>,
    shared: Option<(Arc<str>, HashMap<String, i64>)>,
}

impl UsageView for LedgerView<'_> {
    fn used(&self, tenant: &str, namespaces: &[&str], resource: &str) -> i64 {
        let s = self.ledger.state();
        let observed: i64 = match s.name_ids.get(resource) {
            None => 0,
            Some(id) => namespaces
                .iter()
                .filter_map(|ns| s.namespace_ids.get(*ns))
                .filter_map(|ns| s.counters.get(ns))
                .filter_map(|c| c.get(id))
                .sum(),
        };
        if let Some((shared_tenant, reserved)) = &self.shared
            && &**shared_tenant == tenant
        {
            return observed + reserved.get(resource).copied().unwrap_or(0);
        }
        let reserved = s
            .reserved
            .get(tenant)
            .and_then(|c| c.get(resource))
            .copied()
            .unwrap_or(0);
        let own = self
            .own
            .and_then(|k| s.reservations.get(k))
            .filter(|r| &*r.tenant == tenant)
            .and_then(|r| {
                r.charges
                    .iter()
                    .find(|(k, _)| k == resource)
                    .map(|(_, v)| *v)
            })
            .unwrap_or(0);
        observed + reserved - own
    }

    fn host_namespaces(&self, host: &str) -> Vec<Arc<str>> {
        let s = self.ledger.state();
        let mut out: Vec<Arc<str>> = host_covered(&s.hosts, host)
            .into_iter()
            .flatten()
            .filter_map(|(_, ns)| s.namespaces.get(*ns as usize).cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn namespace_label(&self, namespace: &str) -> Option<Arc<str>> {
        let s = self.ledger.state();
        let id = s.namespace_ids.get(namespace)?;
        s.namespace_labels.get(id).cloned()
    }

    fn labelled_namespaces(&self, tenant: &str) -> Vec<Arc<str>> {
        let s = self.ledger.state();
        s.labelled
            .get(tenant)
            .into_iter()
            .flatten()
            .filter_map(|ns| s.namespaces.get(*ns as usize).cloned())
            .collect()
    }

    fn pod_ip_namespace(&self, ip: IpAddr) -> Option<Arc<str>> {
        let s = self.ledger.state();
        let ns = s.pod_ips.get(&ip)?;
        s.namespaces.get(*ns as usize).cloned()
    }

    fn volume(&self, name: &str) -> Option<VolumeClaim> {
        self.ledger.state().volumes.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reservations_count_for_others_not_for_their_owner() {
        let ledger = Ledger::new();
        let acme: Arc<str> = "acme".into();
        ledger.reserve(
            "pods/acme-dev/a",
            &acme,
            vec![("pods".into(), 1)],
            Duration::from_secs(30),
        );
        ledger.reserve(
            "pods/acme-dev/b",
            &acme,
            vec![("pods".into(), 1)],
            Duration::from_secs(30),
        );
        assert_eq!(ledger.view(None).used("acme", &["acme-dev"], "pods"), 2);
        assert_eq!(
            ledger
                .view(Some("pods/acme-dev/a"))
                .used("acme", &["acme-dev"], "pods"),
            1
        );
        ledger.release("pods/acme-dev/a");
        assert_eq!(ledger.view(None).used("acme", &["acme-dev"], "pods"), 1);
    }

    #[test]
    fn observing_the_object_replaces_its_reservation() {
        let ledger = Ledger::new();
        let acme: Arc<str> = "acme".into();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "acme-dev"},
                         "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}});
        ledger.reserve(
            "pods/acme-dev/a",
            &acme,
            vec![("pods".into(), 1), ("requests.cpu".into(), 1000)],
            Duration::from_secs(30),
        );
        ledger.observe(&pod).unwrap();
        assert_eq!(ledger.view(None).used("acme", &["acme-dev"], "pods"), 1);
        assert_eq!(
            ledger
                .view(None)
                .used("acme", &["acme-dev"], "requests.cpu"),
            1000
        );
        assert_eq!(ledger.reservations(), 0);
        ledger.observe(&pod).unwrap();
        assert_eq!(
            ledger.view(None).used("acme", &["acme-dev"], "pods"),
            1,
            "re-observing does not double count"
        );
        ledger.forget("pods/acme-dev/a");
        assert_eq!(ledger.view(None).used("acme", &["acme-dev"], "pods"), 0);
    }

    #[test]
    fn an_unnamed_reservation_settles_when_a_new_object_appears() {
        let ledger = Ledger::new();
        let acme: Arc<str> = "acme".into();
        ledger.reserve(
            "pods/acme-dev/~uid-1",
            &acme,
            vec![("pods".into(), 1)],
            Duration::from_secs(30),
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-x7k2p", "namespace": "acme-dev"}, "spec": {}});
        ledger.observe(&pod).unwrap();
        assert_eq!(ledger.reservations(), 0);
        assert_eq!(
            ledger.view(None).used("acme", &["acme-dev"], "pods"),
            1,
            "counted once, not twice"
        );
    }

    #[test]
    fn expired_reservations_stop_counting() {
        let ledger = Ledger::new();
        let acme: Arc<str> = "acme".into();
        ledger.reserve(
            "x",
            &acme,
            vec![("pods".into(), 1)],
            Duration::from_millis(0),
        );
        ledger.reserve(
            "y",
            &acme,
            vec![("pods".into(), 1)],
            Duration::from_secs(30),
        );
        assert_eq!(ledger.view(None).used("acme", &["acme-dev"], "pods"), 1);
    }

    fn ingress(name: &str, ns: &str, hosts: &[&str]) -> Value {
        let rules: Vec<Value> = hosts.iter().map(|h| json!({"host": h})).collect();
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": name, "namespace": ns}, "spec": {"rules": rules}})
    }

    #[test]
    fn a_host_stays_held_while_any_object_serves_it() {
        let ledger = Ledger::new();
        ledger
            .observe(&ingress("a", "globex-prod", &["shop.example"]))
            .unwrap();
        ledger
            .observe(&ingress("b", "globex-prod", &["shop.example"]))
            .unwrap();
        let view = ledger.view(None);
        assert_eq!(view.host_namespaces("shop.example").len(), 1);
        // One of the two goes: the other still serves the host.
        ledger.forget("ingresses/globex-prod/a");
        assert_eq!(ledger.view(None).host_namespaces("shop.example").len(), 1);
        ledger.forget("ingresses/globex-prod/b");
        assert!(ledger.view(None).host_namespaces("shop.example").is_empty());
    }

    #[test]
    fn a_host_moves_with_the_object_that_changes_it() {
        let ledger = Ledger::new();
        ledger
            .observe(&ingress("a", "globex-prod", &["old.example"]))
            .unwrap();
        ledger
            .observe(&ingress("a", "globex-prod", &["new.example"]))
            .unwrap();
        let view = ledger.view(None);
        assert!(
            view.host_namespaces("old.example").is_empty(),
            "the old host is free at once"
        );
        assert_eq!(view.host_namespaces("new.example").len(), 1);
    }

    #[test]
    fn gateway_routes_hold_hosts_like_ingresses() {
        let ledger = Ledger::new();
        let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "acme-prod"}, "spec": {"hostnames": ["api.acme.example"]}});
        ledger.observe(&route).unwrap();
        assert_eq!(
            ledger.view(None).host_namespaces("api.acme.example"),
            vec![Arc::<str>::from("acme-prod")]
        );
    }

    #[test]
    fn usage_is_counted_per_namespace_so_a_new_owner_is_charged_at_once() {
        let ledger = Ledger::new();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "legacy"},
                         "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
                         "status": {"podIP": "10.244.1.7"}});
        ledger.observe(&pod).unwrap();
        let view = ledger.view(None);
        // Whoever owns `legacy` now is charged: no recount when the directory changes.
        assert_eq!(view.used("acme", &["acme-dev"], "pods"), 0);
        assert_eq!(view.used("acme", &["acme-dev", "legacy"], "pods"), 1);
        assert_eq!(
            view.used("acme", &["acme-dev", "legacy"], "requests.cpu"),
            1000
        );
        assert_eq!(
            view.pod_ip_namespace("10.244.1.7".parse().unwrap())
                .as_deref(),
            Some("legacy")
        );
        drop(view);
        ledger.forget("pods/legacy/a");
        assert_eq!(
            ledger
                .view(None)
                .pod_ip_namespace("10.244.1.7".parse().unwrap()),
            None
        );
    }

    #[test]
    fn namespace_labels_and_volume_claims_are_tracked() {
        let ledger = Ledger::new();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "acme-lab", "labels": {"tenantry.dev/tenant": "acme"}}});
        ledger.observe(&ns).unwrap();
        let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"},
                        "spec": {"claimRef": {"namespace": "acme-prod", "name": "data"}}});
        ledger.observe(&pv).unwrap();
        let view = ledger.view(None);
        assert_eq!(view.namespace_label("acme-lab").as_deref(), Some("acme"));
        assert_eq!(
            view.labelled_namespaces("acme"),
            vec![Arc::<str>::from("acme-lab")]
        );
        let claim = view.volume("pv-1").unwrap();
        assert_eq!(claim.claim_namespace.as_deref(), Some("acme-prod"));
        drop(view);
        ledger.forget("namespaces/acme-lab/acme-lab");
        assert_eq!(ledger.view(None).namespace_label("acme-lab"), None);
    }
}
