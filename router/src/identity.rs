//! Who this router is: a stable peer name, a per-start incarnation uid, and a nickname.
//!
//! The name is persisted on first start. It is derived from `/etc/machine-id` *and* the
//! hostname because cloned VMs, and hosts in network namespaces of one machine, share a
//! machine-id; two hosts with the same machine-id and hostname must be told apart with
//! `--name`.

use std::path::Path;

use weft_gossip::PeerName;

use crate::store::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct Identity {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {error}; pass --name to choose a peer name")]
    MachineId { path: String, error: String },
}

/// The hostname, from the UTS namespace this process runs in.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The name derived from a machine id and a hostname.
pub fn derive_name(machine_id: &str, hostname: &str) -> PeerName {
    let digest = weft_crypto::hash(&[
        b"weft peer name",
        machine_id.trim().as_bytes(),
        hostname.as_bytes(),
    ]);
    let mut seed = [0u8; 6];
    seed.copy_from_slice(&digest[..6]);
    PeerName::from_seed(seed)
}

/// Resolves the peer name: `--name`, else the persisted one, else derived (and persisted).
pub fn resolve(
    explicit: Option<PeerName>,
    nickname: Option<String>,
    machine_id_file: &Path,
    store: &Store,
) -> Result<Identity, IdentityError> {
    let hostname = hostname();
    let name = match (explicit, store.peer_name()?) {
        (Some(name), _) => name,
        (None, Some(bytes)) => PeerName::from_bytes(bytes),
        (None, None) => {
            let machine_id =
                std::fs::read_to_string(machine_id_file).map_err(|e| IdentityError::MachineId {
                    path: machine_id_file.display().to_string(),
                    error: e.to_string(),
                })?;
            derive_name(&machine_id, &hostname)
        }
    };
    if store.peer_name()? != Some(name.to_bytes()) {
        store.set_peer_name(name.to_bytes())?;
    }
    Ok(Identity {
        name,
        nickname: nickname.unwrap_or(hostname),
        uid: weft_crypto::random_nonzero_u64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_depend_on_machine_id_and_hostname() {
        let a = derive_name("0123456789abcdef\n", "node-a");
        assert_eq!(a, derive_name("0123456789abcdef", "node-a"));
        assert_ne!(a, derive_name("0123456789abcdef", "node-b"));
        assert_ne!(a, derive_name("fedcba9876543210", "node-a"));
        assert_eq!(
            a.to_bytes()[0] & 0x03,
            0x02,
            "unicast, locally administered"
        );
    }
}
