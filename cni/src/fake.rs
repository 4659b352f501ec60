//! Recording fakes of the kernel, the router and delegated plugins, for the verb tests.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;

use serde_json::{Value, json};

use crate::client::{HttpResponse, Transport, TransportError};
use crate::error::{self, CniError};
use crate::hostnet::{ContainerIface, CreatedVeth, HostLink, HostNet, RouteSpec, VethRequest};
use crate::ip::IpNet;

/// The kernel, as a few maps. Every call is recorded; `fail` makes one operation fail.
#[derive(Default)]
pub struct FakeNet {
    pub calls: RefCell<Vec<String>>,
    pub netns: RefCell<BTreeSet<String>>,
    pub bridges: RefCell<BTreeMap<String, u32>>,
    pub host_links: RefCell<BTreeMap<String, (HostLink, String, String)>>,
    pub ifaces: RefCell<BTreeMap<(String, String), ContainerIface>>,
    pub fail: RefCell<Option<&'static str>>,
    macs: RefCell<u8>,
}

impl FakeNet {
    /// A host with bridge `weft` (MTU 1500) and a pod netns `/var/run/netns/pod`.
    pub fn new() -> Self {
        let n = Self::default();
        n.netns.borrow_mut().insert("/var/run/netns/pod".into());
        n.bridges.borrow_mut().insert("weft".into(), 1500);
        n
    }

    fn record(&self, op: &'static str, args: String) -> Result<(), CniError> {
        self.calls.borrow_mut().push(format!("{op} {args}"));
        if *self.fail.borrow() == Some(op) {
            return Err(CniError::kernel(format!("{op} failed"), "injected"));
        }
        Ok(())
    }

    pub fn ops(&self) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .map(|c| c.split(' ').next().unwrap().to_string())
            .collect()
    }

    fn mac(&self) -> String {
        let mut m = self.macs.borrow_mut();
        *m += 1;
        format!("02:00:00:00:00:{:02x}", *m)
    }

    /// Nothing of a pod left: no host veth, no container interface.
    pub fn is_clean(&self) -> bool {
        self.host_links.borrow().is_empty() && self.ifaces.borrow().is_empty()
    }
}

impl HostNet for FakeNet {
    fn check_netns(&self, netns: &str) -> Result<(), CniError> {
        self.record("check_netns", netns.into())?;
        if !self.netns.borrow().contains(netns) {
            return Err(CniError::invalid_env(
                "CNI_NETNS",
                format!("{netns} does not exist"),
            ));
        }
        Ok(())
    }

    fn bridge_mtu(&self, bridge: &str) -> Result<Option<u32>, CniError> {
        self.record("bridge_mtu", bridge.into())?;
        Ok(self.bridges.borrow().get(bridge).copied())
    }

    fn create_veth(&self, req: &VethRequest) -> Result<CreatedVeth, CniError> {
        self.record("create_veth", format!("{req:?}"))?;
        let key = (req.netns.clone(), req.ifname.clone());
        if self.host_links.borrow().contains_key(&req.host_name)
            || self.ifaces.borrow().contains_key(&key)
        {
            return Err(CniError::kernel("create veth", "EEXIST"));
        }
        let host_mac = self.mac();
        let container_mac = match req.mac {
            Some(mac) => weft_netlink::link::format_mac(mac),
            None => self.mac(),
        };
        self.host_links.borrow_mut().insert(
            req.host_name.clone(),
            (
                HostLink {
                    mac: host_mac.clone(),
                    master: Some(req.bridge.clone()),
                    up: true,
                },
                req.netns.clone(),
                req.ifname.clone(),
            ),
        );
        self.ifaces.borrow_mut().insert(
            key,
            ContainerIface {
                mac: container_mac.clone(),
                mtu: req.mtu,
                up: false,
                addrs: vec![],
                routes: vec![],
            },
        );
        Ok(CreatedVeth {
            host_mac,
            container_mac,
        })
    }

    fn configure_container(
        &self,
        netns: &str,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[RouteSpec],
    ) -> Result<(), CniError> {
        self.record(
            "configure_container",
            format!("{netns} {ifname} {addrs:?} {routes:?}"),
        )?;
        let mut ifaces = self.ifaces.borrow_mut();
        let iface = ifaces
            .get_mut(&(netns.into(), ifname.into()))
            .ok_or_else(|| CniError::kernel("no iface", "ENODEV"))?;
        iface.addrs.extend_from_slice(addrs);
        iface.routes.extend_from_slice(routes);
        iface.up = true;
        Ok(())
    }

    fn announce(
        &self,
        netns: &str,
        ifname: &str,
        host_name: &str,
        addr: IpAddr,
    ) -> Result<(), CniError> {
        self.record("announce", format!("{netns} {ifname} {host_name} {addr}"))
    }

    fn delete_host_link(&self, name: &str) -> Result<bool, CniError> {
        self.record("delete_host_link", name.into())?;
        match self.host_links.borrow_mut().remove(name) {
            Some((_, netns, ifname)) => {
                self.ifaces.borrow_mut().remove(&(netns, ifname));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn host_link(&self, name: &str) -> Result<Option<HostLink>, CniError> {
        self.record("host_link", name.into())?;
        Ok(self
            .host_links
            .borrow()
            .get(name)
            .map(|(l, _, _)| l.clone()))
    }

    fn container_iface(
        &self,
        netns: &str,
        ifname: &str,
    ) -> Result<Option<ContainerIface>, CniError> {
        self.record("container_iface", format!("{netns} {ifname}"))?;
        Ok(self
            .ifaces
            .borrow()
            .get(&(netns.into(), ifname.into()))
            .cloned())
    }
}

/// The router: canned answers per path (defaults: a /12 allocation, ready, nothing released);
/// `down` makes every connect fail.
pub struct FakeRouter {
    pub requests: RefCell<Vec<(String, String, Value)>>,
    pub answers: RefCell<HashMap<&'static str, (u16, Value)>>,
    pub down: RefCell<bool>,
}

impl FakeRouter {
    pub fn new() -> Self {
        let alloc = json!({"address": "10.32.0.5/12", "gateway": "10.32.0.1", "mtu": 1414, "bridge": "weft"});
        let answers = HashMap::from([
            ("/cni/add", (200, alloc.clone())),
            ("/cni/check", (200, alloc)),
            ("/cni/del", (200, json!({}))),
            ("/cni/status", (200, json!({"ready": true}))),
            ("/cni/gc", (200, json!({"released": 2}))),
        ]);
        Self {
            requests: RefCell::default(),
            answers: RefCell::new(answers),
            down: RefCell::new(false),
        }
    }

    pub fn answer(&self, path: &'static str, status: u16, body: Value) {
        self.answers.borrow_mut().insert(path, (status, body));
    }

    pub fn paths(&self) -> Vec<String> {
        self.requests
            .borrow()
            .iter()
            .map(|(_, p, _)| p.clone())
            .collect()
    }
}

impl Transport for FakeRouter {
    fn request(
        &self,
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, TransportError> {
        assert!(socket.is_absolute());
        if *self.down.borrow() {
            return Err(TransportError::Connect(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )));
        }
        let body = body
            .map(|b| serde_json::from_slice(b).unwrap())
            .unwrap_or(Value::Null);
        self.requests
            .borrow_mut()
            .push((method.into(), path.into(), body));
        let (status, answer) = self
            .answers
            .borrow()
            .get(path)
            .cloned()
            .expect("known path");
        Ok(HttpResponse {
            status,
            body: serde_json::to_vec(&answer).unwrap(),
        })
    }
}

/// Delegated plugins: canned answers per verb, every run recorded.
#[derive(Default)]
pub struct FakeExec {
    pub runs: RefCell<Vec<(String, String, Option<String>)>>,
    pub answers: RefCell<HashMap<&'static str, Result<Vec<u8>, CniError>>>,
}

impl FakeExec {
    /// A host-local lookalike (spec up to 1.0.0: no GC/STATUS).
    pub fn host_local() -> Self {
        let e = Self::default();
        let add = json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "10.99.0.7/24", "gateway": "10.99.0.1"}],
            "dns": {}
        });
        e.answers
            .borrow_mut()
            .insert("ADD", Ok(serde_json::to_vec(&add).unwrap()));
        e.answers.borrow_mut().insert("DEL", Ok(vec![]));
        e.answers.borrow_mut().insert("CHECK", Ok(vec![]));
        let version =
            json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]});
        e.answers
            .borrow_mut()
            .insert("VERSION", Ok(serde_json::to_vec(&version).unwrap()));
        e
    }

    pub fn commands(&self) -> Vec<String> {
        self.runs
            .borrow()
            .iter()
            .map(|(_, c, _)| c.clone())
            .collect()
    }
}

impl crate::delegate::Exec for FakeExec {
    fn run(
        &self,
        plugin: &str,
        cni_path: Option<&str>,
        command: &str,
        _stdin: &[u8],
    ) -> Result<Vec<u8>, CniError> {
        self.runs
            .borrow_mut()
            .push((plugin.into(), command.into(), cni_path.map(str::to_string)));
        self.answers
            .borrow()
            .get(command)
            .cloned()
            .unwrap_or_else(|| {
                Err(CniError::new(
                    error::DELEGATE_FAILED,
                    format!("fake {plugin}: no {command}"),
                    "",
                ))
            })
    }
}
