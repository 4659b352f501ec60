//! The plugin ↔ router protocol: HTTP/1.1 over the router's root-only unix socket, JSON bodies,
//! `Connection: close`, one request per connection.
//!
//! | request | body | success |
//! |---|---|---|
//! | `POST /cni/add` | [`AddRequest`] | 200 [`Allocation`] |
//! | `POST /cni/del` | [`Attachment`] | 200 (idempotent: unknown is fine) |
//! | `POST /cni/check` | [`Attachment`] | 200 [`Allocation`] on record; 404 + [`ErrorBody`] if unknown |
//! | `GET /cni/status` | — | 200 [`Status`] `{"ready":true}`; 503 + [`ErrorBody`] code 50 |
//! | `POST /cni/gc` | [`GcRequest`] | 200 [`GcResponse`] |
//!
//! Port guarding: a plugin that names the host end of the pod's veth in
//! [`AddRequest::host_veth`] gets [`Allocation::mac`], the MAC the router chose for the pod,
//! and sets it on the pod's interface; the router guards that bridge port (frames, ARP and
//! neighbour discovery from the pod must carry this MAC and the allocated address) before it
//! answers. Either field absent (an older plugin or router) means no guard, as before.
//!
//! Any 4xx/5xx carries an [`ErrorBody`] whose `code` is a CNI error code (e.g. 11 "try again
//! later" while IPAM is not ready), which the plugin passes on to the runtime as is.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ip::IpNet;

/// Where the router listens unless the network config says `"socket"`.
pub const DEFAULT_SOCKET: &str = "/run/weft/cni.sock";

pub const PATH_ADD: &str = "/cni/add";
pub const PATH_DEL: &str = "/cni/del";
pub const PATH_CHECK: &str = "/cni/check";
pub const PATH_STATUS: &str = "/cni/status";
pub const PATH_GC: &str = "/cni/gc";

/// `POST /cni/add`: allocate an address for one attachment (container id + interface name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRequest {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The host end of the pod's veth (the bridge port), which the plugin creates after the
    /// answer: the router guards it for the pod's MAC and address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_veth: Option<String>,
}

/// One attachment: the body of `del` and `check`, and an entry of [`GcRequest::valid`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The router's answer to `add` (and `check`): what the pod's interface gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The pod's address with the prefix length of the whole range (`10.32.0.5/12`): the range
    /// is on-link through the bridge.
    pub address: IpNet,
    /// The host's own address on the bridge; the pod's default route goes via it.
    pub gateway: IpAddr,
    /// The MTU for both ends of the veth (the overlay's MTU).
    pub mtu: u32,
    /// The bridge the host end joins.
    pub bridge: String,
    /// The MAC the pod's interface must have (`aa:bb:cc:dd:ee:ff`), when the request named
    /// its `host_veth`: the only source MAC its bridge port lets through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// `GET /cni/status` success body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub ready: bool,
}

/// `POST /cni/gc`: every attachment not in `valid` can be released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    pub valid: Vec<Attachment>,
}

/// `POST /cni/gc` answer: how many allocations were released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcResponse {
    pub released: u32,
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A CNI error code (spec codes, or 100+ for weft-specific ones).
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_the_documented_one() {
        let add = AddRequest {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            pod_namespace: Some("default".into()),
            pod_name: None,
            pod_uid: None,
            host_veth: None,
        };
        assert_eq!(
            serde_json::to_string(&add).unwrap(),
            r#"{"container_id":"abc","ifname":"eth0","netns":"/var/run/netns/x","pod_namespace":"default"}"#
        );
        let alloc: Allocation = serde_json::from_str(
            r#"{"address":"10.32.0.5/12","gateway":"10.32.0.1","mtu":1414,"bridge":"weft"}"#,
        )
        .unwrap();
        assert_eq!(alloc.address.to_string(), "10.32.0.5/12");
        assert_eq!(alloc.gateway.to_string(), "10.32.0.1");
        assert_eq!(alloc.mac, None, "an older router sends no MAC");
        let guarded = AddRequest {
            host_veth: Some("vw0123456789".into()),
            ..add
        };
        assert!(
            serde_json::to_string(&guarded)
                .unwrap()
                .ends_with(r#","host_veth":"vw0123456789"}"#)
        );
        let old: AddRequest =
            serde_json::from_str(r#"{"container_id":"a","ifname":"eth0","netns":"/n"}"#).unwrap();
        assert_eq!(old.host_veth, None, "an older plugin names no veth");
        let err: ErrorBody = serde_json::from_str(r#"{"code":11,"msg":"ipam not ready"}"#).unwrap();
        assert_eq!(err.details, "");
        assert!(
            serde_json::from_str::<Allocation>(
                r#"{"address":"10.32.0.5","gateway":"10.32.0.1","mtu":1,"bridge":"b"}"#
            )
            .is_err()
        );
    }
}
