//! `weft-cni`: the binary the container runtime runs. Reads `CNI_*` and stdin, prints the result
//! or a CNI error on stdout, exits non-zero on error.

use std::io::{Read, Write};
use std::process::ExitCode;

use weft_cni::client::UnixHttp;
use weft_cni::config::CniEnv;
use weft_cni::delegate::ProcessExec;
use weft_cni::error::{self, CniError};
use weft_cni::netlink::Netlink;
use weft_cni::plugin::{self, Deps};

fn main() -> ExitCode {
    let env = CniEnv::from_lookup(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    let net = Netlink::default();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => plugin::run(
            &env,
            &stdin,
            &Deps {
                net: &net,
                transport: &UnixHttp,
                exec: &ProcessExec,
            },
        ),
        Err(e) => plugin::Outcome {
            cni_version: weft_cni::LATEST_VERSION.to_string(),
            result: Err(CniError::new(
                error::IO_FAILURE,
                "cannot read the network configuration",
                e.to_string(),
            )),
        },
    };
    let mut out = std::io::stdout().lock();
    match outcome.result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-cni: {} {e}", env.command.as_deref().unwrap_or("?"));
            let _ = writeln!(out, "{}", e.to_json(&outcome.cni_version));
            ExitCode::FAILURE
        }
    }
}
