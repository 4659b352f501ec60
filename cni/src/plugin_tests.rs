//! The verbs against the recording fakes: every verb, every error path.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::config::CniEnv;
use crate::fake::{FakeExec, FakeNet, FakeRouter};
use crate::plugin::{Deps, Outcome, host_veth_name, run};

const NETNS: &str = "/var/run/netns/pod";

struct World {
    net: FakeNet,
    router: FakeRouter,
    exec: FakeExec,
}

impl World {
    fn new() -> Self {
        Self {
            net: FakeNet::new(),
            router: FakeRouter::new(),
            exec: FakeExec::host_local(),
        }
    }

    fn call(&self, env: &[(&str, &str)], stdin: &Value) -> Outcome {
        let m: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = CniEnv::from_lookup(|k| m.get(k).cloned());
        let deps = Deps {
            net: &self.net,
            transport: &self.router,
            exec: &self.exec,
        };
        run(&env, &serde_json::to_vec(stdin).unwrap(), &deps)
    }

    fn verb(&self, verb: &str, stdin: &Value) -> Outcome {
        self.call(
            &[
                ("CNI_COMMAND", verb),
                ("CNI_CONTAINERID", "c0ffee"),
                ("CNI_NETNS", NETNS),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/opt/cni/bin"),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1",
                ),
            ],
            stdin,
        )
    }
}

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "weft", "type": "weft-cni"})
}

fn delegated(version: &str) -> Value {
    json!({"cniVersion": version, "name": "weft", "type": "weft-cni",
           "ipam": {"type": "host-local", "subnet": "10.99.0.0/24"}})
}

fn ok(o: Outcome) -> Option<Value> {
    match o.result {
        Ok(v) => v,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn err(o: &Outcome) -> &crate::error::CniError {
    o.result.as_ref().expect_err("expected an error")
}

fn host() -> String {
    host_veth_name("c0ffee", "eth0")
}

#[test]
fn veth_names_are_stable_short_and_per_attachment() {
    let a = host_veth_name("c0ffee", "eth0");
    assert_eq!(a, host_veth_name("c0ffee", "eth0"));
    assert!(a.starts_with("vw") && a.len() == 12 && a[2..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, host_veth_name("c0ffee", "eth1"));
    assert_ne!(a, host_veth_name("c0ffef", "eth0"));
    // no ambiguity between ("ab", "c") and ("a", "bc")
    assert_ne!(host_veth_name("ab", "c"), host_veth_name("a", "bc"));
}

#[test]
fn add_with_router_ipam() {
    let w = World::new();
    let out = ok(w.verb("ADD", &conf("1.1.0"))).unwrap();
    assert_eq!(
        out,
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": host(), "mac": "02:00:00:00:00:01", "mtu": 1414},
                {"name": "eth0", "mac": "02:00:00:00:00:02", "mtu": 1414, "sandbox": NETNS}
            ],
            "ips": [{"address": "10.32.0.5/12", "gateway": "10.32.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
            "dns": {}
        })
    );
    let reqs = w.router.requests.borrow();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].2,
        json!({"container_id": "c0ffee", "ifname": "eth0", "netns": NETNS,
               "pod_namespace": "default", "pod_name": "web-0", "pod_uid": "u1",
               "host_veth": host()})
    );
    assert_eq!(
        w.net.ops(),
        [
            "check_netns",
            "host_link",
            "bridge_mtu",
            "create_veth",
            "configure_container",
            "announce"
        ]
    );
    let calls = w.net.calls.borrow();
    assert!(
        calls[3].contains("mtu: 1414")
            && calls[3].contains("hairpin: true")
            && calls[3].contains("bridge: \"weft\"")
    );
    assert!(
        calls[5].ends_with("10.32.0.5"),
        "gratuitous ARP for the pod address: {}",
        calls[5]
    );
    let iface = &w.net.ifaces.borrow()[&(NETNS.to_string(), "eth0".to_string())];
    assert!(iface.up);
    assert_eq!(iface.addrs[0].to_string(), "10.32.0.5/12");
}

#[test]
fn add_sets_the_mac_the_router_chose_for_the_guarded_port() {
    let w = World::new();
    w.router.answer(
        "/cni/add",
        200,
        json!({"address": "10.32.0.5/12", "gateway": "10.32.0.1", "mtu": 1414,
               "bridge": "weft", "mac": "02:ab:cd:00:00:07"}),
    );
    let out = ok(w.verb("ADD", &conf("1.1.0"))).unwrap();
    assert_eq!(out["interfaces"][1]["mac"], "02:ab:cd:00:00:07");
    assert!(w.net.calls.borrow()[3].contains("mac: Some([2, 171, 205, 0, 0, 7])"));
    let iface = &w.net.ifaces.borrow()[&(NETNS.to_string(), "eth0".to_string())];
    assert_eq!(iface.mac, "02:ab:cd:00:00:07");
    // Without a MAC (an older router) the kernel picks one, as before.
    let w = World::new();
    ok(w.verb("ADD", &conf("1.1.0")));
    assert!(w.net.calls.borrow()[3].contains("mac: None"));
}

#[test]
fn add_with_an_unusable_mac_from_the_router_is_101_and_released() {
    for bad in [
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
        "02:ab:cd:00:00",
        "nonsense",
    ] {
        let w = World::new();
        w.router.answer(
            "/cni/add",
            200,
            json!({"address": "10.32.0.5/12", "gateway": "10.32.0.1", "mtu": 1414,
                   "bridge": "weft", "mac": bad}),
        );
        let o = w.verb("ADD", &conf("1.1.0"));
        assert_eq!(err(&o).code, crate::error::ROUTER_PROTOCOL, "{bad}");
        assert_eq!(w.router.paths(), ["/cni/add", "/cni/del"], "{bad}");
        assert!(w.net.ops().iter().all(|op| op != "create_veth"), "{bad}");
    }
}

#[test]
fn add_result_in_older_formats() {
    for (version, has_ip_version) in [("0.3.1", true), ("0.4.0", true), ("1.0.0", false)] {
        let w = World::new();
        let out = ok(w.verb("ADD", &conf(version))).unwrap();
        assert_eq!(out["cniVersion"], version);
        assert_eq!(
            out["ips"][0].get("version").is_some(),
            has_ip_version,
            "{version}"
        );
        assert!(
            out["interfaces"][0].get("mtu").is_none(),
            "{version}: mtu is a 1.1.0 field"
        );
        assert_eq!(out["ips"][0]["interface"], 1);
    }
}

#[test]
fn add_config_overrides_and_router_bridge_wins() {
    let w = World::new();
    w.net.bridges.borrow_mut().insert("weft2".into(), 1500);
    w.router.answer(
        "/cni/add",
        200,
        json!({"address": "10.32.0.9/12", "gateway": "10.32.0.1", "mtu": 1414, "bridge": "weft2"}),
    );
    let c = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", "mtu": 1300, "hairpinMode": false,
                   "bridge": "other", "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc"]}});
    let out = ok(w.verb("ADD", &c)).unwrap();
    assert_eq!(out["interfaces"][1]["mtu"], 1300);
    assert_eq!(
        out["dns"],
        json!({"nameservers": ["10.96.0.10"], "search": ["default.svc"]})
    );
    let create = &w.net.calls.borrow()[3];
    assert!(
        create.contains("mtu: 1300")
            && create.contains("hairpin: false")
            && create.contains("bridge: \"weft2\"")
    );
}

#[test]
fn add_chained_merges_prev_result() {
    let w = World::new();
    let mut c = conf("1.0.0");
    c["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "sandbox": NETNS}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["1.1.1.1"]}
    });
    let out = ok(w.verb("ADD", &c)).unwrap();
    assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(out["ips"][1]["interface"], 2);
    assert_eq!(out["dns"]["nameservers"][0], "1.1.1.1");
}

#[test]
fn add_gateway_off_the_prefix_gets_a_host_route_first() {
    let w = World::new();
    w.router.answer(
        "/cni/add",
        200,
        json!({"address": "10.32.0.5/32", "gateway": "10.32.0.1", "mtu": 1414, "bridge": "weft"}),
    );
    let out = ok(w.verb("ADD", &conf("1.1.0"))).unwrap();
    assert_eq!(
        out["routes"],
        json!([{"dst": "10.32.0.1/32"}, {"dst": "0.0.0.0/0", "gw": "10.32.0.1"}])
    );
}

#[test]
fn add_router_down_is_try_again_later_naming_the_socket() {
    let w = World::new();
    *w.router.down.borrow_mut() = true;
    let o = w.verb("ADD", &conf("1.1.0"));
    let e = err(&o);
    assert_eq!(e.code, 11);
    assert!(
        e.msg
            .contains("cannot reach the weft router at /run/weft/cni.sock")
            && e.msg.contains("is weft running?"),
        "{}",
        e.msg
    );
    assert!(!w.net.ops().contains(&"create_veth".to_string()));
    assert!(w.net.is_clean());
    // the error is written in the config's version
    assert_eq!(e.to_json(&o.cni_version)["cniVersion"], "1.1.0");
}

#[test]
fn add_refused_by_the_router_passes_its_code_on() {
    for (status, body, code) in [
        (
            503,
            json!({"code": 11, "msg": "IPAM is not ready", "details": "waiting for peers"}),
            11,
        ),
        (
            507,
            json!({"code": 110, "msg": "range 10.32.0.0/12 is exhausted"}),
            110,
        ),
    ] {
        let w = World::new();
        w.router.answer("/cni/add", status, body.clone());
        let o = w.verb("ADD", &conf("1.1.0"));
        let e = err(&o);
        assert_eq!(e.code, code);
        assert_eq!(e.msg, body["msg"]);
        assert!(w.net.is_clean());
        assert_eq!(
            w.router.paths(),
            ["/cni/add"],
            "a refusal holds nothing to release"
        );
    }
}

#[test]
fn add_unreadable_router_answer_is_101_and_released() {
    let w = World::new();
    w.router.answer("/cni/add", 500, json!("boom"));
    assert_eq!(err(&w.verb("ADD", &conf("1.1.0"))).code, 101);
    assert_eq!(w.router.paths(), ["/cni/add", "/cni/del"]);
    let w = World::new();
    w.router.answer(
        "/cni/add",
        200,
        json!({"address": "10.32.0.5/12", "gateway": "fd00::1", "mtu": 1414, "bridge": "weft"}),
    );
    assert_eq!(err(&w.verb("ADD", &conf("1.1.0"))).code, 101);
    assert_eq!(w.router.paths(), ["/cni/add", "/cni/del"]);
}

#[test]
fn add_failures_after_allocation_undo_everything() {
    for step in ["bridge_mtu", "create_veth", "configure_container"] {
        let w = World::new();
        *w.net.fail.borrow_mut() = Some(step);
        let o = w.verb("ADD", &conf("1.1.0"));
        assert_eq!(err(&o).code, 100, "{step}");
        assert!(w.net.is_clean(), "{step}: veth left behind");
        assert_eq!(
            w.router.paths(),
            ["/cni/add", "/cni/del"],
            "{step}: address not released"
        );
        if step != "bridge_mtu" {
            assert!(w.net.ops().contains(&"delete_host_link".to_string()));
        }
    }
}

#[test]
fn add_gratuitous_arp_failure_is_only_a_warning() {
    let w = World::new();
    *w.net.fail.borrow_mut() = Some("announce");
    assert!(ok(w.verb("ADD", &conf("1.1.0"))).is_some());
    assert!(!w.net.is_clean());
}

#[test]
fn add_missing_bridge_is_try_again_later_and_released() {
    let w = World::new();
    w.net.bridges.borrow_mut().clear();
    let o = w.verb("ADD", &conf("1.1.0"));
    let e = err(&o);
    assert_eq!(e.code, 11);
    assert!(e.msg.contains("bridge weft does not exist"));
    assert_eq!(w.router.paths(), ["/cni/add", "/cni/del"]);
    assert!(w.net.is_clean());
}

#[test]
fn add_bad_netns_is_invalid_env_before_any_allocation() {
    let w = World::new();
    w.net.netns.borrow_mut().clear();
    let o = w.verb("ADD", &conf("1.1.0"));
    assert_eq!(err(&o).code, 4);
    assert!(err(&o).msg.contains("CNI_NETNS"));
    assert!(w.router.paths().is_empty());
}

#[test]
fn add_twice_is_refused_without_touching_the_first() {
    let w = World::new();
    ok(w.verb("ADD", &conf("1.1.0")));
    let o = w.verb("ADD", &conf("1.1.0"));
    assert_eq!(err(&o).code, 104);
    assert_eq!(w.router.paths(), ["/cni/add"]);
    assert!(w.net.host_links.borrow().contains_key(&host()));
}

#[test]
fn add_with_delegated_ipam() {
    let w = World::new();
    let out = ok(w.verb("ADD", &delegated("1.1.0"))).unwrap();
    assert_eq!(
        out["ips"],
        json!([{"address": "10.99.0.7/24", "gateway": "10.99.0.1", "interface": 1}])
    );
    assert_eq!(
        out["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}])
    );
    assert_eq!(out["interfaces"][1]["mtu"], 1500, "the bridge's MTU");
    assert!(
        w.router.paths().is_empty(),
        "delegated IPAM does not ask the router"
    );
    let runs = w.exec.runs.borrow();
    assert_eq!(
        runs[0],
        (
            "host-local".into(),
            "ADD".into(),
            Some("/opt/cni/bin".into())
        )
    );
}

#[test]
fn add_with_delegated_ipam_routes_and_failures() {
    let w = World::new();
    let res = json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.99.0.7/24", "gateway": "10.99.0.1"}],
                     "routes": [{"dst": "10.0.0.0/8"}, {"dst": "0.0.0.0/0", "gw": "10.99.0.254"}]});
    w.exec
        .answers
        .borrow_mut()
        .insert("ADD", Ok(serde_json::to_vec(&res).unwrap()));
    let out = ok(w.verb("ADD", &delegated("0.4.0"))).unwrap();
    assert_eq!(
        out["routes"],
        json!([{"dst": "10.0.0.0/8", "gw": "10.99.0.1"}, {"dst": "0.0.0.0/0", "gw": "10.99.0.254"}])
    );

    // the delegate's own error passes through; nothing to undo
    let w = World::new();
    w.exec.answers.borrow_mut().insert(
        "ADD",
        Err(crate::error::CniError::new(
            7,
            "no IP addresses available in range set",
            "",
        )),
    );
    assert_eq!(err(&w.verb("ADD", &delegated("1.1.0"))).code, 7);
    assert_eq!(w.exec.commands(), ["ADD"]);

    // a failure after the delegate allocated releases through the delegate
    let w = World::new();
    *w.net.fail.borrow_mut() = Some("configure_container");
    assert_eq!(err(&w.verb("ADD", &delegated("1.1.0"))).code, 100);
    assert_eq!(w.exec.commands(), ["ADD", "DEL"]);
    assert!(w.net.is_clean());

    // an empty delegate result is an error and is released too
    let w = World::new();
    w.exec
        .answers
        .borrow_mut()
        .insert("ADD", Ok(br#"{"cniVersion":"1.0.0"}"#.to_vec()));
    assert_eq!(err(&w.verb("ADD", &delegated("1.1.0"))).code, 103);
    assert_eq!(w.exec.commands(), ["ADD", "DEL"]);
}

#[test]
fn del_is_idempotent() {
    let w = World::new();
    ok(w.verb("ADD", &conf("1.1.0")));
    assert_eq!(ok(w.verb("DEL", &conf("1.1.0"))), None);
    assert!(w.net.is_clean());
    assert_eq!(ok(w.verb("DEL", &conf("1.1.0"))), None, "second DEL");
    assert_eq!(w.router.paths(), ["/cni/add", "/cni/del", "/cni/del"]);
    // netns gone, no CNI_NETNS at all, unknown container
    w.net.netns.borrow_mut().clear();
    assert_eq!(ok(w.verb("DEL", &conf("1.1.0"))), None);
    let o = w.call(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "never-added"),
            ("CNI_IFNAME", "eth0"),
        ],
        &conf("0.3.1"),
    );
    assert_eq!(ok(o), None);
}

#[test]
fn del_with_router_down_removes_the_veth_and_asks_for_a_retry() {
    let w = World::new();
    ok(w.verb("ADD", &conf("1.1.0")));
    *w.router.down.borrow_mut() = true;
    let o = w.verb("DEL", &conf("1.1.0"));
    assert_eq!(err(&o).code, 11);
    assert!(w.net.is_clean());
}

#[test]
fn del_with_delegated_ipam() {
    let w = World::new();
    ok(w.verb("ADD", &delegated("1.1.0")));
    assert_eq!(ok(w.verb("DEL", &delegated("1.1.0"))), None);
    assert_eq!(w.exec.commands(), ["ADD", "DEL"]);
    assert!(w.net.is_clean());
}

#[test]
fn check_after_add_and_what_it_catches() {
    let w = World::new();
    ok(w.verb("ADD", &conf("1.1.0")));
    assert_eq!(ok(w.verb("CHECK", &conf("1.1.0"))), None);
    assert_eq!(ok(w.verb("CHECK", &conf("0.4.0"))), None);

    // wrong address on record
    w.router.answer(
        "/cni/check",
        200,
        json!({"address": "10.32.0.6/12", "gateway": "10.32.0.1", "mtu": 1414, "bridge": "weft"}),
    );
    let o = w.verb("CHECK", &conf("1.1.0"));
    assert_eq!(err(&o).code, 102);
    assert!(err(&o).msg.contains("lacks address 10.32.0.6/12"));
    w.router.answer(
        "/cni/check",
        200,
        json!({"address": "10.32.0.5/12", "gateway": "10.32.0.1", "mtu": 1414, "bridge": "weft"}),
    );

    // default route gone
    w.net
        .ifaces
        .borrow_mut()
        .get_mut(&(NETNS.to_string(), "eth0".to_string()))
        .unwrap()
        .routes
        .clear();
    assert!(
        err(&w.verb("CHECK", &conf("1.1.0")))
            .msg
            .contains("no default route via 10.32.0.1")
    );

    // host end off the bridge
    ok(w.verb("DEL", &conf("1.1.0")));
    ok(w.verb("ADD", &conf("1.1.0")));
    w.net
        .host_links
        .borrow_mut()
        .get_mut(&host())
        .unwrap()
        .0
        .master = None;
    assert!(
        err(&w.verb("CHECK", &conf("1.1.0")))
            .msg
            .contains("instead of bridge weft")
    );

    // interface gone
    w.net.ifaces.borrow_mut().clear();
    assert!(
        err(&w.verb("CHECK", &conf("1.1.0")))
            .msg
            .contains("interface eth0 not found")
    );

    // unknown to the router: its error passes through
    w.router.answer(
        "/cni/check",
        404,
        json!({"code": 3, "msg": "unknown container c0ffee"}),
    );
    assert_eq!(err(&w.verb("CHECK", &conf("1.1.0"))).code, 3);

    // CHECK does not exist before 0.4.0
    assert_eq!(err(&w.verb("CHECK", &conf("0.3.1"))).code, 1);
}

#[test]
fn check_with_delegated_ipam_uses_prev_result() {
    let w = World::new();
    let add = ok(w.verb("ADD", &delegated("1.1.0"))).unwrap();
    let mut c = delegated("1.1.0");
    c["prevResult"] = add;
    assert_eq!(ok(w.verb("CHECK", &c)), None);
    assert_eq!(w.exec.commands(), ["ADD", "CHECK"]);
    c["prevResult"]["ips"][0]["address"] = json!("10.99.0.8/24");
    assert_eq!(err(&w.verb("CHECK", &c)).code, 102);
    assert_eq!(
        err(&w.verb("CHECK", &delegated("1.1.0"))).code,
        7,
        "no prevResult"
    );
}

#[test]
fn status() {
    let w = World::new();
    assert_eq!(ok(w.verb("STATUS", &conf("1.1.0"))), None);
    assert_eq!(w.router.requests.borrow()[0].0, "GET");

    w.router.answer(
        "/cni/status",
        503,
        json!({"code": 50, "msg": "IPAM is not ready", "details": "no quorum"}),
    );
    let o = w.verb("STATUS", &conf("1.1.0"));
    assert_eq!(
        (err(&o).code, err(&o).msg.as_str()),
        (50, "IPAM is not ready")
    );

    w.router
        .answer("/cni/status", 503, json!({"code": 11, "msg": "busy"}));
    assert_eq!(err(&w.verb("STATUS", &conf("1.1.0"))).code, 50);

    w.router.answer("/cni/status", 200, json!({"ready": false}));
    assert_eq!(err(&w.verb("STATUS", &conf("1.1.0"))).code, 50);

    *w.router.down.borrow_mut() = true;
    let o = w.verb("STATUS", &conf("1.1.0"));
    assert_eq!(err(&o).code, 50);
    assert!(
        err(&o)
            .msg
            .contains("cannot reach the weft router at /run/weft/cni.sock")
    );

    // STATUS only exists from 1.1.0 on; it needs no container variables
    assert_eq!(err(&w.verb("STATUS", &conf("1.0.0"))).code, 1);
    let o = w.call(
        &[("CNI_COMMAND", "STATUS")],
        &json!({"cniVersion": "1.1.0", "name": "w", "type": "weft-cni", "socket": "/x/y.sock"}),
    );
    assert!(err(&o).msg.contains("/x/y.sock"));
}

#[test]
fn status_with_delegated_ipam() {
    let w = World::new();
    assert_eq!(ok(w.verb("STATUS", &delegated("1.1.0"))), None);
    assert_eq!(
        w.exec.commands(),
        ["VERSION"],
        "host-local 1.0 knows no STATUS"
    );
    w.net.bridges.borrow_mut().clear();
    assert_eq!(err(&w.verb("STATUS", &delegated("1.1.0"))).code, 50);

    let w = World::new();
    w.exec.answers.borrow_mut().insert(
        "VERSION",
        Ok(br#"{"cniVersion":"1.1.0","supportedVersions":["1.1.0"]}"#.to_vec()),
    );
    w.exec
        .answers
        .borrow_mut()
        .insert("STATUS", Err(crate::error::CniError::new(11, "later", "")));
    assert_eq!(err(&w.verb("STATUS", &delegated("1.1.0"))).code, 50);
}

#[test]
fn gc() {
    let w = World::new();
    let mut c = conf("1.1.0");
    c["cni.dev/valid-attachments"] =
        json!([{"containerID": "a1", "ifname": "eth0"}, {"containerID": "b2", "ifname": "net1"}]);
    assert_eq!(
        ok(w.call(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &c)),
        None
    );
    assert_eq!(
        w.router.requests.borrow()[0].2,
        json!({"valid": [{"container_id": "a1", "ifname": "eth0"}, {"container_id": "b2", "ifname": "net1"}]})
    );
    // without the list nothing is released
    assert_eq!(ok(w.call(&[("CNI_COMMAND", "GC")], &conf("1.1.0"))), None);
    assert_eq!(w.router.paths().len(), 1);
    // router down
    *w.router.down.borrow_mut() = true;
    assert_eq!(err(&w.call(&[("CNI_COMMAND", "GC")], &c)).code, 11);
    assert_eq!(
        err(&w.call(&[("CNI_COMMAND", "GC")], &conf("1.0.0"))).code,
        1
    );
}

#[test]
fn gc_with_delegated_ipam_only_if_it_speaks_1_1() {
    let mut c = delegated("1.1.0");
    c["cni.dev/valid-attachments"] = json!([]);
    let w = World::new();
    assert_eq!(ok(w.call(&[("CNI_COMMAND", "GC")], &c)), None);
    assert_eq!(w.exec.commands(), ["VERSION"]);
    let w = World::new();
    w.exec.answers.borrow_mut().insert(
        "VERSION",
        Ok(br#"{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}"#.to_vec()),
    );
    w.exec.answers.borrow_mut().insert("GC", Ok(vec![]));
    assert_eq!(ok(w.call(&[("CNI_COMMAND", "GC")], &c)), None);
    assert_eq!(w.exec.commands(), ["VERSION", "GC"]);
    assert!(w.router.paths().is_empty());
}

#[test]
fn version() {
    let w = World::new();
    let out = ok(w.call(
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "0.4.0"}),
    ))
    .unwrap();
    assert_eq!(
        out,
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let out = ok(w.call(
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "9.9.9"}),
    ))
    .unwrap();
    assert_eq!(out["cniVersion"], "1.1.0");
}

#[test]
fn input_errors_get_the_spec_codes() {
    let w = World::new();
    // missing / unknown CNI_COMMAND
    assert_eq!(err(&w.call(&[], &conf("1.1.0"))).code, 4);
    assert_eq!(
        err(&w.call(&[("CNI_COMMAND", "FROB")], &conf("1.1.0"))).code,
        4
    );
    // malformed JSON
    let m: HashMap<String, String> = HashMap::from([("CNI_COMMAND".into(), "ADD".into())]);
    let env = CniEnv::from_lookup(|k| m.get(k).cloned());
    let deps = Deps {
        net: &w.net,
        transport: &w.router,
        exec: &w.exec,
    };
    let o = run(&env, b"{\"cniVersion\": \"1.1.0\",", &deps);
    assert_eq!(err(&o).code, 6);
    // unknown version: the error is written in the newest version we speak
    let o = w.verb("ADD", &conf("0.2.0"));
    assert_eq!(err(&o).code, 1);
    assert_eq!(o.cni_version, "1.1.0");
    // missing variables, each named
    for (missing, var) in [
        ("CNI_CONTAINERID", "CNI_CONTAINERID"),
        ("CNI_NETNS", "CNI_NETNS"),
        ("CNI_IFNAME", "CNI_IFNAME"),
    ] {
        let mut env = vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
        ];
        env.retain(|(k, _)| *k != missing);
        let o = w.call(&env, &conf("1.0.0"));
        assert_eq!(err(&o).code, 4);
        assert!(err(&o).msg.contains(var));
        assert_eq!(o.cni_version, "1.0.0");
    }
    // invalid config values
    let mut c = conf("1.1.0");
    c["mtu"] = json!(20);
    assert_eq!(err(&w.verb("ADD", &c)).code, 7);
    assert!(w.router.paths().is_empty() && w.net.calls.borrow().is_empty());
}
