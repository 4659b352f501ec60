//! Network namespaces for the VXLAN kernel tests: made with `ip netns add`, named after the
//! test process, deleted on drop (also when a test panics), and the commands run in them.

use std::process::{Command, Output};

use serde_json::Value;
use weft_datapath::packet::PacketSocket;

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command; its output, whatever its status.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().expect("run")
}

/// Runs a command; its stdout, or a panic with its stderr.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace `<prefix><pid>-<tag>`, deleted on drop.
pub struct Ns(pub String);

impl Ns {
    pub fn new(prefix: &str, tag: &str) -> Ns {
        let name = format!("{prefix}{}-{tag}", std::process::id());
        ok("ip", &["netns", "add", &name]);
        Ns(name)
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
    pub fn ip(&self, args: &[&str]) -> String {
        ok("ip", &[&["-n", &self.0], args].concat())
    }
    pub fn bridge(&self, args: &[&str]) -> String {
        ok("bridge", &[&["-n", &self.0], args].concat())
    }
    /// `ip netns exec`, its output whatever its status.
    pub fn exec(&self, args: &[&str]) -> Output {
        run("ip", &[&["netns", "exec", &self.0], args].concat())
    }
    /// `CMD -n NS -j ARGS` (ip, bridge), parsed.
    pub fn json(&self, cmd: &str, args: &[&str]) -> Value {
        let out = ok(cmd, &[&["-n", &self.0, "-j"], args].concat());
        serde_json::from_str(&out).expect("json")
    }
    pub fn index(&self, dev: &str) -> u32 {
        self.json("ip", &["link", "show", dev])[0]["ifindex"]
            .as_u64()
            .expect("ifindex") as u32
    }
    pub fn mac(&self, dev: &str) -> String {
        self.json("ip", &["link", "show", dev])[0]["address"]
            .as_str()
            .expect("address")
            .to_string()
    }
    /// Opens a packet socket inside the namespace.
    pub fn packet(&self, f: impl FnOnce() -> std::io::Result<PacketSocket> + Send) -> PacketSocket {
        weft_netlink::in_netns(&self.path(), f).expect("packet socket")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}
