//! The three PATCH formats weft's clients send: JSON merge patch (RFC 7386), strategic merge
//! patch (a merge patch whose lists with a merge key merge element by element) and JSON patch
//! (RFC 6902).

use serde_json::{Map, Value};

/// The patch formats, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    StrategicMerge,
    Json,
}

impl PatchType {
    /// The format a `Content-Type` header names (parameters such as `charset` ignored).
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/json-patch+json" => Some(PatchType::Json),
            _ => None,
        }
    }
}

/// Why a patch cannot be applied (the server answers 422, or 400 for malformed patches).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Failed(String),
}

/// Applies `patch` of type `kind` to `target`, returning the patched document.
pub fn apply(kind: PatchType, target: &Value, patch: &Value) -> Result<Value, PatchError> {
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "a merge patch must be a JSON object".to_owned(),
                ));
            }
            let mut doc = target.clone();
            merge_patch(&mut doc, patch);
            Ok(doc)
        }
        PatchType::StrategicMerge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "a strategic merge patch must be a JSON object".to_owned(),
                ));
            }
            let mut doc = target.clone();
            strategic_merge(&mut doc, patch, "")?;
            Ok(doc)
        }
        PatchType::Json => json_patch(target, patch),
    }
}

/// RFC 7386: objects merge recursively, `null` removes a member, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The merge key of the list at `path` (dotted field names from the object's root), as the
/// Kubernetes types declare it (`patchStrategy: merge`, `patchMergeKey`); lists without one
/// are replaced whole, as in a merge patch.
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        "status.conditions" | "status.addresses" => Some("type"),
        "metadata.ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// A strategic merge patch: like [`merge_patch`], but lists with a merge key merge element by
/// element (matching elements merge, new ones are appended, `$patch: delete` removes one), and
/// `$patch: replace` in an object replaces it whole.
fn strategic_merge(target: &mut Value, patch: &Value, path: &str) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if key.starts_with('$') {
            // Directives this fake does not need ($retainKeys, $setElementOrder/...): ignored,
            // like an apiserver ignores an order it cannot honour.
            continue;
        }
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match (value, merge_key(&child)) {
            (Value::Null, _) => {
                target.remove(key);
            }
            (Value::Array(items), Some(merge_key)) => {
                let list = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !list.is_array() {
                    *list = Value::Array(Vec::new());
                }
                let Value::Array(list) = list else {
                    unreachable!("made an array above")
                };
                merge_list(list, items, merge_key, &child)?;
            }
            (value, _) => {
                strategic_merge(
                    target.entry(key.clone()).or_insert(Value::Null),
                    value,
                    &child,
                )?;
            }
        }
    }
    Ok(())
}

fn merge_list(
    list: &mut Vec<Value>,
    items: &[Value],
    merge_key: &str,
    path: &str,
) -> Result<(), PatchError> {
    for item in items {
        let Some(key) = item.get(merge_key) else {
            return Err(PatchError::Failed(format!(
                "map: {item} does not contain declared merge key: {merge_key} (in {path})"
            )));
        };
        let position = list.iter().position(|e| e.get(merge_key) == Some(key));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut list[i], item, path)?,
            (None, false) => {
                let mut new = Value::Null;
                strategic_merge(&mut new, item, path)?;
                list.push(new);
            }
        }
    }
    Ok(())
}

/// RFC 6902: a list of operations applied in order, all or nothing.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(operations) = patch else {
        return Err(PatchError::Malformed(
            "a JSON patch must be a list of operations".to_owned(),
        ));
    };
    let mut doc = target.clone();
    for operation in operations {
        let op = operation
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Malformed(format!("operation without op: {operation}")))?;
        let path = operation
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Malformed(format!("operation without path: {operation}")))?;
        let value = || {
            operation.get("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("{op} operation without value: {operation}"))
            })
        };
        let from = || {
            operation
                .get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError::Malformed(format!("{op} without from: {operation}")))
        };
        match op {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                let slot = doc.pointer_mut(path).ok_or_else(|| missing(path))?;
                *slot = value()?;
            }
            "test" => {
                let found = doc.pointer(path).ok_or_else(|| missing(path))?;
                if *found != value()? {
                    return Err(PatchError::Failed(format!("testing value {path} failed")));
                }
            }
            "move" => {
                let moved = remove(&mut doc, from()?)?;
                add(&mut doc, path, moved)?;
            }
            "copy" => {
                let copied = doc.pointer(from()?).cloned().ok_or_else(|| missing(path))?;
                add(&mut doc, path, copied)?;
            }
            other => {
                return Err(PatchError::Malformed(format!("Unexpected kind: {other}")));
            }
        }
    }
    Ok(doc)
}

fn missing(path: &str) -> PatchError {
    PatchError::Failed(format!(
        "the server rejected our request due to an error in our request: path {path} does not exist"
    ))
}

/// `/a/b~1c` → parent pointer `/a` and last token `b/c`.
fn split(path: &str) -> Result<(&str, String), PatchError> {
    let at = path
        .rfind('/')
        .ok_or_else(|| PatchError::Malformed(format!("invalid JSON pointer {path:?}")))?;
    let token = path[at + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..at], token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(list)) => {
            let index = if token == "-" {
                list.len()
            } else {
                token
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i <= list.len())
                    .ok_or_else(|| missing(path))?
            };
            list.insert(index, value);
            Ok(())
        }
        _ => Err(missing(path)),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token).ok_or_else(|| missing(path)),
        Some(Value::Array(list)) => {
            let index = token
                .parse::<usize>()
                .ok()
                .filter(|i| *i < list.len())
                .ok_or_else(|| missing(path))?;
            Ok(list.remove(index))
        }
        _ => Err(missing(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({
            "metadata": {"name": "n1", "annotations": {"a": "1"}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                    {"type": "MemoryPressure", "status": "False"}
                ],
                "images": [{"names": ["a"]}]
            }
        })
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let patched = apply(
            PatchType::Merge,
            &node(),
            &json!({"metadata": {"annotations": {"a": null, "weft.dev/peer-name": "aa:bb"}},
                    "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}}),
        )
        .unwrap();
        assert_eq!(
            patched["metadata"]["annotations"],
            json!({"weft.dev/peer-name": "aa:bb"})
        );
        // A merge patch replaces lists whole.
        assert_eq!(
            patched["status"]["conditions"],
            json!([{"type": "NetworkUnavailable", "status": "False"}])
        );
    }

    #[test]
    fn strategic_merge_merges_conditions_by_type() {
        let patch = json!({"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp"},
            {"type": "Ready", "message": "still ready"}
        ], "images": [{"names": ["b"]}]}});
        let patched = apply(PatchType::StrategicMerge, &node(), &patch).unwrap();
        assert_eq!(
            patched["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "still ready"},
                {"type": "MemoryPressure", "status": "False"},
                {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp"}
            ])
        );
        // Lists without a merge key are replaced.
        assert_eq!(patched["status"]["images"], json!([{"names": ["b"]}]));
        // Applying it again changes nothing: conditions merge, they do not pile up.
        assert_eq!(
            apply(PatchType::StrategicMerge, &patched, &patch).unwrap(),
            patched
        );
    }

    #[test]
    fn strategic_merge_deletes_and_replaces() {
        let patched = apply(
            PatchType::StrategicMerge,
            &node(),
            &json!({"status": {
                "conditions": [{"type": "MemoryPressure", "$patch": "delete"}],
                "addresses": [{"type": "Hostname", "address": "n1"}]
            }, "metadata": {"annotations": {"$patch": "replace", "b": "2"}}}),
        )
        .unwrap();
        assert_eq!(patched["status"]["conditions"].as_array().unwrap().len(), 1);
        assert_eq!(
            patched["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}])
        );
        assert_eq!(patched["metadata"]["annotations"], json!({"b": "2"}));
        let e = apply(
            PatchType::StrategicMerge,
            &node(),
            &json!({"status": {"conditions": [{"status": "True"}]}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("merge key"), "{e}");
    }

    #[test]
    fn json_patch_follows_rfc6902() {
        let patched = apply(
            PatchType::Json,
            &node(),
            &json!([
                {"op": "test", "path": "/metadata/name", "value": "n1"},
                {"op": "add", "path": "/metadata/annotations/weft.dev~1peer-name", "value": "aa"},
                {"op": "replace", "path": "/status/conditions/0/status", "value": "False"},
                {"op": "remove", "path": "/status/conditions/1"},
                {"op": "add", "path": "/status/addresses/-", "value": {"type": "Hostname", "address": "n1"}},
                {"op": "copy", "from": "/metadata/name", "path": "/metadata/labels"},
                {"op": "move", "from": "/metadata/labels", "path": "/metadata/copied"}
            ]),
        )
        .unwrap();
        assert_eq!(
            patched["metadata"]["annotations"]["weft.dev/peer-name"],
            "aa"
        );
        assert_eq!(patched["status"]["conditions"][0]["status"], "False");
        assert_eq!(patched["status"]["conditions"].as_array().unwrap().len(), 1);
        assert_eq!(patched["status"]["addresses"][1]["type"], "Hostname");
        assert_eq!(patched["metadata"]["copied"], "n1");
        assert!(patched["metadata"].get("labels").is_none());
        // A failed test applies nothing.
        assert!(
            apply(
                PatchType::Json,
                &node(),
                &json!([{"op": "test", "path": "/metadata/name", "value": "other"}])
            )
            .is_err()
        );
        assert!(
            apply(
                PatchType::Json,
                &node(),
                &json!([{"op": "replace", "path": "/nope/x", "value": 1}])
            )
            .is_err()
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }
}
