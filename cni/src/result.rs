//! The ADD result, kept version-neutral and written out in the requested `cniVersion`'s format.
//!
//! - 0.3.1 / 0.4.0: `ips[].version` ("4"/"6"); routes `dst`/`gw`; interfaces `name`/`mac`/`sandbox`.
//! - 1.0.0: no `ips[].version`.
//! - 1.1.0: adds `interfaces[].mtu` and the route attributes `mtu`, `advmss`, `priority`,
//!   `table`, `scope`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{self, CniError};
use crate::ip::IpNet;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; `None` on the host.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    /// Numeric route scope (0 universe, 253 link, ...).
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// A CNI success result, version-neutral.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

fn is_1_1(version: &str) -> bool {
    version == "1.1.0"
}

fn is_0_x(version: &str) -> bool {
    version.starts_with("0.")
}

impl CniResult {
    /// The result JSON in `version`'s format.
    pub fn to_json(&self, version: &str) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), i.name.clone().into());
                if let Some(mac) = &i.mac {
                    o.insert("mac".into(), mac.clone().into());
                }
                if is_1_1(version)
                    && let Some(mtu) = i.mtu
                {
                    o.insert("mtu".into(), mtu.into());
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), s.clone().into());
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if is_0_x(version) {
                    o.insert(
                        "version".into(),
                        if ip.address.is_ipv4() { "4" } else { "6" }.into(),
                    );
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), r.dst.to_string().into());
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), gw.to_string().into());
                }
                if is_1_1(version) {
                    for (k, v) in [
                        ("mtu", r.mtu),
                        ("advmss", r.advmss),
                        ("priority", r.priority),
                        ("table", r.table),
                    ] {
                        if let Some(v) = v {
                            o.insert(k.into(), v.into());
                        }
                    }
                    if let Some(s) = r.scope {
                        o.insert("scope".into(), s.into());
                    }
                }
                Value::Object(o)
            })
            .collect();
        let mut out = json!({ "cniVersion": version });
        if !interfaces.is_empty() {
            out["interfaces"] = interfaces.into();
        }
        if !ips.is_empty() {
            out["ips"] = ips.into();
        }
        if !routes.is_empty() {
            out["routes"] = routes.into();
        }
        out["dns"] = serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({}));
        out
    }

    /// Reads a result of any supported version (a `prevResult` or a delegated IPAM plugin's
    /// answer). Error 6 if it is not a result.
    pub fn from_json(v: &Value) -> Result<Self, CniError> {
        let bad = |what: String| CniError::new(error::DECODING_FAILURE, "decoding failure", what);
        let obj = v
            .as_object()
            .ok_or_else(|| bad("a result must be a JSON object".into()))?;
        let str_of =
            |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let u32_of = |o: &Map<String, Value>, k: &str| {
            o.get(k)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        let ip_of = |o: &Map<String, Value>, k: &str| -> Result<Option<IpAddr>, CniError> {
            match str_of(o, k) {
                None => Ok(None),
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => s
                    .parse()
                    .map(Some)
                    .map_err(|_| bad(format!("{k} {s:?} is not an IP address"))),
            }
        };
        let net_of = |o: &Map<String, Value>, k: &str| -> Result<IpNet, CniError> {
            let s = str_of(o, k).ok_or_else(|| bad(format!("result entry without {k}")))?;
            s.parse().map_err(bad)
        };
        let list = |k: &str| {
            obj.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let mut r = CniResult::default();
        for i in list("interfaces") {
            let o = i
                .as_object()
                .ok_or_else(|| bad("interfaces entry is not an object".into()))?;
            r.interfaces.push(Interface {
                name: str_of(o, "name").unwrap_or_default(),
                mac: str_of(o, "mac"),
                mtu: u32_of(o, "mtu"),
                sandbox: str_of(o, "sandbox").filter(|s| !s.is_empty()),
            });
        }
        for ip in list("ips") {
            let o = ip
                .as_object()
                .ok_or_else(|| bad("ips entry is not an object".into()))?;
            r.ips.push(IpConfig {
                address: net_of(o, "address")?,
                gateway: ip_of(o, "gateway")?,
                interface: o
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|n| n as usize),
            });
        }
        for route in list("routes") {
            let o = route
                .as_object()
                .ok_or_else(|| bad("routes entry is not an object".into()))?;
            r.routes.push(Route {
                dst: net_of(o, "dst")?,
                gw: ip_of(o, "gw")?,
                mtu: u32_of(o, "mtu"),
                advmss: u32_of(o, "advmss"),
                priority: u32_of(o, "priority"),
                table: u32_of(o, "table"),
                scope: o
                    .get("scope")
                    .and_then(Value::as_u64)
                    .and_then(|n| u8::try_from(n).ok()),
            });
        }
        if let Some(d) = obj.get("dns") {
            r.dns = serde_json::from_value(d.clone()).map_err(|e| bad(format!("dns: {e}")))?;
        }
        Ok(r)
    }

    /// Appends `ours` after this (previous) result: interface indexes of `ours` are shifted past
    /// the previous interfaces; our DNS wins where it says anything.
    pub fn merge(mut self, ours: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(ours.interfaces);
        self.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        for route in ours.routes {
            if !self.routes.contains(&route) {
                self.routes.push(route);
            }
        }
        if !ours.dns.is_empty() {
            self.dns = ours.dns;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "vw0123456789".into(),
                    mac: Some("aa:bb:cc:dd:ee:01".into()),
                    mtu: Some(1414),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:02".into()),
                    mtu: Some(1414),
                    sandbox: Some("/var/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.32.0.5/12".parse().unwrap(),
                gateway: Some("10.32.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.32.0.1".parse().unwrap()),
            )],
            dns: Dns::default(),
        }
    }

    #[test]
    fn one_one_format() {
        let v = sample().to_json("1.1.0");
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "vw0123456789", "mac": "aa:bb:cc:dd:ee:01", "mtu": 1414},
                    {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "mtu": 1414, "sandbox": "/var/run/netns/p"}
                ],
                "ips": [{"address": "10.32.0.5/12", "gateway": "10.32.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn older_formats() {
        let v = sample().to_json("1.0.0");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["ips"][0].get("version").is_none());
        for old in ["0.3.1", "0.4.0"] {
            let v = sample().to_json(old);
            assert_eq!(v["cniVersion"], old);
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][0]["interface"], 1);
            assert!(v["interfaces"][1].get("mtu").is_none());
        }
    }

    #[test]
    fn round_trip_and_merge() {
        let s = sample();
        for version in crate::SUPPORTED_VERSIONS {
            let back = CniResult::from_json(&s.to_json(version)).unwrap();
            assert_eq!(back.ips, s.ips);
            assert_eq!(back.routes, s.routes);
        }
        let prev = CniResult::from_json(&json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "sandbox": "/var/run/netns/p"}],
            "ips": [{"address": "192.168.1.2/24", "interface": 0}],
            "dns": {"nameservers": ["9.9.9.9"]}
        }))
        .unwrap();
        let merged = prev.merge(s);
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.ips[1].interface, Some(2));
        assert_eq!(merged.dns.nameservers, vec!["9.9.9.9"]);
        assert_eq!(
            CniResult::from_json(&json!({"ips": [{"address": "nope"}]}))
                .unwrap_err()
                .code,
            6
        );
        let with_route_extras =
            json!({"routes": [{"dst": "10.0.0.0/8", "mtu": 1400, "scope": 253}]});
        let r = CniResult::from_json(&with_route_extras).unwrap();
        assert_eq!(
            r.to_json("1.1.0")["routes"][0],
            json!({"dst": "10.0.0.0/8", "mtu": 1400, "scope": 253})
        );
        assert_eq!(
            r.to_json("1.0.0")["routes"][0],
            json!({"dst": "10.0.0.0/8"})
        );
    }
}
