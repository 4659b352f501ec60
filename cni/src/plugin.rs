//! The verbs. Everything the kernel, the router and delegated IPAM plugins do goes through
//! [`Deps`], so this module is tested with fakes (see `fake.rs`).

use std::net::IpAddr;

use serde_json::Value;

use crate::client::{RouterClient, RouterError, Transport};
use crate::config::{self, CniEnv, Command, Config};
use crate::delegate::{self, Exec};
use crate::error::{self, CniError};
use crate::hostnet::{HostNet, RouteSpec, VethRequest};
use crate::ip::IpNet;
use crate::protocol::{AddRequest, Allocation, Attachment, GcRequest};
use crate::result::{CniResult, Dns, Interface, IpConfig, Route};

/// The outside world, as the verbs see it.
pub struct Deps<'a> {
    pub net: &'a dyn HostNet,
    pub transport: &'a dyn Transport,
    pub exec: &'a dyn Exec,
}

/// What one call produced: the version to write errors in, and the result JSON to print (or
/// nothing, for DEL/CHECK/STATUS/GC) or the error.
pub struct Outcome {
    pub cni_version: String,
    pub result: Result<Option<Value>, CniError>,
}

/// Prefix of the host ends of weft's veth pairs.
pub const HOST_VETH_PREFIX: &str = "vw";

/// The host end's name for an attachment: `vw` + 10 hex digits of an FNV-1a hash of
/// (container id, ifname). Stable across calls, so DEL and CHECK find what ADD created.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_VETH_PREFIX}{:010x}", h & 0xff_ffff_ffff)
}

/// `aa:bb:cc:dd:ee:ff`, if it is a unicast address (the router's choice for a pod).
fn parse_unicast_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2)?;
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

/// Runs one plugin call.
pub fn run(env: &CniEnv, stdin: &[u8], deps: &Deps<'_>) -> Outcome {
    // Errors are written in the config's version when it is one we speak.
    let parsed = config::parse_json(stdin);
    let stated = parsed
        .as_ref()
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| crate::supports(v));
    let cni_version = stated
        .clone()
        .unwrap_or_else(|| crate::LATEST_VERSION.to_string());
    let result = dispatch(env, stdin, parsed, deps, stated);
    Outcome {
        cni_version,
        result,
    }
}

fn dispatch(
    env: &CniEnv,
    stdin: &[u8],
    parsed: Result<Value, CniError>,
    deps: &Deps<'_>,
    stated: Option<String>,
) -> Result<Option<Value>, CniError> {
    let command = env.command()?;
    if command == Command::Version {
        let v = stated.unwrap_or_else(|| crate::LATEST_VERSION.to_string());
        return Ok(Some(crate::version_info(&v)));
    }
    let raw = parsed?;
    let version = config::check_version(&raw)?;
    let min = match command {
        Command::Check => "0.4.0",
        Command::Status | Command::Gc => "1.1.0",
        _ => "0.3.1",
    };
    if version_lt(&version, min) {
        return Err(CniError::new(
            error::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "config version {version} does not allow {} (needs {min} or later)",
                command.as_str()
            ),
        ));
    }
    // The variables each verb needs, in the spec's order, before the config's values.
    match command {
        Command::Add | Command::Check => {
            env.container_id()?;
            env.netns()?;
            env.ifname()?;
        }
        Command::Del => {
            env.container_id()?;
            env.ifname()?;
        }
        _ => {}
    }
    let args = env.args()?;
    let cfg = Config::from_json(raw)?;
    let verb = Verb {
        env,
        stdin,
        deps,
        cfg: &cfg,
        args: &args,
    };
    match command {
        Command::Add => verb.add().map(Some),
        Command::Del => verb.del().map(|()| None),
        Command::Check => verb.check().map(|()| None),
        Command::Status => verb.status().map(|()| None),
        Command::Gc => verb.gc().map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

fn version_lt(a: &str, b: &str) -> bool {
    let parse = |v: &str| {
        v.split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    parse(a) < parse(b)
}

/// What the pod's interface gets, from the router or a delegated IPAM plugin.
#[derive(Debug, Clone)]
struct Plan {
    ips: Vec<(IpNet, Option<IpAddr>)>,
    /// The pod's MAC, when the router chose one (it guards the port for it).
    mac: Option<[u8; 6]>,
    routes: Vec<RouteSpec>,
    mtu: u32,
    bridge: String,
    dns: Dns,
}

/// Routes for an address with a gateway: a link-scope host route to the gateway if it is off
/// the address's prefix, then the default route via it.
fn gateway_routes(addr: IpNet, gw: IpAddr) -> Vec<RouteSpec> {
    let mut routes: Vec<RouteSpec> = gateway_host_route(addr, gw).into_iter().collect();
    routes.push(RouteSpec {
        dst: IpNet::default_for(gw),
        gw: Some(gw),
    });
    routes
}

/// A link-scope host route to `gw`, needed when it is off `addr`'s prefix.
fn gateway_host_route(addr: IpNet, gw: IpAddr) -> Option<RouteSpec> {
    (!addr.contains(gw)).then(|| RouteSpec {
        dst: IpNet::host(gw),
        gw: None,
    })
}

struct Verb<'a> {
    env: &'a CniEnv,
    stdin: &'a [u8],
    deps: &'a Deps<'a>,
    cfg: &'a Config,
    args: &'a [(String, String)],
}

impl Verb<'_> {
    fn router(&self) -> RouterClient<'_> {
        RouterClient {
            transport: self.deps.transport,
            socket: &self.cfg.socket,
        }
    }

    fn attachment(&self) -> Result<Attachment, CniError> {
        Ok(Attachment {
            container_id: self.env.container_id()?.to_string(),
            ifname: self.env.ifname()?.to_string(),
        })
    }

    /// The bridge the router named, else the config's.
    fn bridge_for(&self, alloc: &Allocation) -> String {
        if alloc.bridge.is_empty() {
            self.cfg.bridge.clone()
        } else {
            alloc.bridge.clone()
        }
    }

    fn arg(&self, key: &str) -> Option<String> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn delegate(&self, command: &str) -> Result<Vec<u8>, CniError> {
        let ipam = self
            .cfg
            .ipam_type
            .as_deref()
            .expect("only called with delegated ipam");
        self.deps
            .exec
            .run(ipam, self.env.path.as_deref(), command, self.stdin)
    }

    fn add(&self) -> Result<Value, CniError> {
        let cid = self.env.container_id()?;
        let ifname = self.env.ifname()?;
        let netns = self.env.netns()?;
        let net = self.deps.net;
        net.check_netns(netns)?;
        let host_name = host_veth_name(cid, ifname);
        if net.host_link(&host_name)?.is_some() {
            return Err(CniError::new(
                error::ALREADY_ATTACHED,
                format!("container {cid} already has interface {ifname} on this network"),
                format!(
                    "host interface {host_name} exists; DEL the attachment before adding it again"
                ),
            ));
        }
        // 1. The address.
        let plan = match self.cfg.ipam_type {
            None => self.plan_from_router(cid, ifname, netns, &host_name)?,
            Some(_) => self.plan_from_delegate()?,
        };
        // 2. The interfaces; on failure undo everything, the allocation included.
        match self.attach(&plan, &host_name, ifname, netns) {
            Ok(result) => Ok(result),
            Err(e) => {
                if let Err(undo) = net.delete_host_link(&host_name) {
                    eprintln!("weft-cni: undo: {undo}");
                }
                self.release_quietly();
                Err(e)
            }
        }
    }

    /// Releases the allocation after a failed ADD, reporting (not returning) problems.
    fn release_quietly(&self) {
        let released = match self.cfg.ipam_type {
            None => self.attachment().and_then(|a| {
                self.router()
                    .del(&a)
                    .map_err(|e| e.into_cni(error::TRY_AGAIN_LATER))
            }),
            Some(_) => self.delegate("DEL").map(drop),
        };
        if let Err(e) = released {
            eprintln!("weft-cni: undo: releasing the address: {e}");
        }
    }

    fn plan_from_router(
        &self,
        cid: &str,
        ifname: &str,
        netns: &str,
        host_name: &str,
    ) -> Result<Plan, CniError> {
        let req = AddRequest {
            container_id: cid.to_string(),
            ifname: ifname.to_string(),
            netns: netns.to_string(),
            pod_namespace: self.arg("K8S_POD_NAMESPACE"),
            pod_name: self.arg("K8S_POD_NAME"),
            pod_uid: self.arg("K8S_POD_UID"),
            host_veth: Some(host_name.to_string()),
        };
        let attachment = Attachment {
            container_id: cid.into(),
            ifname: ifname.into(),
        };
        let alloc = match self.router().add(&req) {
            Ok(a) => a,
            Err(e @ (RouterError::Refused(_) | RouterError::UnsafeSocketDir(_))) => {
                return Err(e.into_cni(error::TRY_AGAIN_LATER));
            }
            Err(e) => {
                // The request may have reached the router: do not leave an allocation behind.
                let _ = self.router().del(&attachment);
                return Err(e.into_cni(error::TRY_AGAIN_LATER));
            }
        };
        let bad = |why: String| {
            let _ = self.router().del(&attachment);
            Err(CniError::new(
                error::ROUTER_PROTOCOL,
                "the weft router gave an unusable allocation",
                why,
            ))
        };
        if alloc.address.is_ipv4() != alloc.gateway.is_ipv4() {
            return bad(format!(
                "address {} and gateway {} differ in family",
                alloc.address, alloc.gateway
            ));
        }
        if !(68..=65535).contains(&alloc.mtu) && self.cfg.mtu.is_none() {
            return bad(format!("mtu {}", alloc.mtu));
        }
        let bridge = self.bridge_for(&alloc);
        if let Err(why) = config::valid_ifname(&bridge) {
            return bad(format!("bridge {bridge:?} {why}"));
        }
        let mac = match alloc.mac.as_deref().map(parse_unicast_mac) {
            None => None,
            Some(Some(mac)) => Some(mac),
            Some(None) => return bad(format!("mac {:?}", alloc.mac.unwrap_or_default())),
        };
        Ok(Plan {
            ips: vec![(alloc.address, Some(alloc.gateway))],
            mac,
            routes: gateway_routes(alloc.address, alloc.gateway),
            mtu: self.cfg.mtu.unwrap_or(alloc.mtu),
            bridge,
            dns: self.cfg.dns.clone(),
        })
    }

    fn plan_from_delegate(&self) -> Result<Plan, CniError> {
        let out = self.delegate("ADD")?;
        let planned = (|| {
            let v: Value = serde_json::from_slice(&out).map_err(|e| {
                CniError::new(
                    error::DECODING_FAILURE,
                    "decoding failure",
                    format!("ipam plugin result: {e}"),
                )
            })?;
            let ipam = CniResult::from_json(&v)?;
            if ipam.ips.is_empty() {
                return Err(CniError::new(
                    error::DELEGATE_FAILED,
                    "the ipam plugin returned no addresses",
                    "",
                ));
            }
            let bridge_mtu = self
                .deps
                .net
                .bridge_mtu(&self.cfg.bridge)?
                .ok_or_else(|| CniError::no_bridge(&self.cfg.bridge, error::TRY_AGAIN_LATER))?;
            let ips: Vec<_> = ipam.ips.iter().map(|ip| (ip.address, ip.gateway)).collect();
            let gw_for = |dst: &IpNet| {
                ips.iter()
                    .find(|(a, _)| a.is_ipv4() == dst.is_ipv4())
                    .and_then(|(_, g)| *g)
            };
            let mut routes = Vec::new();
            if ipam.routes.is_empty() {
                for (addr, gw) in &ips {
                    if let Some(gw) = gw {
                        routes.extend(gateway_routes(*addr, *gw));
                    }
                }
            } else {
                for (addr, gw) in &ips {
                    routes.extend(gw.and_then(|gw| gateway_host_route(*addr, gw)));
                }
                for r in &ipam.routes {
                    routes.push(RouteSpec {
                        dst: r.dst,
                        gw: r.gw.or_else(|| gw_for(&r.dst)),
                    });
                }
            }
            Ok(Plan {
                ips,
                mac: None,
                routes,
                mtu: self.cfg.mtu.unwrap_or(bridge_mtu),
                bridge: self.cfg.bridge.clone(),
                dns: if self.cfg.dns.is_empty() {
                    ipam.dns
                } else {
                    self.cfg.dns.clone()
                },
            })
        })();
        planned.inspect_err(|_| self.release_quietly())
    }

    fn attach(
        &self,
        plan: &Plan,
        host_name: &str,
        ifname: &str,
        netns: &str,
    ) -> Result<Value, CniError> {
        let net = self.deps.net;
        if net.bridge_mtu(&plan.bridge)?.is_none() {
            return Err(CniError::no_bridge(&plan.bridge, error::TRY_AGAIN_LATER));
        }
        let created = net.create_veth(&VethRequest {
            host_name: host_name.to_string(),
            ifname: ifname.to_string(),
            netns: netns.to_string(),
            bridge: plan.bridge.clone(),
            mtu: plan.mtu,
            hairpin: self.cfg.hairpin,
            mac: plan.mac,
        })?;
        let addrs: Vec<IpNet> = plan.ips.iter().map(|(a, _)| *a).collect();
        net.configure_container(netns, ifname, &addrs, &plan.routes)?;
        for a in &addrs {
            // The pod works without it (peers learn the MAC on first contact): warn, go on.
            if let Err(e) = net.announce(netns, ifname, host_name, a.addr) {
                eprintln!("weft-cni: {e}");
            }
        }
        let ours = CniResult {
            interfaces: vec![
                Interface {
                    name: host_name.to_string(),
                    mac: Some(created.host_mac),
                    mtu: Some(plan.mtu),
                    sandbox: None,
                },
                Interface {
                    name: ifname.to_string(),
                    mac: Some(created.container_mac),
                    mtu: Some(plan.mtu),
                    sandbox: Some(netns.to_string()),
                },
            ],
            ips: plan
                .ips
                .iter()
                .map(|(a, g)| IpConfig {
                    address: *a,
                    gateway: *g,
                    interface: Some(1),
                })
                .collect(),
            routes: plan
                .routes
                .iter()
                .map(|r| Route::new(r.dst, r.gw))
                .collect(),
            dns: plan.dns.clone(),
        };
        let result = match &self.cfg.prev_result {
            Some(prev) => CniResult::from_json(prev)?.merge(ours),
            None => ours,
        };
        Ok(result.to_json(&self.cfg.cni_version))
    }

    fn del(&self) -> Result<(), CniError> {
        let att = self.attachment()?;
        let host_name = host_veth_name(&att.container_id, &att.ifname);
        // The interface first, so the address is not handed out while still configured.
        self.deps.net.delete_host_link(&host_name)?;
        match self.cfg.ipam_type {
            None => self
                .router()
                .del(&att)
                .map_err(|e| e.into_cni(error::TRY_AGAIN_LATER)),
            Some(_) => self.delegate("DEL").map(drop),
        }
    }

    fn check(&self) -> Result<(), CniError> {
        let att = self.attachment()?;
        let netns = self.env.netns()?;
        let net = self.deps.net;
        let mismatch = |what: String| CniError::new(error::CHECK_MISMATCH, what, "");
        // What the attachment should have.
        let (expected, bridge): (Vec<(IpNet, Option<IpAddr>)>, String) = match self.cfg.ipam_type {
            None => {
                let a = self
                    .router()
                    .check(&att)
                    .map_err(|e| e.into_cni(error::TRY_AGAIN_LATER))?;
                (vec![(a.address, Some(a.gateway))], self.bridge_for(&a))
            }
            Some(_) => {
                self.delegate("CHECK")?;
                (
                    self.expected_from_prev_result(&att.ifname, netns)?,
                    self.cfg.bridge.clone(),
                )
            }
        };
        net.check_netns(netns)?;
        let iface = net
            .container_iface(netns, &att.ifname)?
            .ok_or_else(|| mismatch(format!("interface {} not found in {netns}", att.ifname)))?;
        if !iface.up {
            return Err(mismatch(format!(
                "interface {} in {netns} is down",
                att.ifname
            )));
        }
        for (addr, gw) in &expected {
            if !iface.addrs.contains(addr) {
                return Err(mismatch(format!(
                    "interface {} in {netns} lacks address {addr} (has {})",
                    att.ifname,
                    iface
                        .addrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if let Some(gw) = gw {
                let default = IpNet::default_for(*gw);
                if !iface
                    .routes
                    .iter()
                    .any(|r| r.dst == default && r.gw == Some(*gw))
                {
                    return Err(mismatch(format!(
                        "no default route via {gw} on {} in {netns}",
                        att.ifname
                    )));
                }
            }
        }
        let host_name = host_veth_name(&att.container_id, &att.ifname);
        let host = net
            .host_link(&host_name)?
            .ok_or_else(|| mismatch(format!("host interface {host_name} not found")))?;
        if host.master.as_deref() != Some(bridge.as_str()) {
            return Err(mismatch(format!(
                "host interface {host_name} is on {} instead of bridge {bridge}",
                host.master.as_deref().unwrap_or("no bridge")
            )));
        }
        if !host.up {
            return Err(mismatch(format!("host interface {host_name} is down")));
        }
        Ok(())
    }

    /// With delegated IPAM the addresses to check come from `prevResult` (the runtime passes it
    /// to CHECK): the ips on the interface called `ifname` in `netns`.
    fn expected_from_prev_result(
        &self,
        ifname: &str,
        netns: &str,
    ) -> Result<Vec<(IpNet, Option<IpAddr>)>, CniError> {
        let prev = self.cfg.prev_result.as_ref().ok_or_else(|| {
            CniError::invalid_config("CHECK with delegated ipam needs prevResult")
        })?;
        let prev = CniResult::from_json(prev)?;
        let ours = prev
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(netns));
        Ok(prev
            .ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == ours)
            .map(|ip| (ip.address, ip.gateway))
            .collect())
    }

    fn status(&self) -> Result<(), CniError> {
        let unavailable = |e: CniError| {
            if e.code == error::NOT_AVAILABLE || e.code == 51 {
                e
            } else {
                CniError::new(error::NOT_AVAILABLE, e.msg, e.details)
            }
        };
        match self.cfg.ipam_type {
            None => {
                let status = self
                    .router()
                    .status()
                    .map_err(|e| unavailable(e.into_cni(error::NOT_AVAILABLE)))?;
                if !status.ready {
                    return Err(CniError::new(
                        error::NOT_AVAILABLE,
                        "the plugin is not available",
                        "the weft router reports it is not ready",
                    ));
                }
                Ok(())
            }
            Some(ref ipam) => {
                if self.deps.net.bridge_mtu(&self.cfg.bridge)?.is_none() {
                    return Err(CniError::no_bridge(&self.cfg.bridge, error::NOT_AVAILABLE));
                }
                if delegate::supports_1_1(self.deps.exec, ipam, self.env.path.as_deref()) {
                    self.delegate("STATUS").map_err(unavailable)?;
                }
                Ok(())
            }
        }
    }

    fn gc(&self) -> Result<(), CniError> {
        let Some(valid) = self.cfg.valid_attachments.clone() else {
            // Without the list every allocation would look stale: do nothing rather than that.
            eprintln!("weft-cni: GC without cni.dev/valid-attachments: nothing released");
            return Ok(());
        };
        match self.cfg.ipam_type {
            None => {
                let r = self
                    .router()
                    .gc(&GcRequest { valid })
                    .map_err(|e| e.into_cni(error::TRY_AGAIN_LATER))?;
                if r.released > 0 {
                    eprintln!("weft-cni: GC released {} stale allocation(s)", r.released);
                }
                Ok(())
            }
            Some(ref ipam) => {
                if delegate::supports_1_1(self.deps.exec, ipam, self.env.path.as_deref()) {
                    self.delegate("GC")?;
                }
                Ok(())
            }
        }
    }
}
