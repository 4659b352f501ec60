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
}

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
    /// `creationTimestamp` of new objects (set by the caller; sans-IO).
    pub now: String,
}

impl Store {
    pub fn new() -> Store {
        Store {
            now: "1970-01-01T00:00:00Z".to_owned(),
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
        self.record(key, EventType::Deleted, object.clone());
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
            done: false,
        };
        let added = |store: &Store| -> Vec<Value> {
            store
                .objects(resource, namespace)
                .into_iter()
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
            .map(|e| event_json(e.kind, e.object.clone()))
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
        self.record(key, EventType::Added, object.clone());
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
        self.record(key, EventType::Modified, object.clone());
        object
    }

    fn record(&mut self, key: &Key, kind: EventType, object: Value) {
        self.events.push(Event {
            rv: self.rv,
            key: key.clone(),
            kind,
            object,
        });
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
