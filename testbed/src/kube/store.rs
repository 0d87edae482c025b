//! The in-memory object store: one global resourceVersion counter, an event log for watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// `(group, plural)`: objects of all versions of a resource share storage (no conversion).
pub type ResKey = (String, String);
/// `(namespace, name)`; namespace is empty for cluster-scoped objects.
pub type ObjKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as recorded for watchers.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub res: ResKey,
    pub etype: EventType,
    pub object: Value,
    /// The object before the change (for selector transitions).
    pub old: Option<Value>,
}

/// Everything the server stores; guarded by one mutex.
#[derive(Debug)]
pub struct State {
    pub rv: u64,
    pub objects: BTreeMap<ResKey, BTreeMap<ObjKey, Value>>,
    pub log: VecDeque<Arc<Event>>,
    pub log_cap: usize,
    /// The oldest resourceVersion a watch may start from.
    pub compacted_rv: u64,
    pub tx: broadcast::Sender<Arc<Event>>,
}

pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The string at JSON `pointer` (`/roleRef/name`), if there is one.
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn obj_key(obj: &Value) -> ObjKey {
    (
        meta_str(obj, "namespace").to_string(),
        meta_str(obj, "name").to_string(),
    )
}

impl State {
    pub fn new(log_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            log_cap: log_cap.max(1),
            compacted_rv: 1,
            tx,
        }
    }

    pub fn get(&self, res: &ResKey, key: &ObjKey) -> Option<&Value> {
        self.objects.get(res).and_then(|m| m.get(key))
    }

    pub fn list(&self, res: &ResKey, ns: Option<&str>) -> Vec<&Value> {
        self.objects
            .get(res)
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, v)| v)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, res: &ResKey, etype: EventType, object: Value, old: Option<Value>) {
        let ev = Arc::new(Event {
            rv: self.rv,
            res: res.clone(),
            etype,
            object,
            old,
        });
        self.log.push_back(ev.clone());
        while self.log.len() > self.log_cap {
            if let Some(e) = self.log.pop_front() {
                self.compacted_rv = e.rv;
            }
        }
        // Nobody listening is fine.
        let _ = self.tx.send(ev);
    }

    /// Stores a new object, stamping uid, resourceVersion, creationTimestamp and generation.
    pub fn insert(&mut self, res: &ResKey, mut obj: Value, generation: bool) -> Value {
        let rv = self.next_rv();
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(now());
        if generation {
            meta["generation"] = json!(1);
        }
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        self.objects
            .entry(res.clone())
            .or_default()
            .insert(obj_key(&obj), obj.clone());
        self.record(res, EventType::Added, obj.clone(), None);
        obj
    }

    /// Replaces a stored object with a new resourceVersion.
    pub fn replace(&mut self, res: &ResKey, mut obj: Value) -> Value {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = obj_key(&obj);
        let old = self
            .objects
            .entry(res.clone())
            .or_default()
            .insert(key, obj.clone());
        self.record(res, EventType::Modified, obj.clone(), old);
        obj
    }

    /// Removes an object for good, emitting DELETED.
    pub fn remove(&mut self, res: &ResKey, key: &ObjKey) -> Option<Value> {
        let mut obj = self.objects.get_mut(res)?.remove(key)?;
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(res, EventType::Deleted, obj.clone(), None);
        Some(obj)
    }

    /// Every stored object with its resource key (for garbage collection and namespace deletion).
    pub fn all(&self) -> Vec<(ResKey, ObjKey, &Value)> {
        self.objects
            .iter()
            .flat_map(|(r, m)| m.iter().map(move |(k, v)| (r.clone(), k.clone(), v)))
            .collect()
    }
}
