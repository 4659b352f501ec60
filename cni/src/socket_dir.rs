//! Whether the directory holding the router's CNI socket can be trusted. Whoever can write the
//! directory can swap the socket for one of their own and hand pods addresses of their choosing,
//! so both ends (the router binding, the plugin connecting) refuse a directory that is not owned
//! by root, is writable by group or others, or is a symlink. The decision is [`check`], a pure
//! function of the directory's metadata; [`check_path`] reads that metadata.

use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The facts about a directory that the decision needs (from `lstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirFacts {
    pub is_symlink: bool,
    pub is_dir: bool,
    pub uid: u32,
    /// `st_mode`'s permission bits.
    pub mode: u32,
}

impl DirFacts {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let file_type = meta.file_type();
        Self {
            is_symlink: file_type.is_symlink(),
            is_dir: file_type.is_dir(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// Why a socket directory is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsafe {
    Symlink,
    NotADirectory,
    NotRootOwned {
        uid: u32,
    },
    Writable {
        mode: u32,
    },
    /// The directory could not be inspected.
    Unreadable(String),
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Symlink => write!(f, "it is a symlink"),
            Self::NotADirectory => write!(f, "it is not a directory"),
            Self::NotRootOwned { uid } => write!(f, "it is owned by uid {uid}, not root"),
            Self::Writable { mode } => {
                write!(f, "it is writable by group or others (mode {mode:04o})")
            }
            Self::Unreadable(e) => write!(f, "it cannot be inspected: {e}"),
        }
    }
}

/// A refused socket directory, with the remedy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeSocketDir {
    pub dir: PathBuf,
    pub why: Unsafe,
}

impl fmt::Display for UnsafeSocketDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing the CNI socket directory {}: {}; whoever can write it can replace the \
             socket. Make it a real directory owned by root with mode 0755 or 0700 \
             (chown root:root {0}; chmod 0755 {0})",
            self.dir.display(),
            self.why
        )
    }
}

impl std::error::Error for UnsafeSocketDir {}

/// The decision: a socket directory is trusted only if it is a real directory owned by root
/// that neither group nor others can write.
pub fn check(facts: DirFacts) -> Result<(), Unsafe> {
    if facts.is_symlink {
        return Err(Unsafe::Symlink);
    }
    if !facts.is_dir {
        return Err(Unsafe::NotADirectory);
    }
    if facts.uid != 0 {
        return Err(Unsafe::NotRootOwned { uid: facts.uid });
    }
    if facts.mode & 0o022 != 0 {
        return Err(Unsafe::Writable { mode: facts.mode });
    }
    Ok(())
}

/// The directory a socket path lives in (`.` for a bare file name).
pub fn dir_of(socket: &Path) -> PathBuf {
    match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks the directory of `socket` on the filesystem (`lstat`, so a symlink is seen as one).
pub fn check_path(socket: &Path) -> Result<(), UnsafeSocketDir> {
    let dir = dir_of(socket);
    let why = match std::fs::symlink_metadata(&dir) {
        Ok(meta) => check(DirFacts::of(&meta)),
        Err(e) => Err(Unsafe::Unreadable(e.to_string())),
    };
    why.map_err(|why| UnsafeSocketDir { dir, why })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_DIR: DirFacts = DirFacts {
        is_symlink: false,
        is_dir: true,
        uid: 0,
        mode: 0o755,
    };

    #[test]
    fn a_private_root_directory_is_trusted() {
        assert_eq!(check(ROOT_DIR), Ok(()));
        assert_eq!(
            check(DirFacts {
                mode: 0o700,
                ..ROOT_DIR
            }),
            Ok(())
        );
        assert_eq!(
            check(DirFacts {
                mode: 0o1755,
                ..ROOT_DIR
            }),
            Ok(())
        );
    }

    #[test]
    fn writable_foreign_or_linked_directories_are_refused() {
        for mode in [0o777, 0o775, 0o757, 0o1777, 0o720, 0o702] {
            assert_eq!(
                check(DirFacts { mode, ..ROOT_DIR }),
                Err(Unsafe::Writable { mode }),
                "{mode:o}"
            );
        }
        assert_eq!(
            check(DirFacts {
                uid: 1000,
                ..ROOT_DIR
            }),
            Err(Unsafe::NotRootOwned { uid: 1000 })
        );
        assert_eq!(
            check(DirFacts {
                is_symlink: true,
                is_dir: false,
                ..ROOT_DIR
            }),
            Err(Unsafe::Symlink)
        );
        assert_eq!(
            check(DirFacts {
                is_dir: false,
                ..ROOT_DIR
            }),
            Err(Unsafe::NotADirectory)
        );
    }

    #[test]
    fn the_error_names_the_directory_and_the_remedy() {
        let e = UnsafeSocketDir {
            dir: "/tmp/x".into(),
            why: Unsafe::Writable { mode: 0o777 },
        };
        let text = e.to_string();
        assert!(text.contains("/tmp/x") && text.contains("0777") && text.contains("chmod"));
        assert_eq!(dir_of(Path::new("cni.sock")), PathBuf::from("."));
        assert_eq!(
            dir_of(Path::new("/run/weft/cni.sock")),
            PathBuf::from("/run/weft")
        );
    }

    #[test]
    fn real_directories() {
        let base = std::env::temp_dir().join(format!("weft-socket-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let open = base.join("open");
        std::fs::create_dir_all(&open).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_path(&open.join("cni.sock")).unwrap_err();
        // Owned by whoever runs the tests: refused for its owner (not root) or its mode.
        assert!(
            matches!(
                err.why,
                Unsafe::Writable { .. } | Unsafe::NotRootOwned { .. }
            ),
            "{err}"
        );
        let link = base.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert_eq!(
            check_path(&link.join("cni.sock")).unwrap_err().why,
            Unsafe::Symlink
        );
        let missing = check_path(&base.join("missing/cni.sock")).unwrap_err();
        assert!(matches!(missing.why, Unsafe::Unreadable(_)), "{missing}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
