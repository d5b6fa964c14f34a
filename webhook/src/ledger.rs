//! The usage ledger: what each tenant uses (observed objects) plus what admitted but not yet
//! observed creates will use (reservations), as per-tenant counters — never whole objects.
//!
//! Concurrent creates cannot overshoot a limit: a create first *reserves* what it adds, then is
//! decided against everyone else's usage and reservations, and releases its reservation if it
//! is denied. Reservations expire, and are released early when the object is observed (a watch
//! event) — or, with no cluster to observe, settle into usage once admitted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenantry_tenancy::Directory;

use crate::usage::{Amounts, ObjectRef, UsageView, count_key, host_covered, ingress_hosts};

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

/// One observed object in as few bytes as practical: its tenant, its resource and its charges
/// as interned quota names. Keys are hashes of `resource/namespace/name` (64-bit: a collision
/// among a million objects has odds below one in ten million).
#[derive(Debug, Clone)]
struct Observed {
    tenant: Arc<str>,
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

#[derive(Debug, Default)]
struct State {
    /// Per tenant, per quota name: observed objects.
    observed: HashMap<Arc<str>, HashMap<String, i64>>,
    /// Per tenant, per quota name: outstanding reservations.
    reserved: HashMap<Arc<str>, HashMap<String, i64>>,
    /// Observed objects by key hash, to undo them on delete or update.
    objects: HashMap<u64, Observed>,
    /// Interned quota and resource names.
    names: Vec<String>,
    name_ids: HashMap<String, u16>,
    reservations: HashMap<String, Reservation>,
    hosts: HashMap<String, Arc<str>>,
    host_keys: HashMap<u64, Vec<String>>,
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

    fn compact(&mut self, charges: &Charges) -> Box<[(u16, i64)]> {
        charges.iter().map(|(k, v)| (self.intern(k), *v)).collect()
    }

    fn expand(&self, compact: &[(u16, i64)]) -> Charges {
        compact
            .iter()
            .map(|(id, v)| (self.names[*id as usize].clone(), *v))
            .collect()
    }

    /// Adds (sign 1) or removes (sign -1) an observed object's charges from its tenant's totals.
    fn count(&mut self, o: &Observed, sign: i64) {
        let counters = self.observed.entry(o.tenant.clone()).or_default();
        for (id, v) in o.charges.iter() {
            let name = &self.names[*id as usize];
            match counters.get_mut(name) {
                Some(c) => *c += sign * v,
                None => {
                    counters.insert(name.clone(), sign * v);
                }
            }
        }
    }

    fn insert_observed(&mut self, key: &str, tenant: Arc<str>, charges: &Charges) {
        let hash = key_hash(key);
        if let Some(old) = self.objects.remove(&hash) {
            self.count(&old, -1);
        }
        let resource = self.intern(key.split('/').next().unwrap_or(""));
        let observed = Observed {
            tenant,
            resource,
            charges: self.compact(charges),
        };
        self.count(&observed, 1);
        self.objects.insert(hash, observed);
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

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// A ledger counting `objects` for the tenants of `directory` (a `--state` file, a review).
    pub fn from_objects<'a>(
        directory: &Directory,
        objects: impl IntoIterator<Item = &'a Value>,
    ) -> Result<Ledger, String> {
        let ledger = Ledger::new();
        for object in objects {
            ledger.observe(directory, object)?;
        }
        Ok(ledger)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an existing object (a `--state` entry or a watch event). Observing an object
    /// again replaces what it was charged before; it also releases a reservation made for it.
    pub fn observe(&self, directory: &Directory, object: &Value) -> Result<(), String> {
        let ObjectRef {
            kind,
            group,
            resource,
            namespace,
            name,
        } = ObjectRef::of(object);
        let key = object_key(&resource, namespace, name);
        let Some(owner) = directory.namespace_owner(namespace) else {
            self.forget(&key);
            return Ok(());
        };
        let tenant = owner.tenant.id.clone();
        let amounts = crate::usage::amounts_of(&group, &resource, object)
            .map_err(|e| format!("{kind} `{namespace}/{name}`: {e}"))?;
        let charges = charges(&group, &resource, &amounts);
        let mut s = self.state();
        let hash = key_hash(&key);
        let first_sight = !s.objects.contains_key(&hash);
        let reserved_for = match s.reservations.contains_key(&key) {
            true => Some(key.clone()),
            // Objects created with generateName were reserved before they had a name: a new
            // object of that kind in that namespace settles the oldest such reservation.
            false if first_sight => {
                let unnamed = format!("{}~", object_key(&resource, namespace, ""));
                s.reservations
                    .iter()
                    .filter(|(k, _)| k.starts_with(&unnamed))
                    .min_by_key(|(_, r)| r.expires)
                    .map(|(k, _)| k.clone())
            }
            false => None,
        };
        if let Some(r) = reserved_for.and_then(|k| s.reservations.remove(&k)) {
            apply(&mut s.reserved, &r.tenant, &r.charges, -1);
        }
        s.insert_observed(&key, tenant.clone(), &charges);
        if kind == "Ingress" {
            let hosts: Vec<String> = ingress_hosts(object)
                .into_iter()
                .map(str::to_string)
                .collect();
            for h in &hosts {
                s.hosts.entry(h.clone()).or_insert_with(|| tenant.clone());
            }
            s.host_keys.insert(hash, hosts);
        }
        Ok(())
    }

    /// Removes an object that was deleted.
    pub fn forget(&self, key: &str) {
        self.forget_hash(key_hash(key));
    }

    /// Removes an object by its key hash (see [`key_hash`]).
    pub fn forget_hash(&self, hash: u64) {
        let mut s = self.state();
        if let Some(old) = s.objects.remove(&hash) {
            s.count(&old, -1);
        }
        if let Some(hosts) = s.host_keys.remove(&hash) {
            for h in hosts {
                s.hosts.remove(&h);
            }
        }
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
            if let Some(r) = s.reservations.remove(&k) {
                apply(&mut s.reserved, &r.tenant, &r.charges, -1);
            }
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

    /// Drops a reservation (the create was denied).
    pub fn release(&self, key: &str) {
        let mut s = self.state();
        if let Some(r) = s.reservations.remove(key) {
            apply(&mut s.reserved, &r.tenant, &r.charges, -1);
        }
    }

    /// Turns a reservation into observed usage (no cluster will ever report the object).
    pub fn settle(&self, key: &str) {
        let mut s = self.state();
        if let Some(r) = s.reservations.remove(key) {
            apply(&mut s.reserved, &r.tenant, &r.charges, -1);
            s.insert_observed(key, r.tenant, &r.charges);
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
    pub fn record(&self, key: &str, tenant: &Arc<str>, charges: Charges) {
        self.state().insert_observed(key, tenant.clone(), &charges);
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
    fn used(&self, tenant: &str, resource: &str) -> i64 {
        let s = self.ledger.state();
        if let Some((shared_tenant, reserved)) = &self.shared
            && &**shared_tenant == tenant
        {
            let observed = s
                .observed
                .get(tenant)
                .and_then(|c| c.get(resource))
                .copied()
                .unwrap_or(0);
            return observed + reserved.get(resource).copied().unwrap_or(0);
        }
        let get = |m: &HashMap<Arc<str>, HashMap<String, i64>>| {
            m.get(tenant)
                .and_then(|c| c.get(resource))
                .copied()
                .unwrap_or(0)
        };
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
        get(&s.observed) + get(&s.reserved) - own
    }

    fn host_holder(&self, host: &str) -> Option<Arc<str>> {
        host_covered(&self.ledger.state().hosts, host).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn directory() -> Directory {
        tenantry_tenancy::embedded::directory().unwrap()
    }

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
        assert_eq!(ledger.view(None).used("acme", "pods"), 2);
        assert_eq!(ledger.view(Some("pods/acme-dev/a")).used("acme", "pods"), 1);
        ledger.release("pods/acme-dev/a");
        assert_eq!(ledger.view(None).used("acme", "pods"), 1);
    }

    #[test]
    fn observing_the_object_replaces_its_reservation() {
        let d = directory();
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
        ledger.observe(&d, &pod).unwrap();
        assert_eq!(ledger.view(None).used("acme", "pods"), 1);
        assert_eq!(ledger.view(None).used("acme", "requests.cpu"), 1000);
        assert_eq!(ledger.reservations(), 0);
        ledger.observe(&d, &pod).unwrap();
        assert_eq!(
            ledger.view(None).used("acme", "pods"),
            1,
            "re-observing does not double count"
        );
        ledger.forget("pods/acme-dev/a");
        assert_eq!(ledger.view(None).used("acme", "pods"), 0);
    }

    #[test]
    fn an_unnamed_reservation_settles_when_a_new_object_appears() {
        let d = directory();
        let ledger = Ledger::new();
        let acme: Arc<str> = "acme".into();
        ledger.reserve(
            "pods/acme-dev/~uid-1",
            &acme,
            vec![("pods".into(), 1)],
            Duration::from_secs(30),
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-x7k2p", "namespace": "acme-dev"}, "spec": {}});
        ledger.observe(&d, &pod).unwrap();
        assert_eq!(ledger.reservations(), 0);
        assert_eq!(
            ledger.view(None).used("acme", "pods"),
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
        assert_eq!(ledger.view(None).used("acme", "pods"), 1);
    }
}
