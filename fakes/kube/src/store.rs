//! The object store: every object of every kind under one global resourceVersion
//! counter (etcd's revision is cluster-wide, so RVs of different kinds interleave),
//! plus the event history watches replay from and the faults tests inject.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::kinds::ResourceKind;

/// `(namespace, name)`; the namespace is `""` for cluster-scoped kinds.
pub type ObjectKey = (String, String);
/// `(group, resource)`: one object set however many versions serve it.
pub type KindKey = (String, String);

/// One change, as the watch cache keeps it (`watch_cache.go` `watchCacheEvent`): the
/// object after the change (for a deletion, its last state stamped with the deletion RV)
/// and the object before it, so a selector can turn leaving objects into DELETED.
#[derive(Debug)]
pub struct StoredEvent {
    pub rv: u64,
    pub kind: KindKey,
    pub key: ObjectKey,
    pub object: Arc<Value>,
    pub previous: Option<Arc<Value>>,
    pub deleted: bool,
}

/// A fault injected on one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindFault {
    /// Every request for the kind gets the RBAC 403 Status.
    Forbidden,
    /// The kind is gone from discovery and its paths 404, as when a CRD is not installed.
    Absent,
    /// Requests for the kind get 429 TooManyRequests with `Retry-After` (API priority and
    /// fairness rejecting a request, `apierrors.NewTooManyRequests`). Open watches go on.
    Throttled { retry_after: u64 },
}

/// The field manager of objects written without `?fieldManager=`: what
/// `kubectl apply` (client-side) records, the commonest writer of hand-made objects.
pub const DEFAULT_FIELD_MANAGER: &str = "kubectl-client-side-apply";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("no served kind {kind} in {api_version}")]
    UnknownKind { api_version: String, kind: String },
    #[error("no {kind} {namespace}/{name}")]
    NotFound { kind: String, namespace: String, name: String },
    #[error("invalid JSON pointer {0} for this object")]
    BadPointer(String),
}

pub(crate) struct Inner {
    pub kinds: Vec<ResourceKind>,
    pub rv: u64,
    /// History holds exactly the events with RV in (compacted_rv, rv].
    pub compacted_rv: u64,
    pub objects: HashMap<KindKey, BTreeMap<ObjectKey, Arc<Value>>>,
    pub history: Vec<Arc<StoredEvent>>,
    pub faults: HashMap<KindKey, KindFault>,
    pub down: bool,
    /// Bumped by `drop_watches`: a watch started under an older generation ends.
    pub drop_generation: u64,
    next_uid: u64,
}

/// Shared state; every method takes the lock briefly, so all are safe while serving.
pub struct Store {
    inner: Mutex<Inner>,
    /// Pulsed on every change (event, fault, drop, down) to wake watch streams.
    pulse: watch::Sender<u64>,
}

pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), so no date crate is needed.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

impl Inner {
    pub fn kind_for(&self, api_version: &str, kind: &str) -> Option<&ResourceKind> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.kinds.iter().find(|k| k.group == group && k.kind == kind && k.serves(version))
    }

    pub fn kind_by_resource(&self, group: &str, version: &str, resource: &str) -> Option<&ResourceKind> {
        self.kinds.iter().find(|k| k.group == group && k.resource == resource && k.serves(version))
    }

    fn record(
        &mut self,
        kind: KindKey,
        key: ObjectKey,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
        deleted: bool,
    ) {
        let rv = self.rv;
        self.history.push(Arc::new(StoredEvent { rv, kind, key, object, previous, deleted }));
    }

    pub(crate) fn upsert(&mut self, mut object: Value, manager: &str) -> Result<Option<u64>, StoreError> {
        let api_version =
            object.get("apiVersion").and_then(Value::as_str).ok_or(StoreError::MissingField("apiVersion"))?;
        let kind_name = object.get("kind").and_then(Value::as_str).ok_or(StoreError::MissingField("kind"))?;
        let kind = self.kind_for(api_version, kind_name).ok_or_else(|| StoreError::UnknownKind {
            api_version: api_version.to_owned(),
            kind: kind_name.to_owned(),
        })?;
        let (kind_key, namespaced) = ((kind.group.clone(), kind.resource.clone()), kind.namespaced);
        let meta =
            object.get_mut("metadata").and_then(Value::as_object_mut).ok_or(StoreError::MissingField("metadata"))?;
        let name =
            meta.get("name").and_then(Value::as_str).ok_or(StoreError::MissingField("metadata.name"))?.to_owned();
        let namespace = if namespaced {
            meta.get("namespace").and_then(Value::as_str).unwrap_or("default").to_owned()
        } else {
            meta.remove("namespace");
            String::new()
        };
        if namespaced {
            meta.insert("namespace".into(), json!(namespace));
        }
        let key = (namespace, name);
        let previous = self.objects.get(&kind_key).and_then(|m| m.get(&key)).cloned();
        let old_meta = previous.as_ref().and_then(|p| p.get("metadata"));
        // uid and creationTimestamp are set once by the server and kept on update.
        for field in ["uid", "creationTimestamp"] {
            if let Some(v) = old_meta.and_then(|m| m.get(field)) {
                meta.insert(field.into(), v.clone());
            }
        }
        if !meta.contains_key("uid") {
            self.next_uid += 1;
            meta.insert("uid".into(), json!(format!("00000000-0000-4000-8000-{:012x}", self.next_uid)));
        }
        meta.entry("creationTimestamp").or_insert_with(|| json!(now_rfc3339()));
        // generation and managedFields are the server's: an update starts from the stored
        // ones (a writer may replace managedFields explicitly, as the apiserver allows).
        match old_meta.and_then(|m| m.get("generation")) {
            Some(g) => {
                meta.insert("generation".into(), g.clone());
            }
            None => {
                meta.entry("generation").or_insert(json!(1));
            }
        }
        if !meta.contains_key("managedFields")
            && let Some(mf) = old_meta.and_then(|m| m.get("managedFields"))
        {
            meta.insert("managedFields".into(), mf.clone());
        }
        // An update that changes nothing is a no-op in the apiserver: no new RV, no event,
        // and managedFields keep their timestamps.
        if let Some(prev) = &previous {
            meta.insert("resourceVersion".into(), prev["metadata"]["resourceVersion"].clone());
            if **prev == object {
                return Ok(None);
            }
            // Strategies bump metadata.generation when the spec changes (for CRDs: anything
            // but metadata and status, apiextensions-apiserver `customresource/strategy.go`).
            if spec_changed(prev, &object) {
                let next = prev["metadata"]["generation"].as_u64().unwrap_or(0) + 1;
                object["metadata"]["generation"] = json!(next);
            }
        }
        set_managed_fields(&mut object, manager);
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let object = Arc::new(object);
        self.objects.entry(kind_key.clone()).or_default().insert(key.clone(), object.clone());
        self.record(kind_key, key, object, previous, false);
        Ok(Some(self.rv))
    }

    fn delete(&mut self, kind_key: &KindKey, key: &ObjectKey) -> Option<u64> {
        let previous = self.objects.get_mut(kind_key)?.remove(key)?;
        self.rv += 1;
        let mut last = (*previous).clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(kind_key.clone(), key.clone(), Arc::new(last), Some(previous), true);
        Some(self.rv)
    }

    /// The objects of a kind as they were at `rv` (≥ compacted_rv), rebuilt by undoing
    /// later events; paged LISTs read every page at the first page's revision, as etcd does.
    pub fn objects_at(&self, kind_key: &KindKey, rv: u64) -> BTreeMap<ObjectKey, Arc<Value>> {
        let mut objects = self.objects.get(kind_key).cloned().unwrap_or_default();
        let start = self.history.partition_point(|e| e.rv <= rv);
        for event in self.history[start..].iter().rev().filter(|e| &e.kind == kind_key) {
            match &event.previous {
                Some(prev) => objects.insert(event.key.clone(), prev.clone()),
                None => objects.remove(&event.key),
            };
        }
        objects
    }
}

impl Store {
    pub fn new(kinds: Vec<ResourceKind>) -> Self {
        let inner = Inner {
            kinds,
            rv: 1,
            compacted_rv: 1,
            objects: HashMap::new(),
            history: Vec::new(),
            faults: HashMap::new(),
            down: false,
            drop_generation: 0,
            next_uid: 0,
        };
        Store { inner: Mutex::new(inner), pulse: watch::channel(0).0 }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.pulse.subscribe()
    }

    fn wake(&self) {
        self.pulse.send_modify(|n| *n += 1);
    }

    /// Creates or updates an object (identified by apiVersion, kind, namespace, name).
    /// Returns its new resourceVersion, or `None` when nothing changed.
    /// The writer is [`DEFAULT_FIELD_MANAGER`]; see [`Store::upsert_as`].
    pub fn upsert(&self, object: Value) -> Result<Option<u64>, StoreError> {
        self.upsert_as(object, DEFAULT_FIELD_MANAGER)
    }

    /// [`Store::upsert`] by the field manager `manager`, whose `managedFields` entry it sets.
    pub fn upsert_as(&self, object: Value, manager: &str) -> Result<Option<u64>, StoreError> {
        let rv = self.lock().upsert(object, manager)?;
        self.wake();
        Ok(rv)
    }

    /// Upserts many objects under one lock; stops at the first invalid one.
    pub fn bulk_load(&self, objects: Vec<Value>) -> Result<usize, StoreError> {
        self.bulk_load_as(objects, DEFAULT_FIELD_MANAGER)
    }

    /// [`Store::bulk_load`] by the field manager `manager`.
    pub fn bulk_load_as(&self, objects: Vec<Value>, manager: &str) -> Result<usize, StoreError> {
        let mut changed = 0;
        let result = {
            let mut inner = self.lock();
            objects.into_iter().try_for_each(|o| {
                changed += usize::from(inner.upsert(o, manager)?.is_some());
                Ok(())
            })
        };
        self.wake();
        result.map(|()| changed)
    }

    /// Deletes an object; returns the deletion's RV, or `None` if it did not exist.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<u64>, StoreError> {
        let rv = {
            let mut inner = self.lock();
            let k = inner.kind_for(api_version, kind).ok_or_else(|| StoreError::UnknownKind {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            })?;
            let ns = if k.namespaced { namespace } else { "" };
            let kind_key = (k.group.clone(), k.resource.clone());
            inner.delete(&kind_key, &(ns.to_owned(), name.to_owned()))
        };
        self.wake();
        Ok(rv)
    }

    /// Sets one field of one stored object (`pointer` is a JSON pointer such as
    /// `/status/containerStatuses/0/restartCount`; the last step may be a new key) and
    /// writes it back as `manager`: one new RV and one MODIFIED event, nothing else changes.
    #[allow(clippy::too_many_arguments)]
    pub fn set_field(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        pointer: &str,
        value: Value,
        manager: &str,
    ) -> Result<Option<u64>, StoreError> {
        let rv = {
            let mut inner = self.lock();
            let k = inner.kind_for(api_version, kind).ok_or_else(|| StoreError::UnknownKind {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            })?;
            let ns = if k.namespaced { namespace } else { "" };
            let kind_key = (k.group.clone(), k.resource.clone());
            let not_found =
                || StoreError::NotFound { kind: kind.to_owned(), namespace: ns.to_owned(), name: name.to_owned() };
            let stored = inner.objects.get(&kind_key).and_then(|m| m.get(&(ns.to_owned(), name.to_owned())));
            let mut object = (**stored.ok_or_else(not_found)?).clone();
            set_pointer(&mut object, pointer, value)?;
            inner.upsert(object, manager)?
        };
        self.wake();
        Ok(rv)
    }

    /// Forgets all history up to now, as etcd compaction does: watches and continue
    /// tokens from an older RV get 410 Expired.
    pub fn compact(&self) -> u64 {
        let mut inner = self.lock();
        inner.compacted_rv = inner.rv;
        inner.history.clear();
        inner.rv
    }

    /// Ends every open watch stream cleanly (no ERROR event), like an apiserver restart
    /// or a load balancer idle cut.
    pub fn drop_watches(&self) {
        self.lock().drop_generation += 1;
        self.wake();
    }

    /// Down: every API request gets 503 and open watches end.
    pub fn set_down(&self, down: bool) {
        let mut inner = self.lock();
        inner.down = down;
        if down {
            inner.drop_generation += 1;
        }
        drop(inner);
        self.wake();
    }

    /// Injects (`Some`) or clears (`None`) a fault on the kind `resource` of `group`.
    /// `Absent` ends open watches of the kind, as deleting a CRD does; `Forbidden`
    /// only affects new requests.
    pub fn set_fault(&self, group: &str, resource: &str, fault: Option<KindFault>) {
        let key = (group.to_owned(), resource.to_owned());
        let mut inner = self.lock();
        match fault {
            Some(f) => inner.faults.insert(key, f),
            None => inner.faults.remove(&key),
        };
        drop(inner);
        self.wake();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The served kinds.
    pub fn kinds(&self) -> Vec<ResourceKind> {
        self.lock().kinds.clone()
    }
}

/// Whether anything but metadata and status differs.
fn spec_changed(before: &Value, after: &Value) -> bool {
    let rest = |v: &Value| -> Vec<(String, Value)> {
        let map = v.as_object().into_iter().flat_map(|m| m.iter());
        map.filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    rest(before) != rest(after)
}

/// The apiserver's field manager for an Update: one entry per (manager, operation),
/// newest last (`fieldmanager/internal/managedfieldsupdater.go`). The fake does not
/// compute field sets, so `fieldsV1` is empty.
fn set_managed_fields(object: &mut Value, manager: &str) {
    let api_version = object["apiVersion"].clone();
    let meta = &mut object["metadata"];
    let mut entries: Vec<Value> = meta["managedFields"].as_array().cloned().unwrap_or_default();
    entries.retain(|e| !(e["manager"] == manager && e["operation"] == "Update"));
    entries.push(json!({
        "manager": manager, "operation": "Update", "apiVersion": api_version,
        "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": {},
    }));
    meta["managedFields"] = Value::Array(entries);
}

/// RFC 6901 assignment: every step but the last must exist; the last may add a key
/// or replace an array element.
fn set_pointer(object: &mut Value, pointer: &str, value: Value) -> Result<(), StoreError> {
    let bad = || StoreError::BadPointer(pointer.to_owned());
    let (parent, last) = pointer.rsplit_once('/').ok_or_else(bad)?;
    let last = last.replace("~1", "/").replace("~0", "~");
    match object.pointer_mut(parent).ok_or_else(bad)? {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(items) => {
            let slot = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)).ok_or_else(bad)?;
            *slot = value;
        }
        _ => return Err(bad()),
    }
    Ok(())
}
