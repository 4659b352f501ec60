//! Persistent router state in redb: the peer name, the operator-named targets and the IPAM
//! snapshot.
//!
//! redb commits are atomic and durable, so a crash mid-write leaves the previous state.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TARGETS: TableDefinition<&str, ()> = TableDefinition::new("targets");
const IPAM: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam");
const PEER_NAME: &str = "peer_name";
const IPAM_SNAPSHOT: &str = "snapshot";

#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store in `dir`. Fails if another router holds it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let path = dir.join("weft.redb");
        let db = Database::create(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(META).map_err(err)?;
        tx.open_table(TARGETS).map_err(err)?;
        tx.open_table(IPAM).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Store { db })
    }

    pub fn peer_name(&self) -> Result<Option<[u8; 6]>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(META).map_err(err)?;
        let value = table.get(PEER_NAME).map_err(err)?;
        Ok(value.and_then(|v| <[u8; 6]>::try_from(v.value()).ok()))
    }

    pub fn set_peer_name(&self, name: [u8; 6]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(META)
            .map_err(err)?
            .insert(PEER_NAME, &name[..])
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    pub fn targets(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(TARGETS).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (key, _) = row.map_err(err)?;
            out.push(key.value().to_owned());
        }
        Ok(out)
    }

    /// Replaces the target list in one transaction.
    pub fn set_targets(&self, targets: &[String]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(TARGETS).map_err(err)?;
            table.retain(|_, _| false).map_err(err)?;
            for target in targets {
                table.insert(target.as_str(), ()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

impl Store {
    /// The IPAM snapshot last written, if any.
    pub fn ipam_snapshot(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(IPAM).map_err(err)?;
        let value = table.get(IPAM_SNAPSHOT).map_err(err)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Replaces the IPAM snapshot. The commit is durable when this returns, and atomic: a crash
    /// leaves the previous snapshot or this one, never a mix.
    pub fn set_ipam_snapshot(&self, snapshot: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(IPAM)
            .map_err(err)?
            .insert(IPAM_SNAPSHOT, snapshot)
            .map_err(err)?;
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("weft-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open(&dir).unwrap();
            assert_eq!(store.peer_name().unwrap(), None);
            store.set_peer_name([2, 0, 0, 0, 0, 9]).unwrap();
            store.set_targets(&["a:1".into(), "b:2".into()]).unwrap();
            store.set_targets(&["b:2".into(), "c:3".into()]).unwrap();
            assert_eq!(store.ipam_snapshot().unwrap(), None);
            store.set_ipam_snapshot(b"one").unwrap();
            store.set_ipam_snapshot(b"two").unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.peer_name().unwrap(), Some([2, 0, 0, 0, 0, 9]));
        assert_eq!(
            store.targets().unwrap(),
            vec!["b:2".to_owned(), "c:3".to_owned()]
        );
        assert_eq!(store.ipam_snapshot().unwrap().as_deref(), Some(&b"two"[..]));
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
