//! RBAC as the real authorizer decides it, for the rules of rendered manifests (ClusterRole,
//! Role, ClusterRoleBinding, RoleBinding): a request is allowed if some binding of its user
//! (or of a group the user is in) grants a rule matching its verb, API group, resource (with
//! subresource, `nodes/status`) and name; a Role, or a RoleBinding to a ClusterRole, grants only
//! in the binding's namespace.

use std::collections::BTreeMap;

use serde_json::Value;

use super::resource::Resource;
use super::status::ApiError;

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    pub user: &'a str,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: &'a str,
    pub resource: Resource,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    resource_names: Vec<String>,
}

/// A rule granted to some subjects, cluster-wide (`namespace: None`) or in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    namespace: Option<String>,
    subjects: Vec<Subject>,
    rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
}

/// The rules of a set of manifests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rbac {
    grants: Vec<Grant>,
}

/// Why manifests cannot be read as RBAC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RBAC manifests: {0}")]
pub struct RbacError(String);

impl Rbac {
    /// Reads ClusterRoles, Roles and their bindings from `documents` (other kinds are
    /// ignored, as are bindings to roles that are not among them: like a real cluster, whose
    /// authorizer finds no such role and grants nothing).
    pub fn from_manifests(documents: &[Value]) -> Result<Rbac, RbacError> {
        let mut cluster_roles: BTreeMap<String, Vec<Rule>> = BTreeMap::new();
        let mut roles: BTreeMap<(String, String), Vec<Rule>> = BTreeMap::new();
        let mut bindings = Vec::new();
        for doc in documents.iter().filter(|d| d.is_object()) {
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
            let name = str_at(doc, "/metadata/name").to_owned();
            let namespace = str_at(doc, "/metadata/namespace");
            let namespace = if namespace.is_empty() {
                "default"
            } else {
                namespace
            }
            .to_owned();
            match kind {
                "ClusterRole" => {
                    cluster_roles.insert(name, rules(doc)?);
                }
                "Role" => {
                    roles.insert((namespace, name), rules(doc)?);
                }
                "ClusterRoleBinding" | "RoleBinding" => {
                    bindings.push((kind == "ClusterRoleBinding", namespace, doc));
                }
                _ => {}
            }
        }
        let mut grants = Vec::new();
        for (cluster_wide, namespace, doc) in bindings {
            let role_kind = str_at(doc, "/roleRef/kind");
            let role_name = str_at(doc, "/roleRef/name").to_owned();
            let rules = match role_kind {
                "ClusterRole" => cluster_roles.get(&role_name),
                "Role" if !cluster_wide => roles.get(&(namespace.clone(), role_name)),
                other => {
                    return Err(RbacError(format!(
                        "{}: roleRef.kind {other:?} is not allowed here",
                        str_at(doc, "/metadata/name")
                    )));
                }
            };
            let subjects = subjects(doc, &namespace);
            for rule in rules.into_iter().flatten() {
                grants.push(Grant {
                    namespace: (!cluster_wide).then(|| namespace.clone()),
                    subjects: subjects.clone(),
                    rule: rule.clone(),
                });
            }
        }
        Ok(Rbac { grants })
    }

    /// Allowed, or the real `403 Forbidden`.
    pub fn authorize(&self, request: &Attributes<'_>) -> Result<(), ApiError> {
        if self.allows(request) {
            Ok(())
        } else {
            Err(forbidden(request))
        }
    }

    pub fn allows(&self, request: &Attributes<'_>) -> bool {
        let groups = groups_of(request.user);
        self.grants.iter().any(|grant| {
            grant.subjects.iter().any(|s| match s {
                Subject::User(u) => u == request.user,
                Subject::Group(g) => groups.iter().any(|mine| mine == g),
            }) && match &grant.namespace {
                None => true,
                Some(ns) => request.namespace == Some(ns.as_str()),
            } && matches(&grant.rule, request)
        })
    }
}

/// The groups the authenticator puts a user in.
fn groups_of(user: &str) -> Vec<String> {
    let mut groups = vec!["system:authenticated".to_owned()];
    if let Some(rest) = user.strip_prefix("system:serviceaccount:")
        && let Some((namespace, _)) = rest.split_once(':')
    {
        groups.push("system:serviceaccounts".to_owned());
        groups.push(format!("system:serviceaccounts:{namespace}"));
    }
    groups
}

fn matches(rule: &Rule, request: &Attributes<'_>) -> bool {
    let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
    let resource = match request.subresource {
        Some(sub) => format!("{}/{sub}", request.resource.plural()),
        None => request.resource.plural().to_owned(),
    };
    let resource_ok = rule.resources.iter().any(|r| {
        r == "*"
            || *r == resource
            || (request.subresource.is_some() && *r == format!("{}/*", request.resource.plural()))
            || (request.subresource.is_some()
                && *r == format!("*/{}", request.subresource.unwrap_or("")))
    });
    any(&rule.verbs, request.verb)
        && any(&rule.api_groups, request.resource.group())
        && resource_ok
        && (rule.resource_names.is_empty()
            || request
                .name
                .is_some_and(|n| rule.resource_names.iter().any(|x| x == n)))
}

/// `nodes "x" is forbidden: User "u" cannot patch resource "nodes/status" in API group ""
/// at the cluster scope`, word for word the real authorizer's message.
fn forbidden(request: &Attributes<'_>) -> ApiError {
    let resource = match request.subresource {
        Some(sub) => format!("{}/{sub}", request.resource.plural()),
        None => request.resource.plural().to_owned(),
    };
    let what = match request.name {
        Some(name) => format!("{} \"{name}\"", request.resource.qualified()),
        None => request.resource.qualified(),
    };
    let scope = match request.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    ApiError::forbidden(
        format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            request.user,
            request.verb,
            request.resource.group()
        ),
        request.resource,
        request.name,
    )
}

fn str_at<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn rules(doc: &Value) -> Result<Vec<Rule>, RbacError> {
    let Some(list) = doc.get("rules") else {
        return Ok(Vec::new());
    };
    let Some(list) = list.as_array() else {
        return Err(RbacError(format!(
            "{}: rules is not a list",
            str_at(doc, "/metadata/name")
        )));
    };
    Ok(list
        .iter()
        .map(|r| Rule {
            api_groups: strings(r.get("apiGroups")),
            resources: strings(r.get("resources")),
            verbs: strings(r.get("verbs")),
            resource_names: strings(r.get("resourceNames")),
        })
        .collect())
}

fn subjects(binding: &Value, binding_namespace: &str) -> Vec<Subject> {
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = str_at(s, "/name");
            match str_at(s, "/kind") {
                "ServiceAccount" => {
                    let ns = match str_at(s, "/namespace") {
                        "" => binding_namespace,
                        ns => ns,
                    };
                    Some(Subject::User(format!("system:serviceaccount:{ns}:{name}")))
                }
                "User" => Some(Subject::User(name.to_owned())),
                "Group" => Some(Subject::Group(name.to_owned())),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WEFT: &str = "system:serviceaccount:kube-system:weft";

    /// What the chart grants (HELPERS.md): nodes get/list/watch/patch, nodes/status patch,
    /// leases get/create/update in the release namespace.
    fn chart() -> Rbac {
        Rbac::from_manifests(&[
            json!({"kind": "ServiceAccount", "metadata": {"name": "weft", "namespace": "kube-system"}}),
            json!({"kind": "ClusterRole", "metadata": {"name": "weft"}, "rules": [
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}
            ]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "weft"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weft"},
                   "subjects": [{"kind": "ServiceAccount", "name": "weft", "namespace": "kube-system"}]}),
            json!({"kind": "Role", "metadata": {"name": "weft", "namespace": "kube-system"}, "rules": [
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
            ]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "weft", "namespace": "kube-system"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "weft"},
                   "subjects": [{"kind": "ServiceAccount", "name": "weft", "namespace": "kube-system"}]}),
        ])
        .unwrap()
    }

    fn ask<'a>(
        verb: &'a str,
        resource: Resource,
        subresource: Option<&'a str>,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            user: WEFT,
            verb,
            resource,
            subresource,
            namespace,
            name,
        }
    }

    #[test]
    fn the_charts_grants_and_nothing_more() {
        let rbac = chart();
        for verb in ["get", "list", "watch", "patch"] {
            assert!(
                rbac.allows(&ask(verb, Resource::Nodes, None, None, Some("n1"))),
                "{verb}"
            );
        }
        assert!(rbac.allows(&ask(
            "patch",
            Resource::Nodes,
            Some("status"),
            None,
            Some("n1")
        )));
        // nodes/status is its own resource: `patch nodes` does not grant `update nodes/status`.
        assert!(!rbac.allows(&ask(
            "update",
            Resource::Nodes,
            Some("status"),
            None,
            Some("n1")
        )));
        assert!(!rbac.allows(&ask(
            "get",
            Resource::Nodes,
            Some("status"),
            None,
            Some("n1")
        )));
        assert!(!rbac.allows(&ask("delete", Resource::Nodes, None, None, Some("n1"))));
        assert!(!rbac.allows(&ask("update", Resource::Nodes, None, None, Some("n1"))));
        for verb in ["get", "create", "update"] {
            assert!(rbac.allows(&ask(
                verb,
                Resource::Leases,
                None,
                Some("kube-system"),
                Some("l")
            )));
        }
        assert!(!rbac.allows(&ask(
            "delete",
            Resource::Leases,
            None,
            Some("kube-system"),
            Some("l")
        )));
        assert!(!rbac.allows(&ask(
            "list",
            Resource::Leases,
            None,
            Some("kube-system"),
            None
        )));
        // A Role grants only in its namespace.
        assert!(!rbac.allows(&ask(
            "get",
            Resource::Leases,
            None,
            Some("default"),
            Some("l")
        )));
        // Other users get nothing.
        let mut other = ask("get", Resource::Nodes, None, None, Some("n1"));
        other.user = "system:serviceaccount:default:default";
        assert!(!rbac.allows(&other));
    }

    proptest::proptest! {
        /// Against every combination, the chart's rules decide exactly as HELPERS.md states
        /// them: a table written out by hand is the oracle.
        #[test]
        fn the_chart_matches_its_table(
            verb in proptest::sample::select(vec!["get", "list", "watch", "create", "update", "patch", "delete"]),
            leases in proptest::bool::ANY,
            status in proptest::bool::ANY,
            namespace in proptest::sample::select(vec!["kube-system", "default", "other"]),
            user in proptest::sample::select(vec![WEFT, "system:serviceaccount:default:weft", "alice"]),
        ) {
            let (resource, subresource, ns) = if leases {
                (Resource::Leases, None, Some(namespace))
            } else {
                (Resource::Nodes, status.then_some("status"), None)
            };
            let request = Attributes { user, verb, resource, subresource, namespace: ns, name: Some("x") };
            let expected = user == WEFT
                && match (resource, subresource) {
                    (Resource::Nodes, None) => ["get", "list", "watch", "patch"].contains(&verb),
                    (Resource::Nodes, Some(_)) => verb == "patch",
                    (Resource::Leases, _) => {
                        namespace == "kube-system" && ["get", "create", "update"].contains(&verb)
                    }
                };
            proptest::prop_assert_eq!(chart().allows(&request), expected, "{:?}", request);
            proptest::prop_assert_eq!(chart().authorize(&request).is_ok(), expected);
        }
    }

    #[test]
    fn forbidden_reads_like_the_real_one() {
        let e = chart()
            .authorize(&ask(
                "update",
                Resource::Nodes,
                Some("status"),
                None,
                Some("x"),
            ))
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "nodes \"x\" is forbidden: User \"system:serviceaccount:kube-system:weft\" cannot update resource \"nodes/status\" in API group \"\" at the cluster scope"
        );
        let e = chart()
            .authorize(&ask(
                "list",
                Resource::Leases,
                None,
                Some("kube-system"),
                None,
            ))
            .unwrap_err();
        assert_eq!(
            e.message,
            "leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:kube-system:weft\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-system\""
        );
    }

    #[test]
    fn wildcards_groups_names_and_cluster_roles_bound_in_a_namespace() {
        let rbac = Rbac::from_manifests(&[
            json!({"kind": "ClusterRole", "metadata": {"name": "leases"}, "rules": [
                {"apiGroups": ["*"], "resources": ["leases"], "verbs": ["*"], "resourceNames": ["only"]}
            ]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "ns1"},
                   "roleRef": {"kind": "ClusterRole", "name": "leases"},
                   "subjects": [{"kind": "Group", "name": "system:serviceaccounts:kube-system"}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "status"}, "rules": [
                {"apiGroups": [""], "resources": ["nodes/*"], "verbs": ["get"]}
            ]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "s"},
                   "roleRef": {"kind": "ClusterRole", "name": "status"},
                   "subjects": [{"kind": "User", "name": WEFT}]}),
        ])
        .unwrap();
        assert!(rbac.allows(&ask(
            "delete",
            Resource::Leases,
            None,
            Some("ns1"),
            Some("only")
        )));
        assert!(!rbac.allows(&ask(
            "delete",
            Resource::Leases,
            None,
            Some("ns1"),
            Some("other")
        )));
        assert!(!rbac.allows(&ask("list", Resource::Leases, None, Some("ns1"), None)));
        assert!(!rbac.allows(&ask(
            "delete",
            Resource::Leases,
            None,
            Some("ns2"),
            Some("only")
        )));
        assert!(rbac.allows(&ask(
            "get",
            Resource::Nodes,
            Some("status"),
            None,
            Some("n")
        )));
        assert!(!rbac.allows(&ask("get", Resource::Nodes, None, None, Some("n"))));
    }
}
