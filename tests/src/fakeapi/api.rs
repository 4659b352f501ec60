//! Requests as the apiserver sees them: the URL and method mapped to a verb on a resource
//! (what RBAC authorizes), and their effect on the [`Store`] (sans-IO: the HTTP edge only
//! moves bytes).

use serde_json::Value;

use super::patch::{self, PatchError, PatchType};
use super::rbac::Attributes;
use super::resource::Resource;
use super::selector::Selector;
use super::status::ApiError;
use super::store::{Key, Part, Store, Watch, WatchStart};

/// The verbs RBAC knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }
}

/// A parsed API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub verb: Verb,
    pub resource: Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    pub query: Vec<(String, String)>,
}

/// How long a watch lasts and whether it gets bookmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    pub timeout_seconds: Option<u64>,
    pub bookmarks: bool,
}

impl Request {
    /// Maps `method` + `path` (+ the raw query string) to a request; `404` for paths outside
    /// the served resources, `405` for methods they do not take.
    pub fn parse(method: &str, path: &str, query: &str) -> Result<Request, ApiError> {
        let query = parse_query(query);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (resource, namespace, rest) = match segments.as_slice() {
            ["api", "v1", "nodes", rest @ ..] => (Resource::Nodes, None, rest),
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                ns,
                "leases",
                rest @ ..,
            ] => (Resource::Leases, Some((*ns).to_owned()), rest),
            ["apis", "coordination.k8s.io", "v1", "leases"] => (Resource::Leases, None, &[][..]),
            _ => return Err(ApiError::no_route()),
        };
        let (name, subresource) = match rest {
            [] => (None, None),
            [name] => (Some((*name).to_owned()), None),
            [name, "status"] if resource.has_status() => {
                (Some((*name).to_owned()), Some("status".to_owned()))
            }
            _ => return Err(ApiError::no_route()),
        };
        let watching = query
            .iter()
            .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
        let verb = match (method, &name) {
            ("GET", None) if watching => Verb::Watch,
            ("GET", None) => Verb::List,
            ("GET", Some(_)) => Verb::Get,
            ("POST", None) if namespace.is_some() || !resource.namespaced() => Verb::Create,
            ("PUT", Some(_)) => Verb::Update,
            ("PATCH", Some(_)) => Verb::Patch,
            ("DELETE", Some(_)) => Verb::Delete,
            _ => return Err(ApiError::method_not_allowed()),
        };
        Ok(Request {
            verb,
            resource,
            namespace,
            name,
            subresource,
            query,
        })
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.param(key), Some("true" | "1"))
    }

    /// What RBAC is asked.
    pub fn attributes<'a>(&'a self, user: &'a str) -> Attributes<'a> {
        Attributes {
            user,
            verb: self.verb.as_str(),
            resource: self.resource,
            subresource: self.subresource.as_deref(),
            namespace: self.namespace.as_deref(),
            name: self.name.as_deref(),
        }
    }

    pub fn watch_limits(&self) -> WatchLimits {
        WatchLimits {
            // 0 (or junk) means the server's default, as for the real one.
            timeout_seconds: self
                .param("timeoutSeconds")
                .and_then(|s| s.parse().ok())
                .filter(|t| *t > 0),
            bookmarks: self.flag("allowWatchBookmarks"),
        }
    }

    /// `labelSelector` and `fieldSelector`.
    pub fn selector(&self) -> Result<Selector, ApiError> {
        Selector::parse(
            self.resource,
            self.param("labelSelector"),
            self.param("fieldSelector"),
        )
    }

    fn key(&self, name: &str) -> Key {
        Key::new(self.resource, self.namespace.as_deref(), name)
    }

    fn part(&self) -> Part {
        match self.subresource {
            Some(_) => Part::Status,
            None => Part::Main,
        }
    }

    /// Starts a watch (`verb == Watch`): the watch and its first events.
    pub fn start_watch(&self, store: &Store) -> Result<(Watch, Vec<Value>), ApiError> {
        let start = WatchStart {
            resource_version: self.param("resourceVersion").map(str::to_owned),
            resource_version_match: self
                .param("resourceVersionMatch")
                .filter(|m| !m.is_empty())
                .map(str::to_owned),
            send_initial_events: self.flag("sendInitialEvents"),
            allow_bookmarks: self.flag("allowWatchBookmarks"),
            selector: self.selector()?,
        };
        store.watch(self.resource, self.namespace.as_deref(), &start)
    }

    /// Carries out any verb but `Watch` on `store`: the HTTP status and body.
    pub fn execute(
        &self,
        store: &mut Store,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        let name = self.name.as_deref().unwrap_or("");
        match self.verb {
            Verb::Watch => Err(ApiError::bad_request("a watch is not a plain request")),
            Verb::List => store
                .list(
                    self.resource,
                    self.namespace.as_deref(),
                    self.param("resourceVersion"),
                    self.param("resourceVersionMatch").filter(|m| !m.is_empty()),
                    &self.selector()?,
                )
                .map(|list| (200, list)),
            Verb::Get => store.get(&self.key(name)).map(|o| (200, o)),
            Verb::Delete => store.delete(&self.key(name)).map(|o| (200, o)),
            Verb::Create => {
                let object = json_body(body)?;
                let name = object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            self.resource,
                            "",
                            "metadata.name: Required value: name or generateName is required",
                        )
                    })?
                    .to_owned();
                store.create(&self.key(&name), object).map(|o| (201, o))
            }
            Verb::Update => {
                let written = store.update(&self.key(name), self.part(), json_body(body)?)?;
                Ok((if written.created { 201 } else { 200 }, written.object))
            }
            Verb::Patch => {
                let kind = PatchType::from_content_type(content_type)
                    .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
                let key = self.key(name);
                let current = store.get(&key)?;
                let patched =
                    patch::apply(kind, &current, &json_body(body)?).map_err(|e| match e {
                        PatchError::Malformed(m) => ApiError::bad_request(m),
                        PatchError::Failed(m) => ApiError::invalid(self.resource, name, &m),
                    })?;
                store.patch(&key, self.part(), patched).map(|o| (200, o))
            }
        }
    }
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

/// `a=1&b=x%20y` → pairs, percent- and `+`-decoded.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_verbs_and_resources() {
        let r = Request::parse(
            "GET",
            "/api/v1/nodes",
            "watch=1&resourceVersion=5&allowWatchBookmarks=true&timeoutSeconds=290",
        )
        .unwrap();
        assert_eq!((r.verb, r.resource), (Verb::Watch, Resource::Nodes));
        assert_eq!(
            r.watch_limits(),
            WatchLimits {
                timeout_seconds: Some(290),
                bookmarks: true
            }
        );
        let r = Request::parse("GET", "/api/v1/nodes", "limit=500").unwrap();
        assert_eq!(r.verb, Verb::List);
        let r = Request::parse("PATCH", "/api/v1/nodes/n1/status", "").unwrap();
        assert_eq!(
            (r.verb, r.name.as_deref(), r.subresource.as_deref()),
            (Verb::Patch, Some("n1"), Some("status"))
        );
        let r = Request::parse(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/weft-reclaim",
            "",
        )
        .unwrap();
        assert_eq!(
            (r.verb, r.resource, r.namespace.as_deref()),
            (Verb::Update, Resource::Leases, Some("kube-system"))
        );
        let r = Request::parse(
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
            "",
        )
        .unwrap();
        assert_eq!(r.verb, Verb::Create);
        assert_eq!(
            Request::parse("GET", "/api/v1/pods", "").unwrap_err().code,
            404
        );
        assert_eq!(
            Request::parse("POST", "/api/v1/nodes", "").unwrap().verb,
            Verb::Create
        );
        assert_eq!(
            Request::parse("POST", "/apis/coordination.k8s.io/v1/leases", "")
                .unwrap_err()
                .code,
            405
        );
        assert_eq!(
            Request::parse(
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/a/leases/l/status",
                ""
            )
            .unwrap_err()
            .code,
            404
        );
    }

    #[test]
    fn queries_are_decoded() {
        assert_eq!(
            parse_query("labelSelector=a%3Db%2Cc&x=1+2&bad=%zz&trail=%4"),
            vec![
                ("labelSelector".to_owned(), "a=b,c".to_owned()),
                ("x".to_owned(), "1 2".to_owned()),
                ("bad".to_owned(), "%zz".to_owned()),
                ("trail".to_owned(), "%4".to_owned()),
            ]
        );
    }
}
