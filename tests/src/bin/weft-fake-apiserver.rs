//! `weft-fake-apiserver`: a fake Kubernetes API server for weft's tests (no kube-apiserver
//! can be installed on the test machines). It serves exactly the endpoints weft uses, with
//! the real semantics; see `weft_tests::fakeapi` and "Fake Kubernetes API server" in
//! `tests/clients/README.md`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::Value;
use weft_tests::fakeapi::http::{self, Config, Server};
use weft_tests::fakeapi::rbac::Rbac;

#[derive(Parser, Debug)]
#[command(about = "A fake Kubernetes API server (Nodes, Leases, RBAC) for weft's tests")]
struct Args {
    /// Where the API listens (port 0: any free port; see --address-file).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: std::net::SocketAddr,
    /// Written with the actual listen address once the server accepts connections.
    #[arg(long)]
    address_file: Option<PathBuf>,
    /// The control surface's unix socket (no auth): nodes, compaction, the request log.
    #[arg(long)]
    control: PathBuf,
    /// A bearer token and the user it authenticates as: `TOKEN=system:serviceaccount:NS:NAME`
    /// (repeatable). The user `system:admin` is allowed everything.
    #[arg(long = "token", value_name = "TOKEN=USER")]
    tokens: Vec<String>,
    /// Rendered manifests (`helm template` output, multi-document YAML) whose ClusterRoles,
    /// Roles and bindings decide what each user may do; without it everything is allowed.
    #[arg(long)]
    rbac: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM) …
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// … and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Between two BOOKMARK events of a watch that asked for them.
    #[arg(long, default_value_t = 5000)]
    bookmark_interval_ms: u64,
    /// Exit when standard input closes: the test that started the server holds the other end,
    /// so a killed test leaves no server behind.
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

fn read_rbac(path: &PathBuf) -> anyhow::Result<Rbac> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("{} is not YAML", path.display()))?;
    Ok(Rbac::from_manifests(&documents)?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    let mut tokens = HashMap::new();
    for pair in &args.tokens {
        let Some((token, user)) = pair.split_once('=') else {
            bail!("--token {pair:?}: expected TOKEN=USER");
        };
        tokens.insert(token.to_owned(), user.to_owned());
    }
    let rbac = args.rbac.as_ref().map(read_rbac).transpose()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key)?),
        _ => None,
    };
    let server = Server::new(Config {
        tokens,
        rbac,
        bookmark_interval: Duration::from_millis(args.bookmark_interval_ms.max(1)),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let control = tokio::spawn(http::serve_control(server.clone(), args.control.clone()));
    // The control socket first: the handle polls it once the address file exists.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !args.control.exists() {
        if control.is_finished() || std::time::Instant::now() > deadline {
            return control.await?.context("control listener");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(file) = &args.address_file {
        std::fs::write(file, address.to_string())?;
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "weft-fake-apiserver: serving {scheme}://{address}, control {}",
        args.control.display()
    );
    tokio::select! {
        () = http::serve_api(server, listener, tls) => Ok(()),
        done = control => done?,
    }
}
