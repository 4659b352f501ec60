//! The last-good copy: everything the store holds (peer name, dial targets, IPAM snapshot) in
//! one small file beside it, `weft.lastgood`, rewritten after every commit.
//!
//! It exists so that a damaged `weft.redb` can be rebuilt without losing the peer name or an
//! allocation. The file is written atomically (temp file, fsync, rename, fsync of the
//! directory) and carries a checksum, so a torn or damaged copy is detected, never trusted.
//!
//! Layout: `WEFTLG01` | payload length (u64 LE) | BLAKE2b-256 of the payload | payload.
//! Payload: generation (u64 LE) | flags (bit 0: peer name, bit 1: IPAM snapshot) | peer name
//! (6 bytes, if set) |
//! target count (u32 LE), each target as length (u32 LE) + UTF-8 | snapshot length (u64 LE) +
//! bytes (if set).

use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "weft.lastgood";
const MAGIC: &[u8; 8] = b"WEFTLG01";
const HEADER: usize = 8 + 8 + 32;
/// Far above any real snapshot (a full /8 ring is a few MB): a length beyond it is damage.
const MAX_PAYLOAD: u64 = 256 << 20;

/// What the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    pub peer_name: Option<[u8; 6]>,
    pub targets: Vec<String>,
    pub ipam_snapshot: Option<Vec<u8>>,
}

impl Content {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.peer_name.is_none() && self.ipam_snapshot.is_none() && self.targets.is_empty()
    }
}

/// Content and its generation: the number of the store's commit that wrote it. The store
/// counts its commits and the copy carries the count of the commit it copies, so a store that
/// went back in time (a torn last commit that redb silently rolled back, an older file put in
/// its place) is told from a copy that is merely behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    pub generation: u64,
    pub content: Content,
}

/// What was found where the copy should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    Absent,
    /// Present but not trustworthy: why.
    Damaged(String),
    Intact(Saved),
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn checksum(payload: &[u8]) -> [u8; 32] {
    weft_crypto::hash(&[b"weft last-good copy", payload])
}

pub fn encode(saved: &Saved) -> Vec<u8> {
    let content = &saved.content;
    let mut payload = Vec::new();
    payload.extend_from_slice(&saved.generation.to_le_bytes());
    let flags =
        u8::from(content.peer_name.is_some()) | (u8::from(content.ipam_snapshot.is_some()) << 1);
    payload.push(flags);
    if let Some(name) = content.peer_name {
        payload.extend_from_slice(&name);
    }
    payload.extend_from_slice(&(content.targets.len() as u32).to_le_bytes());
    for target in &content.targets {
        payload.extend_from_slice(&(target.len() as u32).to_le_bytes());
        payload.extend_from_slice(target.as_bytes());
    }
    if let Some(snapshot) = &content.ipam_snapshot {
        payload.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
        payload.extend_from_slice(snapshot);
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(&payload));
    out.extend_from_slice(&payload);
    out
}

/// A reader over the payload that fails instead of panicking on short input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated payload".to_owned());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

pub fn decode(bytes: &[u8]) -> Result<Saved, String> {
    if bytes.len() < HEADER {
        return Err(format!("{} bytes, shorter than its header", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a weft last-good copy (bad magic)".to_owned());
    }
    let mut header = Reader(&bytes[8..HEADER]);
    let len = header.u64()?;
    let sum = header.take(32)?;
    let payload = &bytes[HEADER..];
    if len > MAX_PAYLOAD || payload.len() as u64 != len {
        return Err(format!(
            "payload of {} bytes, header says {len}",
            payload.len()
        ));
    }
    if checksum(payload) != sum {
        return Err("checksum mismatch".to_owned());
    }
    let mut r = Reader(payload);
    let generation = r.u64()?;
    let flags = r.take(1)?[0];
    if flags & !0b11 != 0 {
        return Err(format!("unknown flags {flags:#x}"));
    }
    let peer_name = if flags & 1 != 0 {
        let mut name = [0u8; 6];
        name.copy_from_slice(r.take(6)?);
        Some(name)
    } else {
        None
    };
    let count = r.u32()?;
    let mut targets = Vec::new();
    for _ in 0..count {
        let len = r.u32()?;
        let raw = r.take(len)?;
        targets.push(String::from_utf8(raw.to_vec()).map_err(|_| "a target is not UTF-8")?);
    }
    let ipam_snapshot = if flags & 2 != 0 {
        let len = usize::try_from(r.u64()?).map_err(|_| "snapshot length overflows")?;
        Some(r.take(len)?.to_vec())
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err(format!("{} trailing bytes", r.0.len()));
    }
    Ok(Saved {
        generation,
        content: Content {
            peer_name,
            targets,
            ipam_snapshot,
        },
    })
}

/// Reads the copy in `dir`.
pub fn read(dir: &Path) -> CopyState {
    let path = path_in(dir);
    match std::fs::read(&path) {
        Ok(bytes) => match decode(&bytes) {
            Ok(content) => CopyState::Intact(content),
            Err(e) => CopyState::Damaged(e),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CopyState::Absent,
        Err(e) => CopyState::Damaged(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the copy atomically: a crash or a full disk leaves the previous copy or this one.
pub fn write(dir: &Path, saved: &Saved) -> std::io::Result<()> {
    let path = path_in(dir);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&encode(saved))?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // A partial temp file must not hold space on a full disk.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Saved {
        Saved {
            generation: 41,
            content: Content {
                peer_name: Some([2, 0, 0, 0, 0, 9]),
                targets: vec!["10.0.0.1:6783".into(), "node-b:6783".into()],
                ipam_snapshot: Some((0..=255u8).cycle().take(5000).collect()),
            },
        }
    }

    #[test]
    fn contents_round_trip() {
        for content in [sample(), Saved::default()] {
            assert_eq!(decode(&encode(&content)).unwrap(), content);
        }
    }

    #[test]
    fn any_damage_is_detected() {
        let good = encode(&sample());
        assert!(decode(&[]).is_err());
        for cut in [1, HEADER - 1, HEADER, good.len() - 1] {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        for at in [0, 9, 20, HEADER, HEADER + 3, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {at}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn the_file_is_replaced_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("weft-lastgood-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir), CopyState::Absent);
        write(&dir, &Saved::default()).unwrap();
        write(&dir, &sample()).unwrap();
        assert_eq!(read(&dir), CopyState::Intact(sample()));
        assert!(!dir.join(format!("{FILE_NAME}.tmp")).exists());
        std::fs::write(path_in(&dir), b"").unwrap();
        assert!(matches!(read(&dir), CopyState::Damaged(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
