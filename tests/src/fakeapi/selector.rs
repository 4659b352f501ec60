//! `labelSelector` and `fieldSelector`, as lists and watches filter by them.

use serde_json::Value;

use super::resource::Resource;
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Both selectors of a request; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<Requirement>,
    /// `(field path, value, equal?)`
    fields: Vec<(String, String, bool)>,
}

impl Selector {
    /// Parses the query's selectors; `400` for syntax the real server refuses, or a field it
    /// does not index (`metadata.name`, `metadata.namespace`, and `spec.unschedulable` for
    /// Nodes are).
    pub fn parse(
        resource: Resource,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Selector, ApiError> {
        let mut selector = Selector::default();
        for term in split_terms(labels.unwrap_or("")) {
            selector.labels.push(label_requirement(term)?);
        }
        for term in fields
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                )));
            };
            let known = matches!(field, "metadata.name" | "metadata.namespace")
                || (resource == Resource::Nodes && field == "spec.unschedulable");
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            selector
                .fields
                .push((field.to_owned(), value.to_owned(), equal));
        }
        Ok(selector)
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        let label = |key: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(key))
                .and_then(Value::as_str)
        };
        let labels_ok = self.labels.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(field, value, equal)| {
                let actual = match field.as_str() {
                    "metadata.name" => str_at(object, "/metadata/name").to_owned(),
                    "metadata.namespace" => str_at(object, "/metadata/namespace").to_owned(),
                    _ => object
                        .pointer("/spec/unschedulable")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string(),
                };
                (actual == *value) == *equal
            })
    }
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Splits on commas outside parentheses (`a in (x,y),b`).
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn label_requirement(term: &str) -> Result<Requirement, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {term}"));
    let set = |rest: &str| -> Result<Vec<String>, ApiError> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(bad)?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            k.trim().to_owned(),
            v.trim().to_owned(),
        ));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(
            k.trim().to_owned(),
            v.trim().to_owned(),
        ));
    }
    if let Some((k, rest)) = term.split_once(" notin ") {
        return Ok(Requirement::NotIn(k.trim().to_owned(), set(rest)?));
    }
    if let Some((k, rest)) = term.split_once(" in ") {
        return Ok(Requirement::In(k.trim().to_owned(), set(rest)?));
    }
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(k.trim().to_owned()));
    }
    if term.contains(char::is_whitespace) || term.contains(['(', ')']) {
        return Err(bad());
    }
    Ok(Requirement::Exists(term.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}})
    }

    #[test]
    fn label_selectors() {
        let n = node("n1", json!({"role": "worker", "zone": "a"}));
        let matches = |s: &str| {
            Selector::parse(Resource::Nodes, Some(s), None)
                .unwrap()
                .matches(&n)
        };
        assert!(matches("role=worker"));
        assert!(matches("role==worker,zone"));
        assert!(!matches("role!=worker"));
        assert!(matches("zone in (a, b),!gpu"));
        assert!(!matches("zone notin (a)"));
        assert!(!matches("gpu"));
        assert!(matches(""));
        assert!(Selector::parse(Resource::Nodes, Some("zone in a"), None).is_err());
    }

    #[test]
    fn field_selectors() {
        let n = node("n1", json!({}));
        let s = Selector::parse(Resource::Nodes, None, Some("metadata.name=n1")).unwrap();
        assert!(s.matches(&n));
        let s = Selector::parse(Resource::Nodes, None, Some("metadata.name!=n1")).unwrap();
        assert!(!s.matches(&n));
        let s = Selector::parse(Resource::Nodes, None, Some("spec.unschedulable=false")).unwrap();
        assert!(s.matches(&n));
        let e = Selector::parse(Resource::Leases, None, Some("spec.holderIdentity=x")).unwrap_err();
        assert_eq!(e.code, 400);
    }
}
