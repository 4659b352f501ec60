//! What to do with the state store at start-up: use it, create it, refuse to start, or rebuild
//! it (from the last-good copy, or from nothing). A pure function of what was found on disk
//! and whether the operator asked for recovery; the store module does the I/O.
//!
//! The rules:
//! - No store and no copy: the first start, the store is created.
//! - A healthy store is used. Its last-good copy is rewritten when it is missing, damaged or
//!   behind. A store *behind* its copy (an older generation: the copy is only ever written after
//!   the store's commit, so the store lost a commit — redb falls back to the previous commit
//!   when the last one is damaged — or an older file was put in its place) or differing from a
//!   copy of the same generation is not healthy: it is treated as damaged.
//! - An empty, corrupt or unreadable store, or a missing store beside a copy, stops start-up
//!   with an error that names the file and the recovery command. Nothing is discarded without
//!   the operator asking.
//! - Asked to recover (`weft store recover`, `weft router --recover-store`): the damaged file
//!   is moved aside and the store rebuilt from the copy when it is intact, or from nothing when
//!   it is not — said loudly, since allocations are then lost.
//! - A store another process holds is never touched.

use serde::{Deserialize, Serialize};

use super::lastgood::{Content, CopyState, Saved};

/// What was found at the store's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    /// No file: never created, or moved away.
    Absent,
    /// A file of zero bytes.
    Empty,
    /// Another process holds it (another router with the same data directory).
    InUse,
    /// Opening or reading failed with an I/O error: not known to be damage (a full disk, a
    /// permission) but not usable either.
    IoFailed(String),
    /// redb refused it as corrupt, or panicked reading it.
    Corrupt(String),
    Healthy(Saved),
}

/// Start normally, or recover a damaged store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Start,
    Recover,
}

/// Where a rebuilt store's content comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    LastGoodCopy,
    Nothing,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::LastGoodCopy => "last-good copy",
            Source::Nothing => "nothing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Use the store. `rewrite_copy`: why the last-good copy must be written again.
    /// `note`: worth saying (at info level, or warn when the copy was damaged).
    Use {
        saved: Saved,
        rewrite_copy: Option<String>,
        note: Option<String>,
    },
    /// Create an empty store (`note`: worth saying, e.g. nothing to recover).
    Create { note: Option<String> },
    /// Stop start-up with this error.
    Refuse(String),
    /// Move the damaged file aside (when there is one) and write `content` into a new store.
    Rebuild {
        move_aside: bool,
        saved: Saved,
        source: Source,
        /// Why the store was rebuilt (what was wrong with it).
        reason: String,
    },
}

/// The names the messages use.
#[derive(Debug, Clone)]
pub struct Names<'a> {
    pub store: &'a str,
    pub copy: &'a str,
    pub data_dir: &'a str,
}

impl Names<'_> {
    fn command(&self) -> String {
        format!(
            "`weft store recover --data-dir {}` with the router stopped (or start the router once with --recover-store, WEFT_RECOVER_STORE=true)",
            self.data_dir
        )
    }

    /// What recovery would do, given the copy.
    fn remedy(&self, copy: &CopyState) -> String {
        match copy {
            CopyState::Intact(_) => format!(
                "The last-good copy {} is intact: {} moves the damaged file aside and rebuilds the store from it, keeping the peer name and every allocation.",
                self.copy,
                self.command()
            ),
            CopyState::Damaged(why) => format!(
                "The last-good copy {} is damaged too ({why}): {} moves the damaged file aside and starts with an EMPTY store (the allocations on this host are lost).",
                self.copy,
                self.command()
            ),
            CopyState::Absent => format!(
                "There is no last-good copy ({}): {} moves the damaged file aside and starts with an EMPTY store (the allocations on this host are lost).",
                self.copy,
                self.command()
            ),
        }
    }
}

/// Why a store that opened must still be treated as damaged: it is behind its copy, or differs
/// from a copy of the same generation.
fn contradiction(store: &Saved, copy: &CopyState) -> Option<String> {
    let CopyState::Intact(copy) = copy else {
        return None;
    };
    if store.generation < copy.generation {
        return Some(format!(
            "it went back in time: its last commit is number {}, but its last-good copy holds commit {} (a damaged last commit was rolled back, or an older file was put in its place)",
            store.generation, copy.generation
        ));
    }
    if store.generation == copy.generation && store.content != copy.content {
        return Some(format!(
            "it differs from its last-good copy of the same commit ({})",
            store.generation
        ));
    }
    None
}

fn rebuild(move_aside: bool, copy: CopyState, reason: String) -> Decision {
    let (saved, source) = match copy {
        CopyState::Intact(saved) => (saved, Source::LastGoodCopy),
        CopyState::Absent | CopyState::Damaged(_) => (Saved::default(), Source::Nothing),
    };
    Decision::Rebuild {
        move_aside,
        saved,
        source,
        reason,
    }
}

pub fn decide(store: StoreState, copy: CopyState, mode: Mode, names: &Names<'_>) -> Decision {
    let store = match store {
        StoreState::Healthy(saved) => match contradiction(&saved, &copy) {
            Some(why) => StoreState::Corrupt(why),
            None => StoreState::Healthy(saved),
        },
        other => other,
    };
    let recover = mode == Mode::Recover;
    match store {
        StoreState::InUse => Decision::Refuse(format!(
            "the state store {} is in use by another process (another weft router with the same --data-dir?); it is left alone",
            names.store
        )),
        StoreState::Healthy(saved) => {
            let rewrite_copy = match &copy {
                CopyState::Intact(c) if *c == saved => None,
                CopyState::Intact(_) => Some("it is behind the store".to_owned()),
                CopyState::Absent => Some("there is none yet".to_owned()),
                CopyState::Damaged(why) => Some(format!("it was damaged ({why})")),
            };
            let note = match (&copy, recover) {
                (_, true) => Some(format!(
                    "the state store {} is healthy: nothing to recover",
                    names.store
                )),
                (CopyState::Damaged(why), false) => Some(format!(
                    "the last-good copy {} was damaged ({why}); it is written again from the healthy store",
                    names.copy
                )),
                _ => None,
            };
            Decision::Use {
                saved,
                rewrite_copy,
                note,
            }
        }
        StoreState::Absent => match (&copy, recover) {
            (CopyState::Absent, _) => Decision::Create {
                note: recover.then(|| {
                    format!(
                        "there is no state store {} yet: nothing to recover",
                        names.store
                    )
                }),
            },
            (_, true) => rebuild(false, copy, format!("{} was missing", names.store)),
            (_, false) => Decision::Refuse(format!(
                "the state store {} is missing, but the data directory holds a last-good copy: this router had state that is gone. Start-up stopped so that its peer name and allocations are not silently replaced. {}",
                names.store,
                names.remedy(&copy)
            )),
        },
        StoreState::Empty | StoreState::Corrupt(_) | StoreState::IoFailed(_) if recover => {
            let reason = match &store {
                StoreState::Empty => "was empty (0 bytes)".to_owned(),
                StoreState::Corrupt(why) => format!("was corrupt ({why})"),
                StoreState::IoFailed(why) => format!("could not be read ({why})"),
                _ => String::new(),
            };
            rebuild(true, copy, format!("{} {reason}", names.store))
        }
        StoreState::Empty => Decision::Refuse(format!(
            "the state store {} is empty (0 bytes): the peer name and IP allocations it held are gone from it. Start-up stopped so they are not silently replaced. {}",
            names.store,
            names.remedy(&copy)
        )),
        StoreState::Corrupt(why) => Decision::Refuse(format!(
            "the state store {} is corrupt ({why}). Start-up stopped so this router's peer name and allocations are not silently replaced. {}",
            names.store,
            names.remedy(&copy)
        )),
        StoreState::IoFailed(why) => Decision::Refuse(format!(
            "cannot open the state store {}: {why}. This is an I/O error, not known damage: fix the disk (space, permissions, device) and start again. If the file itself is damaged: {}",
            names.store,
            names.remedy(&copy)
        )),
    }
}

/// What is said about a rebuild, in the log and on the recover command's output.
pub fn rebuild_message(
    source: Source,
    content: &Content,
    reason: &str,
    aside: Option<&str>,
) -> String {
    let aside = aside
        .map(|a| format!(" The damaged file was moved to {a}."))
        .unwrap_or_default();
    match source {
        Source::LastGoodCopy => format!(
            "the state store was rebuilt from the last-good copy: {reason}.{aside} Kept: peer name {}, IPAM state {}, {} dial targets.",
            content
                .peer_name
                .map(|n| weft_gossip::PeerName::from_bytes(n).to_string())
                .unwrap_or_else(|| "(none)".to_owned()),
            content
                .ipam_snapshot
                .as_ref()
                .map(|s| format!("of {} bytes", s.len()))
                .unwrap_or_else(|| "(none yet)".to_owned()),
            content.targets.len()
        ),
        Source::Nothing => format!(
            "THE STATE STORE STARTS EMPTY: {reason}, and there was no intact last-good copy.{aside} This router's IP allocations are lost and its peer name is derived again: pods on this host may hold addresses the ring no longer knows (restart them), and if the peer name changed, reclaim the old one's space with `weft rmpeer` on another peer."
        ),
    }
}

/// A recovery, kept in the rebuilt store and shown in `/report` (`store.recovered_from`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// Where the damaged file was moved, if there was one.
    pub damaged_file: Option<String>,
    /// `last-good-copy` or `nothing`.
    pub source: Source,
    /// What was wrong with the store.
    pub reason: String,
    /// When (seconds since the Unix epoch).
    pub at_unix_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(generation: u64, content: Content) -> Saved {
        Saved {
            generation,
            content,
        }
    }

    const NAMES: Names<'static> = Names {
        store: "/d/weft.redb",
        copy: "/d/weft.lastgood",
        data_dir: "/d",
    };

    fn full() -> Content {
        Content {
            peer_name: Some([2, 0, 0, 0, 0, 1]),
            targets: vec!["10.0.0.1:6783".into()],
            ipam_snapshot: Some(vec![1, 2, 3]),
        }
    }

    fn damaged_states() -> Vec<StoreState> {
        vec![
            StoreState::Empty,
            StoreState::Corrupt("unreachable code".into()),
            StoreState::IoFailed("Input/output error".into()),
        ]
    }

    fn copies() -> Vec<CopyState> {
        vec![
            CopyState::Absent,
            CopyState::Damaged("checksum mismatch".into()),
            CopyState::Intact(saved(5, full())),
        ]
    }

    #[test]
    fn the_first_start_creates_the_store() {
        for mode in [Mode::Start, Mode::Recover] {
            let d = decide(StoreState::Absent, CopyState::Absent, mode, &NAMES);
            assert!(matches!(d, Decision::Create { .. }), "{d:?}");
        }
    }

    #[test]
    fn a_damaged_store_stops_start_up_naming_the_file_and_the_command() {
        for store in damaged_states() {
            for copy in copies() {
                let Decision::Refuse(msg) =
                    decide(store.clone(), copy.clone(), Mode::Start, &NAMES)
                else {
                    panic!("{store:?} {copy:?} must refuse");
                };
                assert!(msg.contains("/d/weft.redb"), "{msg}");
                assert!(msg.contains("weft store recover --data-dir /d"), "{msg}");
                assert!(msg.contains("--recover-store"), "{msg}");
                match copy {
                    CopyState::Intact(_) => assert!(msg.contains("keeping the peer name"), "{msg}"),
                    _ => assert!(msg.contains("EMPTY"), "{msg}"),
                }
            }
        }
    }

    #[test]
    fn recovery_trusts_an_intact_copy_and_otherwise_starts_from_nothing() {
        for store in damaged_states() {
            let d = decide(
                store.clone(),
                CopyState::Intact(saved(5, full())),
                Mode::Recover,
                &NAMES,
            );
            assert_eq!(
                d,
                Decision::Rebuild {
                    move_aside: true,
                    saved: saved(5, full()),
                    source: Source::LastGoodCopy,
                    reason: match &d {
                        Decision::Rebuild { reason, .. } => reason.clone(),
                        _ => unreachable!(),
                    },
                }
            );
            for copy in [CopyState::Absent, CopyState::Damaged("x".into())] {
                let d = decide(store.clone(), copy, Mode::Recover, &NAMES);
                assert!(
                    matches!(
                        &d,
                        Decision::Rebuild { move_aside: true, source: Source::Nothing, saved, .. }
                            if saved.content.is_empty() && saved.generation == 0
                    ),
                    "{d:?}"
                );
            }
        }
    }

    #[test]
    fn a_missing_store_beside_a_copy_is_damage_not_a_first_start() {
        for copy in [
            CopyState::Intact(saved(5, full())),
            CopyState::Damaged("x".into()),
        ] {
            let d = decide(StoreState::Absent, copy.clone(), Mode::Start, &NAMES);
            assert!(
                matches!(&d, Decision::Refuse(m) if m.contains("missing")),
                "{d:?}"
            );
            let d = decide(StoreState::Absent, copy, Mode::Recover, &NAMES);
            assert!(
                matches!(
                    d,
                    Decision::Rebuild {
                        move_aside: false,
                        ..
                    }
                ),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_store_behind_its_copy_is_damaged() {
        // A replaced file (a new empty database) and a rolled-back last commit alike.
        for store in [saved(0, Content::default()), saved(4, full())] {
            let d = decide(
                StoreState::Healthy(store.clone()),
                CopyState::Intact(saved(5, full())),
                Mode::Start,
                &NAMES,
            );
            assert!(
                matches!(&d, Decision::Refuse(m) if m.contains("went back in time")),
                "{d:?}"
            );
            let d = decide(
                StoreState::Healthy(store),
                CopyState::Intact(saved(5, full())),
                Mode::Recover,
                &NAMES,
            );
            assert!(
                matches!(&d, Decision::Rebuild { source: Source::LastGoodCopy, saved: s, .. } if *s == saved(5, full())),
                "{d:?}"
            );
        }
        let mut other = full();
        other.ipam_snapshot = Some(vec![9]);
        let d = decide(
            StoreState::Healthy(saved(5, other)),
            CopyState::Intact(saved(5, full())),
            Mode::Start,
            &NAMES,
        );
        assert!(
            matches!(&d, Decision::Refuse(m) if m.contains("differs")),
            "{d:?}"
        );
    }

    #[test]
    fn a_healthy_store_is_used_and_its_copy_kept_current() {
        let use_of = |copy| {
            decide(
                StoreState::Healthy(saved(5, full())),
                copy,
                Mode::Start,
                &NAMES,
            )
        };
        assert_eq!(
            use_of(CopyState::Intact(saved(5, full()))),
            Decision::Use {
                saved: saved(5, full()),
                rewrite_copy: None,
                note: None
            }
        );
        // The copy is behind when a crash or a full disk came between the store's commit and
        // the copy's write: the store wins, whatever it holds.
        let mut older = full();
        older.ipam_snapshot = Some(vec![1]);
        older.targets.push("gone:1".into());
        for copy in [
            CopyState::Absent,
            CopyState::Damaged("x".into()),
            CopyState::Intact(saved(4, older)),
            CopyState::Intact(saved(1, Content::default())),
        ] {
            assert!(
                matches!(use_of(copy.clone()), Decision::Use { rewrite_copy: Some(_), saved: s, .. } if s == saved(5, full())),
                "{copy:?}"
            );
        }
        // Asked to recover a healthy store: it is used as it is, and that is said.
        assert!(matches!(
            decide(StoreState::Healthy(saved(5, full())), CopyState::Intact(saved(5, full())), Mode::Recover, &NAMES),
            Decision::Use { note: Some(n), .. } if n.contains("nothing to recover")
        ));
    }

    #[test]
    fn a_store_in_use_is_never_touched() {
        for mode in [Mode::Start, Mode::Recover] {
            for copy in copies() {
                let d = decide(StoreState::InUse, copy, mode, &NAMES);
                assert!(
                    matches!(&d, Decision::Refuse(m) if m.contains("in use")),
                    "{d:?}"
                );
            }
        }
    }

    #[test]
    fn starting_from_nothing_is_said_loudly() {
        let msg = rebuild_message(
            Source::Nothing,
            &Content::default(),
            "it was empty",
            Some("/d/x"),
        );
        assert!(
            msg.contains("STARTS EMPTY") && msg.contains("/d/x"),
            "{msg}"
        );
        let msg = rebuild_message(Source::LastGoodCopy, &full(), "it was empty", None);
        assert!(
            msg.contains("02:00:00:00:00:01") && msg.contains("1 dial targets"),
            "{msg}"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn content() -> impl Strategy<Value = Content> {
        (
            proptest::option::of(any::<[u8; 6]>()),
            proptest::collection::vec("[a-c]:[1-3]", 0..3),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4)),
        )
            .prop_map(|(peer_name, targets, ipam_snapshot)| Content {
                peer_name,
                targets,
                ipam_snapshot,
            })
    }

    fn saved() -> impl Strategy<Value = Saved> {
        (0u64..4, content()).prop_map(|(generation, content)| Saved {
            generation,
            content,
        })
    }

    fn store_state() -> impl Strategy<Value = StoreState> {
        prop_oneof![
            Just(StoreState::Absent),
            Just(StoreState::Empty),
            Just(StoreState::InUse),
            Just(StoreState::IoFailed("EIO".into())),
            Just(StoreState::Corrupt("bad page".into())),
            saved().prop_map(StoreState::Healthy),
        ]
    }

    fn copy_state() -> impl Strategy<Value = CopyState> {
        prop_oneof![
            Just(CopyState::Absent),
            Just(CopyState::Damaged("checksum".into())),
            saved().prop_map(CopyState::Intact),
        ]
    }

    const NAMES: Names<'static> = Names {
        store: "/d/weft.redb",
        copy: "/d/weft.lastgood",
        data_dir: "/d",
    };

    proptest! {
        /// Whatever is on disk: nothing is discarded without the operator asking, a refusal
        /// names the file, a store another process holds is never touched, and no decision
        /// ends up behind an intact copy (which would lose acknowledged allocations).
        #[test]
        fn no_decision_loses_what_the_copy_holds(
            store in store_state(),
            copy in copy_state(),
            recover in any::<bool>(),
        ) {
            let mode = if recover { Mode::Recover } else { Mode::Start };
            let decision = decide(store.clone(), copy.clone(), mode, &NAMES);
            let copy_saved = match &copy {
                CopyState::Intact(s) => Some(s.clone()),
                _ => None,
            };
            match &decision {
                Decision::Refuse(message) => {
                    prop_assert!(message.contains("/d/weft.redb"), "{}", message);
                }
                Decision::Create { .. } => {
                    prop_assert_eq!(&store, &StoreState::Absent);
                    prop_assert_eq!(&copy, &CopyState::Absent);
                }
                Decision::Use { saved, rewrite_copy, .. } => {
                    prop_assert_eq!(&store, &StoreState::Healthy(saved.clone()));
                    if let Some(c) = &copy_saved {
                        prop_assert!(saved.generation >= c.generation);
                        prop_assert_eq!(rewrite_copy.is_none(), c == saved);
                    } else {
                        prop_assert!(rewrite_copy.is_some());
                    }
                }
                Decision::Rebuild { saved, source, move_aside, .. } => {
                    prop_assert!(recover, "rebuilt without being asked");
                    prop_assert_ne!(&store, &StoreState::InUse);
                    prop_assert_eq!(*move_aside, store != StoreState::Absent);
                    match copy_saved {
                        Some(c) => {
                            prop_assert_eq!(*source, Source::LastGoodCopy);
                            prop_assert_eq!(saved, &c);
                        }
                        None => {
                            prop_assert_eq!(*source, Source::Nothing);
                            prop_assert_eq!(saved, &Saved::default());
                        }
                    }
                }
            }
            if store == StoreState::InUse {
                prop_assert!(matches!(decision, Decision::Refuse(_)));
            }
            // Without recovery asked, only a healthy store or a first start goes on.
            if !recover && !matches!(decision, Decision::Refuse(_)) {
                let goes_on = matches!(
                    (&store, &decision),
                    (StoreState::Healthy(_), Decision::Use { .. })
                        | (StoreState::Absent, Decision::Create { .. })
                );
                prop_assert!(goes_on, "{:?} {:?}", store, decision);
            }
        }
    }
}
