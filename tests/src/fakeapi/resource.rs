//! The resources the fake serves: exactly the ones weft uses.

use serde::{Deserialize, Serialize};

/// A resource type (the URL's plural name and its API group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// core/v1 Nodes, cluster-scoped, with a `status` subresource.
    Nodes,
    /// coordination.k8s.io/v1 Leases, namespaced.
    Leases,
}

impl Resource {
    /// The API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Resource::Nodes => "",
            Resource::Leases => "coordination.k8s.io",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Nodes => "v1",
            Resource::Leases => "coordination.k8s.io/v1",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Nodes => "nodes",
            Resource::Leases => "leases",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Nodes => "Node",
            Resource::Leases => "Lease",
        }
    }

    pub fn list_kind(self) -> &'static str {
        match self {
            Resource::Nodes => "NodeList",
            Resource::Leases => "LeaseList",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Resource::Leases)
    }

    /// `nodes`, `leases.coordination.k8s.io`: how messages name the resource.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_owned(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// Whether the resource has a `status` subresource.
    pub fn has_status(self) -> bool {
        matches!(self, Resource::Nodes)
    }
}
