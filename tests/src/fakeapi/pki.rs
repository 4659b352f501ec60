//! The fake's credentials: a CA and a server certificate for its address (the `openssl` CLI),
//! random tokens, and base64 for the kubeconfig's inline CA.

use std::io::Read as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use crate::cmd;

/// A CA and a server certificate for `address` (plus 127.0.0.1, localhost and the in-cluster
/// names), EC P-256, written to `dir` as `ca.crt`, `server.crt`, `server.key`.
pub(crate) fn make_certificates(dir: &Path, address: IpAddr) -> anyhow::Result<()> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let openssl = |args: &[&str]| cmd::run_ok(Command::new("openssl").args(args)).map(drop);
    // `openssl req` with a new EC P-256 key (unencrypted) written to `key`, then `rest`.
    let new_key_request = |key: &str, rest: &[&str]| {
        let key = path(key);
        let mut args = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
        ];
        args.extend_from_slice(rest);
        openssl(&args)
    };
    new_key_request(
        "ca.key",
        &[
            "-x509",
            "-out",
            &path("ca.crt"),
            "-days",
            "3",
            "-subj",
            "/CN=weft-fake-apiserver-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    new_key_request(
        "server.key",
        &[
            "-new",
            "-out",
            &path("server.csr"),
            "-subj",
            "/CN=kube-apiserver",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:{address},IP:127.0.0.1,DNS:localhost,\
             DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
             DNS:kubernetes.default.svc.cluster.local\n"
        ),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-out",
        &path("server.crt"),
        "-days",
        "3",
        "-extfile",
        &path("server.ext"),
    ])
}

pub(crate) fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
