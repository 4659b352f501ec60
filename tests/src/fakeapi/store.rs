//! The objects, the global resourceVersion counter, the event log and its compaction: the
//! part of an apiserver + etcd that list, watch and optimistic concurrency depend on.
//!
//! Every write bumps one cluster-wide counter (etcd's revision) and appends an event; a watch
//! from resourceVersion `N` replays the events after `N`. [`Store::compact`] drops the log
//! (like etcd's compaction plus the watch cache's window moving on): a watch or an exact list
//! from an older resourceVersion then gets `410 Expired`, so clients must re-list.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::resource::Resource;
use super::selector::Selector;
use super::status::ApiError;

/// An object's identity. `namespace` is `""` for cluster-scoped resources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub resource: Resource,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: Resource, namespace: Option<&str>, name: &str) -> Key {
        Key {
            resource,
            namespace: namespace.unwrap_or("").to_owned(),
            name: name.to_owned(),
        }
    }
}

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

/// One write, as watchers see it.
#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    key: Key,
    kind: EventType,
    object: Value,
    /// The object before a MODIFIED (selectors turn it into ADDED or DELETED for a watch
    /// whose selector it started or stopped matching).
    old: Option<Value>,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but `status` (for resources with a status subresource).
    Main,
    /// The `status` subresource: only `status`.
    Status,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub object: Value,
    /// The object did not exist before (a PUT that created: 201).
    pub created: bool,
}

/// An open watch: the last resourceVersion its client has seen everything up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub rv: u64,
    pub selector: Selector,
    /// The stream must end (it sent an ERROR event).
    pub done: bool,
}

/// How a watch starts (the query parameters that matter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStart {
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub send_initial_events: bool,
    pub allow_bookmarks: bool,
    pub selector: Selector,
}

/// Events kept before the oldest half is compacted away, as etcd's periodic compaction and
/// the watch cache's bounded window do (a long test then sees real `410`s too).
pub const EVENT_WINDOW: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// The objects as of `compacted`, for exact lists at a retained older version.
    base: BTreeMap<Key, Value>,
    /// The oldest resourceVersion still served: events after it are in `events`.
    compacted: u64,
    events: Vec<Event>,
    next_uid: u64,
    /// At most this many events are kept ([`EVENT_WINDOW`]).
    window: usize,
    /// `creationTimestamp` of new objects (set by the caller; sans-IO).
    pub now: String,
}

impl Store {
    pub fn new() -> Store {
        Store::with_window(EVENT_WINDOW)
    }

    /// A store that keeps at most `window` events (at least 2).
    pub fn with_window(window: usize) -> Store {
        Store {
            now: "1970-01-01T00:00:00Z".to_owned(),
            window: window.max(2),
            ..Store::default()
        }
    }

    /// The current (newest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    pub fn get(&self, key: &Key) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key.resource, &key.name))
    }

    /// Objects of `resource` (in `namespace`, or all), by namespace and name.
    pub fn objects(&self, resource: Resource, namespace: Option<&str>) -> Vec<Value> {
        select(&self.objects, resource, namespace)
    }

    /// A list (`NodeList`, `LeaseList`) with the real list semantics of `resourceVersion` and
    /// `resourceVersionMatch`: unset → the newest state; `0` or `NotOlderThan` → the newest
    /// state if it is at least that new (else 504, as the real one does after waiting);
    /// `Exact` → the state at exactly that version, `410 Expired` if it was compacted.
    pub fn list(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        resource_version: Option<&str>,
        version_match: Option<&str>,
        selector: &Selector,
    ) -> Result<Value, ApiError> {
        let rv = parse_rv(resource_version)?;
        let (items, at) = match (rv, version_match) {
            (None, Some(m)) => {
                return Err(invalid_options(&format!(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"{m}\" is forbidden unless resourceVersion is provided"
                )));
            }
            (None, None) => (self.objects(resource, namespace), self.rv),
            (Some(0), Some("Exact")) => {
                return Err(invalid_options(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            (Some(n), None | Some("NotOlderThan")) => {
                if n > self.rv {
                    return Err(ApiError::too_large_resource_version(n, self.rv));
                }
                (self.objects(resource, namespace), self.rv)
            }
            (Some(n), Some("Exact")) => {
                if n > self.rv {
                    return Err(ApiError::too_large_resource_version(n, self.rv));
                }
                if n < self.compacted {
                    return Err(ApiError::expired(n, self.compacted));
                }
                (select(&self.snapshot_at(n), resource, namespace), n)
            }
            (Some(_), Some(other)) => {
                return Err(invalid_options(&format!(
                    "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\", \"\""
                )));
            }
        };
        let items: Vec<Value> = items.into_iter().filter(|o| selector.matches(o)).collect();
        Ok(json!({
            "kind": resource.list_kind(),
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": at.to_string()},
            "items": items,
        }))
    }

    /// The objects as they were at `rv` (`compacted <= rv <= current`).
    fn snapshot_at(&self, rv: u64) -> BTreeMap<Key, Value> {
        let mut objects = self.base.clone();
        for event in self.events.iter().take_while(|e| e.rv <= rv) {
            match event.kind {
                EventType::Deleted => {
                    objects.remove(&event.key);
                }
                _ => {
                    objects.insert(event.key.clone(), event.object.clone());
                }
            }
        }
        objects
    }

    /// POST: a new object; `409 AlreadyExists` if the name is taken.
    pub fn create(&mut self, key: &Key, mut object: Value) -> Result<Value, ApiError> {
        check_identity(key, &mut object)?;
        if self.objects.contains_key(key) {
            return Err(ApiError::already_exists(key.resource, &key.name));
        }
        if meta_str(&object, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::invalid(
                key.resource,
                &key.name,
                "metadata.resourceVersion: Invalid value: resourceVersion should not be set on objects to be created",
            ));
        }
        Ok(self.insert_new(key, object))
    }

    /// PUT: replaces `part` of the object, if `metadata.resourceVersion` is the stored one
    /// (`409 Conflict` otherwise). Leases also need it set (`422`), Nodes may omit it
    /// (unconditional update), as the real strategies say. A PUT of a missing Lease creates it
    /// (`AllowCreateOnUpdate`), of a missing Node is `404`.
    pub fn update(
        &mut self,
        key: &Key,
        part: Part,
        mut object: Value,
    ) -> Result<Written, ApiError> {
        check_identity(key, &mut object)?;
        let sent_rv = meta_str(&object, "resourceVersion")
            .filter(|rv| !rv.is_empty())
            .map(str::to_owned);
        let Some(old) = self.objects.get(key).cloned() else {
            let creatable = key.resource == Resource::Leases && part == Part::Main;
            if !creatable || sent_rv.is_some() {
                return Err(ApiError::not_found(key.resource, &key.name));
            }
            return Ok(Written {
                object: self.insert_new(key, object),
                created: true,
            });
        };
        match sent_rv {
            None if key.resource == Resource::Leases => {
                return Err(ApiError::invalid(
                    key.resource,
                    &key.name,
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ));
            }
            None => {}
            Some(rv) if Some(rv.as_str()) != meta_str(&old, "resourceVersion") => {
                return Err(ApiError::conflict(key.resource, &key.name));
            }
            Some(_) => {}
        }
        Ok(Written {
            object: self.replace(key, &old, part, object),
            created: false,
        })
    }

    /// PATCH: `patched` is the stored object with the patch applied. A patch that sets
    /// `metadata.resourceVersion` is a precondition (`409 Conflict` if it differs).
    pub fn patch(&mut self, key: &Key, part: Part, patched: Value) -> Result<Value, ApiError> {
        let old = self.get(key)?;
        if meta_str(&patched, "resourceVersion") != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(key.resource, &key.name));
        }
        let mut patched = patched;
        check_identity(key, &mut patched)?;
        Ok(self.replace(key, &old, part, patched))
    }

    /// DELETE: the object as it was deleted (with the deletion's resourceVersion).
    pub fn delete(&mut self, key: &Key) -> Result<Value, ApiError> {
        let Some(mut object) = self.objects.remove(key) else {
            return Err(ApiError::not_found(key.resource, &key.name));
        };
        self.rv += 1;
        set_meta(
            &mut object,
            "resourceVersion",
            Value::from(self.rv.to_string()),
        );
        self.record(key, EventType::Deleted, object.clone(), None);
        Ok(object)
    }

    /// Creates or replaces an object whatever its resourceVersion (the test's control surface,
    /// standing in for kubelet registering its Node).
    pub fn upsert(&mut self, key: &Key, mut object: Value) -> Result<Value, ApiError> {
        check_identity(key, &mut object)?;
        match self.objects.get(key).cloned() {
            None => Ok(self.insert_new(key, object)),
            Some(old) => {
                keep_server_fields(&old, &mut object);
                Ok(self.commit(key, &old, object))
            }
        }
    }

    /// Makes every resourceVersion handed out so far too old: watches and exact lists from
    /// them get `410 Expired`, open watches end with that error.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.compacted = self.rv;
        self.base = self.objects.clone();
        self.events.clear();
    }

    /// Starts a watch with the real semantics: `resourceVersion` unset or `0` → synthetic
    /// `ADDED` events for every object, then changes; `N` → every change after `N`, or one
    /// `ERROR` event (410 Expired, HTTP status still 200) if `N` was compacted;
    /// `sendInitialEvents=true` (a streaming list; needs `resourceVersionMatch=NotOlderThan`
    /// and bookmarks) → `ADDED` for every object, then a `BOOKMARK` annotated
    /// `k8s.io/initial-events-end`. Returns the watch and its first events.
    pub fn watch(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        start: &WatchStart,
    ) -> Result<(Watch, Vec<Value>), ApiError> {
        let rv = parse_rv(start.resource_version.as_deref())?;
        let mut watch = Watch {
            resource,
            namespace: namespace.map(str::to_owned),
            rv: self.rv,
            selector: start.selector.clone(),
            done: false,
        };
        let added = |store: &Store| -> Vec<Value> {
            store
                .objects(resource, namespace)
                .into_iter()
                .filter(|o| start.selector.matches(o))
                .map(|o| event_json(EventType::Added, o))
                .collect()
        };
        if start.send_initial_events {
            if start.resource_version_match.as_deref() != Some("NotOlderThan") {
                return Err(invalid_options(
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !start.allow_bookmarks {
                return Err(invalid_options(
                    "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
            if let Some(n) = rv.filter(|n| *n > self.rv) {
                return Err(ApiError::too_large_resource_version(n, self.rv));
            }
            let mut events = added(self);
            let mut end = self.bookmark(&watch);
            end["object"]["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            events.push(end);
            return Ok((watch, events));
        }
        if let Some(m) = &start.resource_version_match {
            return Err(invalid_options(&format!(
                "resourceVersionMatch: Forbidden: resourceVersionMatch \"{m}\" is forbidden for watch"
            )));
        }
        match rv {
            None | Some(0) => Ok((watch, added(self))),
            Some(n) if n < self.compacted => {
                watch.done = true;
                Ok((
                    watch,
                    vec![error_event(&ApiError::expired(n, self.compacted))],
                ))
            }
            Some(n) if n > self.rv => Err(ApiError::too_large_resource_version(n, self.rv)),
            Some(n) => {
                watch.rv = n;
                let events = self.poll(&mut watch);
                Ok((watch, events))
            }
        }
    }

    /// The events `watch` has not seen yet (or, if the log was compacted past it, the
    /// `ERROR` that ends it), advancing it to the current resourceVersion.
    pub fn poll(&self, watch: &mut Watch) -> Vec<Value> {
        if watch.done {
            return Vec::new();
        }
        if watch.rv < self.compacted {
            watch.done = true;
            return vec![error_event(&ApiError::expired(watch.rv, self.compacted))];
        }
        let events = self
            .events
            .iter()
            .filter(|e| e.rv > watch.rv)
            .filter(|e| e.key.resource == watch.resource)
            .filter(|e| {
                watch
                    .namespace
                    .as_deref()
                    .is_none_or(|ns| ns == e.key.namespace)
            })
            .filter_map(|e| {
                let now = watch.selector.matches(&e.object);
                let before = match (&e.kind, &e.old) {
                    (EventType::Modified, Some(old)) => watch.selector.matches(old),
                    _ => now,
                };
                let kind = match (e.kind, before, now) {
                    (_, false, false) => return None,
                    (EventType::Modified, false, true) => EventType::Added,
                    (EventType::Modified, true, false) => EventType::Deleted,
                    (kind, _, _) => kind,
                };
                Some(event_json(kind, e.object.clone()))
            })
            .collect();
        watch.rv = self.rv;
        events
    }

    /// A `BOOKMARK` event at the resourceVersion `watch` has seen everything up to.
    pub fn bookmark(&self, watch: &Watch) -> Value {
        json!({
            "type": "BOOKMARK",
            "object": {
                "kind": watch.resource.kind(),
                "apiVersion": watch.resource.api_version(),
                "metadata": {"resourceVersion": watch.rv.to_string()},
            },
        })
    }

    fn insert_new(&mut self, key: &Key, mut object: Value) -> Value {
        self.rv += 1;
        self.next_uid += 1;
        set_meta(
            &mut object,
            "uid",
            Value::from(format!("00000000-0000-4000-8000-{:012x}", self.next_uid)),
        );
        set_meta(
            &mut object,
            "resourceVersion",
            Value::from(self.rv.to_string()),
        );
        set_meta(
            &mut object,
            "creationTimestamp",
            Value::from(self.now.clone()),
        );
        self.objects.insert(key.clone(), object.clone());
        self.record(key, EventType::Added, object.clone(), None);
        object
    }

    /// Replaces `part` of `old` with `new`'s and commits it.
    fn replace(&mut self, key: &Key, old: &Value, part: Part, new: Value) -> Value {
        let mut object = match part {
            Part::Status => {
                let mut object = old.clone();
                object["status"] = new.get("status").cloned().unwrap_or(json!({}));
                object
            }
            Part::Main => {
                let mut object = new;
                if key.resource.has_status() {
                    match old.get("status") {
                        Some(status) => object["status"] = status.clone(),
                        None => {
                            if let Some(map) = object.as_object_mut() {
                                map.remove("status");
                            }
                        }
                    }
                }
                object
            }
        };
        keep_server_fields(old, &mut object);
        self.commit(key, old, object)
    }

    /// Stores `object` (with `old`'s resourceVersion) unless it equals `old`: like the real
    /// apiserver, a write that changes nothing keeps the resourceVersion and emits no event.
    fn commit(&mut self, key: &Key, old: &Value, mut object: Value) -> Value {
        if object == *old {
            return object;
        }
        self.rv += 1;
        set_meta(
            &mut object,
            "resourceVersion",
            Value::from(self.rv.to_string()),
        );
        self.objects.insert(key.clone(), object.clone());
        self.record(key, EventType::Modified, object.clone(), Some(old.clone()));
        object
    }

    fn record(&mut self, key: &Key, kind: EventType, object: Value, old: Option<Value>) {
        self.events.push(Event {
            rv: self.rv,
            key: key.clone(),
            kind,
            object,
            old,
        });
        if self.events.len() > self.window {
            // Drop the oldest half: watches from before the first kept event get 410.
            let cut = self.events.len() - self.window / 2;
            let oldest = self.events[cut - 1].rv;
            self.base = self.snapshot_at(oldest);
            self.events.drain(..cut);
            self.compacted = oldest;
        }
    }
}

fn select(
    objects: &BTreeMap<Key, Value>,
    resource: Resource,
    namespace: Option<&str>,
) -> Vec<Value> {
    objects
        .iter()
        .filter(|(k, _)| k.resource == resource)
        .filter(|(k, _)| namespace.is_none_or(|ns| ns == k.namespace))
        .map(|(_, v)| v.clone())
        .collect()
}

/// `{"type": …, "object": …}`
pub fn event_json(kind: EventType, object: Value) -> Value {
    json!({"type": kind.as_str(), "object": object})
}

/// The `ERROR` event a watch ends with.
pub fn error_event(error: &ApiError) -> Value {
    json!({"type": "ERROR", "object": error.status()})
}

/// `resourceVersion` as a number (`None` for unset or empty); `400` for anything else.
pub fn parse_rv(rv: Option<&str>) -> Result<Option<u64>, ApiError> {
    match rv {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "Invalid value: \"{s}\": resourceVersion: must be a non-negative integer"
            ))
        }),
    }
}

fn invalid_options(cause: &str) -> ApiError {
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("ListOptions.meta.k8s.io \"\" is invalid: {cause}"),
        details: None,
    }
}

/// Copies the fields the server owns (`uid`, `creationTimestamp`, `resourceVersion`) from
/// `old` into `object`, whatever the client sent.
fn keep_server_fields(old: &Value, object: &mut Value) {
    for field in ["uid", "creationTimestamp", "resourceVersion"] {
        match old.pointer(&format!("/metadata/{field}")) {
            Some(v) => set_meta(object, field, v.clone()),
            None => {
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove(field);
                }
            }
        }
    }
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

fn set_meta(object: &mut Value, field: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        meta[field] = value;
    }
}

/// The object's kind, apiVersion, name and namespace must match the URL's (filled in when
/// missing, `400` when different, `422` for a body that is no object).
fn check_identity(key: &Key, object: &mut Value) -> Result<(), ApiError> {
    let resource = key.resource;
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    for (field, want) in [
        ("kind", resource.kind()),
        ("apiVersion", resource.api_version()),
    ] {
        match map.get(field).and_then(Value::as_str) {
            None => {
                map.insert(field.to_owned(), Value::from(want));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the object ({got}) does not match the {field} on the URL ({want})"
                )));
            }
        }
    }
    match meta_str(object, "name") {
        None | Some("") => set_meta(object, "name", Value::from(key.name.clone())),
        Some(name) if name == key.name => {}
        Some(name) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                key.name
            )));
        }
    }
    if resource.namespaced() {
        match meta_str(object, "namespace") {
            None | Some("") => set_meta(object, "namespace", Value::from(key.namespace.clone())),
            Some(ns) if ns == key.namespace => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node_key(name: &str) -> Key {
        Key::new(Resource::Nodes, None, name)
    }

    fn lease_key(ns: &str, name: &str) -> Key {
        Key::new(Resource::Leases, Some(ns), name)
    }

    fn node(name: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn rv_of(object: &Value) -> u64 {
        object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    fn watch_from(store: &Store, rv: Option<u64>) -> (Watch, Vec<Value>) {
        store
            .watch(
                Resource::Nodes,
                None,
                &WatchStart {
                    resource_version: rv.map(|rv| rv.to_string()),
                    ..WatchStart::default()
                },
            )
            .unwrap()
    }

    #[test]
    fn a_watch_replays_every_change_after_its_version() {
        let mut store = Store::new();
        let n1 = store.upsert(&node_key("n1"), node("n1")).unwrap();
        let from = rv_of(&n1);
        store.upsert(&node_key("n2"), node("n2")).unwrap();
        store
            .patch(&node_key("n1"), Part::Main, {
                let mut n = store.get(&node_key("n1")).unwrap();
                n["metadata"]["annotations"] = json!({"a": "b"});
                n
            })
            .unwrap();
        store.delete(&node_key("n2")).unwrap();
        // A Lease write is not a Node event.
        store
            .create(&lease_key("ns", "l"), json!({"metadata": {"name": "l"}}))
            .unwrap();
        let (mut watch, events) = watch_from(&store, Some(from));
        assert_eq!(types(&events), ["ADDED", "MODIFIED", "DELETED"]);
        assert!(store.poll(&mut watch).is_empty());
        store.upsert(&node_key("n3"), node("n3")).unwrap();
        let events = store.poll(&mut watch);
        assert_eq!(types(&events), ["ADDED"]);
        assert_eq!(
            rv_of(&store.bookmark(&watch)["object"]),
            store.resource_version()
        );
        // Unset or 0: synthetic ADDED for what exists now.
        let (_, events) = watch_from(&store, None);
        assert_eq!(types(&events), ["ADDED", "ADDED"]);
        let (_, events) = watch_from(&store, Some(0));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn compaction_expires_watches_and_exact_lists() {
        let mut store = Store::new();
        store.upsert(&node_key("n1"), node("n1")).unwrap();
        let old = store.resource_version();
        let (mut open, _) = watch_from(&store, Some(old));
        store.compact();
        let compacted = store.resource_version();
        assert!(compacted > old);
        // The open watch ends with 410.
        let events = store.poll(&mut open);
        assert_eq!(types(&events), ["ERROR"]);
        assert_eq!(events[0]["object"]["code"], 410);
        assert_eq!(events[0]["object"]["reason"], "Expired");
        assert!(open.done);
        assert!(store.poll(&mut open).is_empty());
        // A new watch from before: one ERROR, done.
        let (watch, events) = watch_from(&store, Some(old));
        assert!(watch.done);
        assert_eq!(events[0]["object"]["code"], 410);
        // Exact lists: 410 before, the state at the version after.
        let e = store
            .list(
                Resource::Nodes,
                None,
                Some(&old.to_string()),
                Some("Exact"),
                &Selector::default(),
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason), (410, "Expired"));
        store.upsert(&node_key("n2"), node("n2")).unwrap();
        let at = store
            .list(
                Resource::Nodes,
                None,
                Some(&compacted.to_string()),
                Some("Exact"),
                &Selector::default(),
            )
            .unwrap();
        assert_eq!(at["items"].as_array().unwrap().len(), 1);
        assert_eq!(at["metadata"]["resourceVersion"], compacted.to_string());
        // NotOlderThan and unset: the newest state.
        for (rv, m) in [
            (None, None),
            (Some("0"), None),
            (Some("1"), Some("NotOlderThan")),
        ] {
            let list = store
                .list(Resource::Nodes, None, rv, m, &Selector::default())
                .unwrap();
            assert_eq!(list["items"].as_array().unwrap().len(), 2);
        }
        // Newer than anything: 504; a match without a version: 422.
        let e = store
            .list(
                Resource::Nodes,
                None,
                Some("999"),
                None,
                &Selector::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 504);
        let e = store
            .list(
                Resource::Nodes,
                None,
                None,
                Some("Exact"),
                &Selector::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        let e = store
            .list(Resource::Nodes, None, Some("x"), None, &Selector::default())
            .unwrap_err();
        assert_eq!(e.code, 400);
        // A watch from the compaction point itself is fine.
        let (watch, events) = watch_from(&store, Some(compacted));
        assert!(!watch.done);
        assert_eq!(types(&events), ["ADDED"]);
    }

    #[test]
    fn leases_have_optimistic_concurrency() {
        let mut store = Store::new();
        let key = lease_key("kube-system", "weft-reclaim");
        let lease = json!({"metadata": {"name": "weft-reclaim"}, "spec": {"holderIdentity": "a"}});
        let created = store.create(&key, lease.clone()).unwrap();
        assert_eq!(created["metadata"]["namespace"], "kube-system");
        assert_eq!(created["kind"], "Lease");
        assert_eq!(
            store.create(&key, lease.clone()).unwrap_err().reason,
            "AlreadyExists"
        );
        // Two routers read the same version; the first update wins, the second conflicts.
        let mut a = created.clone();
        a["spec"]["holderIdentity"] = json!("a2");
        let mut b = created.clone();
        b["spec"]["holderIdentity"] = json!("b");
        let won = store.update(&key, Part::Main, a).unwrap();
        assert!(!won.created);
        assert!(rv_of(&won.object) > rv_of(&created));
        let lost = store.update(&key, Part::Main, b).unwrap_err();
        assert_eq!((lost.code, lost.reason), (409, "Conflict"));
        // No resourceVersion: 422 for Leases.
        let e = store.update(&key, Part::Main, lease.clone()).unwrap_err();
        assert_eq!(e.code, 422);
        // PUT creates a missing Lease (without a version), 404 with one.
        let other = lease_key("kube-system", "other");
        let made = store
            .update(&other, Part::Main, json!({"metadata": {"name": "other"}}))
            .unwrap();
        assert!(made.created);
        let e = store
            .update(
                &lease_key("kube-system", "third"),
                Part::Main,
                json!({"metadata": {"name": "third", "resourceVersion": "3"}}),
            )
            .unwrap_err();
        assert_eq!(e.code, 404);
        // Names and namespaces must match the URL.
        let e = store
            .create(&lease_key("ns", "x"), json!({"metadata": {"name": "y"}}))
            .unwrap_err();
        assert_eq!(e.code, 400);
        let e = store
            .create(
                &lease_key("ns", "x"),
                json!({"metadata": {"name": "x", "namespace": "other"}}),
            )
            .unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            store.objects(Resource::Leases, Some("kube-system")).len(),
            2
        );
        assert_eq!(store.objects(Resource::Leases, Some("ns")).len(), 0);
    }

    #[test]
    fn status_and_main_resource_change_only_their_part() {
        let mut store = Store::new();
        let key = node_key("n1");
        store.upsert(&key, node("n1")).unwrap();
        let mut both = store.get(&key).unwrap();
        both["metadata"]["labels"] = json!({"x": "y"});
        both["status"]["conditions"] = json!([]);
        let main = store.patch(&key, Part::Main, both.clone()).unwrap();
        assert_eq!(main["metadata"]["labels"]["x"], "y");
        assert_eq!(main["status"]["conditions"][0]["type"], "Ready");
        let mut both = store.get(&key).unwrap();
        both["metadata"]["labels"] = json!({"x": "z"});
        both["status"]["conditions"] = json!([]);
        let status = store.patch(&key, Part::Status, both).unwrap();
        assert_eq!(status["metadata"]["labels"]["x"], "y");
        assert_eq!(status["status"]["conditions"], json!([]));
        // A patch carrying a stale resourceVersion is a failed precondition.
        let mut stale = main.clone();
        stale["metadata"]["labels"] = json!({});
        assert_eq!(store.patch(&key, Part::Main, stale).unwrap_err().code, 409);
        // A no-op keeps the version and emits nothing.
        let before = store.resource_version();
        let current = store.get(&key).unwrap();
        store.patch(&key, Part::Main, current).unwrap();
        assert_eq!(store.resource_version(), before);
        // Nodes: unconditional update allowed, PUT does not create.
        let mut unversioned = store.get(&key).unwrap();
        unversioned["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        unversioned["spec"] = json!({"unschedulable": true});
        assert!(store.update(&key, Part::Main, unversioned).is_ok());
        assert_eq!(
            store
                .update(&node_key("n9"), Part::Main, node("n9"))
                .unwrap_err()
                .code,
            404
        );
        assert_eq!(store.delete(&node_key("n9")).unwrap_err().code, 404);
    }

    #[test]
    fn streaming_lists_end_with_the_initial_events_bookmark() {
        let mut store = Store::new();
        store.upsert(&node_key("n1"), node("n1")).unwrap();
        let start = WatchStart {
            send_initial_events: true,
            resource_version_match: Some("NotOlderThan".to_owned()),
            allow_bookmarks: true,
            ..WatchStart::default()
        };
        let (_, events) = store.watch(Resource::Nodes, None, &start).unwrap();
        assert_eq!(types(&events), ["ADDED", "BOOKMARK"]);
        assert_eq!(
            events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        let without_match = WatchStart {
            resource_version_match: None,
            ..start.clone()
        };
        assert_eq!(
            store
                .watch(Resource::Nodes, None, &without_match)
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn selectors_filter_lists_and_turn_watch_events_into_added_and_deleted() {
        let mut store = Store::new();
        let key = node_key("n1");
        store.upsert(&key, node("n1")).unwrap();
        store.upsert(&node_key("n2"), node("n2")).unwrap();
        let selector = Selector::parse(Resource::Nodes, Some("role=worker"), None).unwrap();
        let list = store
            .list(Resource::Nodes, None, None, None, &selector)
            .unwrap();
        assert!(list["items"].as_array().unwrap().is_empty());
        let (mut watch, first) = store
            .watch(
                Resource::Nodes,
                None,
                &WatchStart {
                    resource_version: Some(store.resource_version().to_string()),
                    selector,
                    ..WatchStart::default()
                },
            )
            .unwrap();
        assert!(first.is_empty());
        let label = |store: &mut Store, role: &str| {
            let mut n = store.get(&key).unwrap();
            n["metadata"]["labels"] = json!({"role": role});
            store.patch(&key, Part::Main, n).unwrap();
        };
        label(&mut store, "worker");
        label(&mut store, "worker-2");
        label(&mut store, "worker");
        let mut n = store.get(&key).unwrap();
        n["spec"] = json!({"podCIDR": "10.0.0.0/24"});
        store.patch(&key, Part::Main, n).unwrap();
        store.delete(&node_key("n2")).unwrap();
        store.delete(&key).unwrap();
        let events = store.poll(&mut watch);
        assert_eq!(
            types(&events),
            ["ADDED", "DELETED", "ADDED", "MODIFIED", "DELETED"]
        );
    }

    #[test]
    fn a_full_event_window_compacts_its_oldest_half() {
        let mut store = Store::with_window(4);
        for i in 0..5 {
            let name = format!("n{i}");
            store.upsert(&node_key(&name), node(&name)).unwrap();
        }
        // 5 events > 4: the oldest 3 went, a watch from before the 3rd write is too old.
        assert_eq!(store.compacted(), 3);
        let (watch, events) = watch_from(&store, Some(2));
        assert!(watch.done);
        assert_eq!(events[0]["object"]["code"], 410);
        let (_, events) = watch_from(&store, Some(3));
        assert_eq!(types(&events), ["ADDED", "ADDED"]);
        let at = store
            .list(
                Resource::Nodes,
                None,
                Some("3"),
                Some("Exact"),
                &Selector::default(),
            )
            .unwrap();
        assert_eq!(at["items"].as_array().unwrap().len(), 3);
    }

    /// A random write: upsert, patch, delete of one of a few Nodes, or a compaction.
    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u8, u8),
        Annotate(u8, u8),
        Delete(u8),
        Compact,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, any::<u8>()).prop_map(|(n, v)| Op::Upsert(n, v)),
            4 => (0u8..4, any::<u8>()).prop_map(|(n, v)| Op::Annotate(n, v)),
            2 => (0u8..4).prop_map(Op::Delete),
            1 => Just(Op::Compact),
        ]
    }

    fn apply(store: &mut Store, op: &Op) {
        match op {
            Op::Upsert(n, v) => {
                let name = format!("n{n}");
                let mut object = node(&name);
                object["spec"] = json!({"v": v});
                store.upsert(&node_key(&name), object).unwrap();
            }
            Op::Annotate(n, v) => {
                let key = node_key(&format!("n{n}"));
                if let Ok(mut object) = store.get(&key) {
                    object["metadata"]["annotations"] = json!({"v": v.to_string()});
                    store.patch(&key, Part::Main, object).unwrap();
                }
            }
            Op::Delete(n) => {
                let _ = store.delete(&node_key(&format!("n{n}")));
            }
            Op::Compact => store.compact(),
        }
    }

    /// Replays watch events onto a name → object map, as an informer's cache would.
    fn replay(cache: &mut BTreeMap<String, Value>, events: &[Value]) {
        for e in events {
            let name = e["object"]["metadata"]["name"].as_str().unwrap().to_owned();
            match e["type"].as_str().unwrap() {
                "ADDED" | "MODIFIED" => {
                    cache.insert(name, e["object"].clone());
                }
                "DELETED" => {
                    cache.remove(&name);
                }
                other => panic!("unexpected {other}"),
            }
        }
    }

    fn cache_of(list: &Value) -> BTreeMap<String, Value> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap().to_owned(),
                    o.clone(),
                )
            })
            .collect()
    }

    proptest! {
        /// The resourceVersion never goes down, objects' versions are never above it, a watch
        /// from a list's version (or a re-list after 410) always reproduces the store, and
        /// events arrive in resourceVersion order.
        #[test]
        fn list_then_watch_reproduces_the_store(
            before in proptest::collection::vec(op(), 0..20),
            after in proptest::collection::vec(op(), 0..40),
            window in 2usize..50,
        ) {
            let mut store = Store::with_window(window);
            for op in &before {
                let rv = store.resource_version();
                apply(&mut store, op);
                prop_assert!(store.resource_version() >= rv);
            }
            let list = store.list(Resource::Nodes, None, None, None, &Selector::default()).unwrap();
            let mut cache = cache_of(&list);
            let (mut watch, first) = watch_from(&store, Some(rv_of(&list)));
            prop_assert!(first.is_empty());
            let mut last_rv = rv_of(&list);
            for op in &after {
                apply(&mut store, op);
                let events = store.poll(&mut watch);
                if watch.done {
                    prop_assert_eq!(events.len(), 1);
                    prop_assert_eq!(&events[0]["object"]["code"], 410);
                    // Re-list and watch again, as a client must.
                    let list = store.list(Resource::Nodes, None, None, None, &Selector::default()).unwrap();
                    cache = cache_of(&list);
                    let (w, first) = watch_from(&store, Some(rv_of(&list)));
                    prop_assert!(first.is_empty());
                    watch = w;
                    last_rv = rv_of(&list);
                    continue;
                }
                for e in &events {
                    let rv = rv_of(&e["object"]);
                    prop_assert!(rv > last_rv, "event versions increase");
                    prop_assert!(rv <= store.resource_version());
                    last_rv = rv;
                }
                replay(&mut cache, &events);
                let now = cache_of(&store.list(Resource::Nodes, None, None, None, &Selector::default()).unwrap());
                prop_assert_eq!(&cache, &now);
            }
        }

        /// An exact list at any retained version equals the state a watch had then.
        #[test]
        fn exact_lists_match_history(ops in proptest::collection::vec(op(), 1..30)) {
            let mut store = Store::new();
            let mut history = Vec::new();
            for op in &ops {
                apply(&mut store, op);
                history.push((store.resource_version(), store.objects(Resource::Nodes, None)));
            }
            // (Exact at version 0 is refused by definition.)
            for (rv, objects) in history.into_iter().filter(|(rv, _)| *rv > 0) {
                let list = store.list(Resource::Nodes, None, Some(&rv.to_string()), Some("Exact"), &Selector::default());
                if rv < store.compacted() {
                    prop_assert_eq!(list.unwrap_err().code, 410);
                } else {
                    prop_assert_eq!(&list.unwrap()["items"], &json!(objects));
                }
            }
        }
    }
}
