use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }

    fn store(&self) -> PathBuf {
        self.0.join(FILE_NAME)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store holding a name, targets and a snapshot of `snapshot_len` bytes.
fn filled(dir: &Dir, snapshot_len: usize) -> Content {
    let store = Store::open(&dir.0).unwrap();
    store.set_peer_name([2, 0, 0, 0, 0, 9]).unwrap();
    store.set_targets(&["a:1".into(), "b:2".into()]).unwrap();
    let snapshot: Vec<u8> = (0..snapshot_len).map(|i| (i * 7) as u8).collect();
    store.set_ipam_snapshot(&snapshot).unwrap();
    store.lock().content().clone()
}

#[test]
fn state_survives_reopening() {
    let dir = Dir::new("reopen");
    {
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.peer_name().unwrap(), None);
        store.set_peer_name([2, 0, 0, 0, 0, 9]).unwrap();
        store.set_targets(&["a:1".into(), "b:2".into()]).unwrap();
        store.set_targets(&["b:2".into(), "c:3".into()]).unwrap();
        assert_eq!(store.ipam_snapshot().unwrap(), None);
        store.set_ipam_snapshot(b"one").unwrap();
        store.set_ipam_snapshot(b"two").unwrap();
    }
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(store.peer_name().unwrap(), Some([2, 0, 0, 0, 0, 9]));
    assert_eq!(
        store.targets().unwrap(),
        vec!["b:2".to_owned(), "c:3".to_owned()]
    );
    assert_eq!(store.ipam_snapshot().unwrap().as_deref(), Some(&b"two"[..]));
    assert!(store.recovered_from().is_none());
    assert_eq!(
        lastgood::read(&dir.0),
        CopyState::Intact(Saved {
            generation: 5,
            content: store.lock().content().clone()
        }),
        "the last-good copy follows every write"
    );
}

#[test]
fn a_second_router_on_the_same_directory_is_refused() {
    let dir = Dir::new("inuse");
    let _first = Store::open(&dir.0).unwrap();
    let err = Store::open(&dir.0).err().unwrap();
    assert!(err.0.contains("in use"), "{err}");
    let err = Store::open_with(&dir.0, Mode::Recover).err().unwrap();
    assert!(err.0.contains("in use"), "{err}");
}

#[test]
fn a_truncated_store_is_refused_and_rebuilt_from_the_last_good_copy() {
    let dir = Dir::new("truncated");
    let before = filled(&dir, 3000);
    std::fs::write(dir.store(), b"").unwrap();
    let err = Store::open(&dir.0).err().unwrap();
    assert!(
        err.0.contains("is empty") && err.0.contains(&dir.store().display().to_string()),
        "{err}"
    );
    assert!(err.0.contains("weft store recover"), "{err}");
    // Refusing changed nothing: the empty file is still there, no new identity was made.
    assert_eq!(std::fs::metadata(dir.store()).unwrap().len(), 0);

    let store = Store::open_with(&dir.0, Mode::Recover).unwrap();
    assert_eq!(*store.lock().content(), before);
    let record = store.recovered_from().unwrap().clone();
    assert_eq!(record.source, Source::LastGoodCopy);
    let aside = PathBuf::from(record.damaged_file.clone().unwrap());
    assert_eq!(
        std::fs::metadata(&aside).unwrap().len(),
        0,
        "the damaged file, kept"
    );
    drop(store);
    // The next normal start uses the rebuilt store, and still reports the recovery.
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(*store.lock().content(), before);
    assert_eq!(store.report(Instant::now()).recovered_from, Some(record));
}

#[test]
fn random_bytes_in_the_middle_are_an_error_not_a_panic() {
    let dir = Dir::new("corrupt");
    let before = filled(&dir, 200_000);
    let len = std::fs::metadata(dir.store()).unwrap().len() as usize;
    let mut bytes = std::fs::read(dir.store()).unwrap();
    let start = len / 2 - 8192;
    for (i, b) in bytes[start..start + 16384].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(17);
    }
    std::fs::write(dir.store(), &bytes).unwrap();
    let err = Store::open(&dir.0).err().unwrap();
    assert!(err.0.contains("corrupt"), "{err}");
    let store = Store::open_with(&dir.0, Mode::Recover).unwrap();
    assert_eq!(*store.lock().content(), before);
}

#[test]
fn with_the_copy_damaged_too_recovery_starts_empty_and_says_so() {
    let dir = Dir::new("both");
    filled(&dir, 100);
    std::fs::write(dir.store(), b"").unwrap();
    let copy = lastgood::path_in(&dir.0);
    let mut bytes = std::fs::read(&copy).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&copy, bytes).unwrap();
    let err = Store::open(&dir.0).err().unwrap();
    assert!(
        err.0.contains("damaged too") && err.0.contains("EMPTY"),
        "{err}"
    );
    let store = Store::open_with(&dir.0, Mode::Recover).unwrap();
    assert!(store.lock().content().is_empty());
    assert_eq!(store.recovered_from().unwrap().source, Source::Nothing);
    // A fresh copy replaces the damaged one (which is kept aside).
    assert!(
        matches!(lastgood::read(&dir.0), CopyState::Intact(s) if s.content.is_empty()),
        "{:?}",
        lastgood::read(&dir.0)
    );
}

#[test]
fn a_deleted_store_beside_its_copy_is_not_a_first_start() {
    let dir = Dir::new("deleted");
    let before = filled(&dir, 100);
    std::fs::remove_file(dir.store()).unwrap();
    let err = Store::open(&dir.0).err().unwrap();
    assert!(err.0.contains("missing"), "{err}");
    let store = Store::open_with(&dir.0, Mode::Recover).unwrap();
    assert_eq!(*store.lock().content(), before);
    assert_eq!(store.recovered_from().unwrap().damaged_file, None);
}

#[test]
fn a_store_from_before_the_copy_existed_gets_one() {
    let dir = Dir::new("upgrade");
    let before = filled(&dir, 100);
    std::fs::remove_file(lastgood::path_in(&dir.0)).unwrap();
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(*store.lock().content(), before);
    assert!(matches!(lastgood::read(&dir.0), CopyState::Intact(s) if s.content == before));
}

#[test]
fn a_store_that_lost_its_last_commit_is_refused_and_rebuilt_from_the_copy() {
    let dir = Dir::new("rolledback");
    filled(&dir, 100);
    let older = std::fs::read(dir.store()).unwrap();
    let after = {
        let store = Store::open(&dir.0).unwrap();
        store.set_ipam_snapshot(b"the last allocation").unwrap();
        store.lock().content().clone()
    };
    // The file as it was one commit earlier (what redb falls back to when the last commit is
    // damaged), beside the copy of the last commit.
    std::fs::write(dir.store(), older).unwrap();
    let err = Store::open(&dir.0).err().unwrap();
    assert!(err.0.contains("went back in time"), "{err}");
    let store = Store::open_with(&dir.0, Mode::Recover).unwrap();
    assert_eq!(*store.lock().content(), after);
}

/// IPAM on a store whose writes fail (the last-good copy's temp path is a directory, so the
/// copy cannot be written): ADDs are refused and released, STATUS says why, an address already
/// on disk is still answered, and the failure clears on the first write that works.
#[test]
fn ipam_refuses_adds_while_persistence_fails_and_recovers_by_itself() {
    use crate::ipam::{BridgeInfo, IpamHost, open_channel};
    use weft_cni::error as code;
    use weft_cni::protocol::AddRequest;
    use weft_gossip::ipam::SharedIpam;

    let dir = Dir::new("ipamfail");
    let store = Arc::new(Store::open(&dir.0).unwrap());
    let now = Instant::now();
    let name = weft_gossip::PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
    let channel = open_channel(&store, "10.32.0.0/12".parse().unwrap(), name, 7, now).unwrap();
    let mut host = IpamHost::new(
        SharedIpam::new(channel),
        store.clone(),
        Some(BridgeInfo {
            name: "weft".into(),
            mtu: 1414,
        }),
        Box::new(|_: &str, _, _| Ok(())),
        now,
    );
    let add = |host: &mut IpamHost, container: &str, at: Instant| {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let request = AddRequest {
            container_id: container.into(),
            ifname: "eth0".into(),
            netns: "/x".into(),
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            host_veth: None,
        };
        host.add(request, tx, at);
        host.step(at, true);
        rx.try_recv().unwrap()
    };
    let kept = add(&mut host, "kept", now).unwrap();
    assert!(host.status_check(now).is_ok());

    let blocker = dir.0.join(format!("{}.tmp", lastgood::FILE_NAME));
    std::fs::create_dir(&blocker).unwrap();
    let refused = add(&mut host, "refused", now).unwrap_err();
    assert_eq!(refused.body.code, code::IO_FAILURE);
    assert!(
        refused.body.details.contains("last-good copy"),
        "{}",
        refused.body.details
    );
    let status = host.status_check(now).unwrap_err();
    assert_eq!(status.body.code, code::NOT_AVAILABLE);
    assert!(
        status
            .body
            .details
            .starts_with("persistence: persistence failing"),
        "{}",
        status.body.details
    );
    assert!(
        store.health().failing().is_some(),
        "/readyz sees it when the router does not answer"
    );
    // An attachment whose address is on disk already is answered as before.
    assert_eq!(add(&mut host, "kept", now).unwrap(), kept);
    // The refused ADD's address was released, not kept in memory only.
    let later = now + std::time::Duration::from_secs(2);
    host.step(later, false);
    assert!(store.persistence_failing().is_some(), "still failing");
    let on_disk =
        weft_gossip::ipam::IpamSnapshot::from_bytes(&store.ipam_snapshot().unwrap().unwrap())
            .unwrap();
    assert!(
        on_disk
            .allocations
            .iter()
            .all(|(k, _)| k.container != "refused")
    );

    std::fs::remove_dir(&blocker).unwrap();
    // The next tick's retry is a real write, and it works: no ADD needed to clear it.
    let much_later = later + std::time::Duration::from_secs(2);
    host.step(much_later, false);
    assert!(store.persistence_failing().is_none());
    assert!(store.health().failing().is_none());
    assert!(host.status_check(much_later).is_ok());
    let report = store.report(much_later);
    assert_eq!(report.persistence, "ok");
    assert!(report.write_failures >= 2, "{report:?}");
    assert!(add(&mut host, "after", much_later).is_ok());
}
