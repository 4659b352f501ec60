//! Persistent router state in redb (`weft.redb` in `--data-dir`): the peer name, the
//! operator-named targets and the IPAM snapshot, with a last-good copy of all of it beside the
//! database (`weft.lastgood`, see [`lastgood`]).
//!
//! redb commits are atomic and durable, so a crash mid-write leaves the previous state. A file
//! damaged outside redb (truncated, overwritten, replaced) is never silently replaced by a new
//! identity: start-up stops with an error naming the file and the recovery command, and
//! recovery rebuilds the store from the last-good copy (see [`recovery`]). Panics inside redb
//! become errors ([`guard`]). A failed write is reported until a write succeeds again, and the
//! database is re-opened after an I/O error ([`persistence`]).
//!
//! The content is read once, when the store is opened and verified; reads are served from
//! memory after that.

mod guard;
pub mod lastgood;
mod persistence;
pub mod recovery;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
    TableError,
};
use serde::{Deserialize, Serialize};

use lastgood::{Content, CopyState, Saved};
use persistence::{Backend, CommitError, Writer};
pub use recovery::Mode;
use recovery::{Decision, Names, RecoveryRecord, Source, StoreState};

pub const FILE_NAME: &str = "weft.redb";
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TARGETS: TableDefinition<&str, ()> = TableDefinition::new("targets");
const IPAM: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam");
const PEER_NAME: &str = "peer_name";
const RECOVERED_FROM: &str = "recovered_from";
/// The number of commits (see [`Saved`]), u64 LE.
const GENERATION: &str = "generation";
const IPAM_SNAPSHOT: &str = "snapshot";

#[derive(Debug, Clone, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(String);

/// Start-up could not open the store; the message names the file and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct OpenRefused(pub String);

/// What `/readyz` needs to know when the router actor does not answer: why persistence fails, if
/// it does.
#[derive(Debug, Default)]
pub struct StoreHealth {
    failing: Mutex<Option<String>>,
}

impl StoreHealth {
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, failing: Option<String>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = failing;
    }
}

/// `store` in `/report` (field names are an interface).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreReport {
    /// The database file.
    pub path: String,
    /// The last-good copy beside it.
    pub last_good_copy: String,
    /// `ok`, or `failing` while writes fail (ADDs are refused, CNI STATUS and `/readyz` say
    /// why); it clears when a write succeeds again.
    pub persistence: String,
    /// While failing: the last error and how long ago the failure began.
    pub error: Option<String>,
    pub failing_secs: Option<u64>,
    pub write_failures: u64,
    /// Databases re-opened after a failed write, and re-opens that failed.
    pub reopens: u64,
    pub reopen_failures: u64,
    /// The last recovery of this store (`weft store recover` / `--recover-store`), if any.
    pub recovered_from: Option<RecoveryRecord>,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The redb database and the last-good copy, as [`persistence::Writer`] drives them.
struct RedbBackend {
    dir: PathBuf,
    path: PathBuf,
    db: Option<Database>,
    /// What the database holds (committed).
    in_db: Saved,
    /// What the last-good copy holds, when known.
    in_copy: Option<Saved>,
}

impl Backend for RedbBackend {
    fn is_open(&self) -> bool {
        self.db.is_some()
    }

    fn open(&mut self) -> Result<(), String> {
        self.close();
        match open_verified(&self.path) {
            Ok(db) => {
                // What a commit that failed part-way left is what the file holds now.
                let (saved, _) = guard::catch(|| read_content(&db))?.map_err(|e| e.to_string())?;
                self.in_db = saved;
                self.db = Some(db);
                Ok(())
            }
            Err(state) => Err(describe(&state)),
        }
    }

    fn close(&mut self) {
        if let Some(db) = self.db.take() {
            // Closing flushes: redb may panic there too after damage.
            if let Err(panic) = guard::catch(move || drop(db)) {
                tracing::warn!(error = %panic, "closing the state store");
            }
        }
    }

    fn commit(&mut self, wanted: &Content, force: bool) -> Result<(), CommitError> {
        if force || self.in_db.content != *wanted {
            let db = self.db.as_ref().ok_or_else(|| CommitError {
                message: "the store is closed".to_owned(),
                reopen: true,
            })?;
            let in_db = &self.in_db;
            // Past the copy's too: a re-opened database may have rolled a torn commit back,
            // and a generation must never name two different contents.
            let generation = in_db
                .generation
                .max(self.in_copy.as_ref().map_or(0, |c| c.generation))
                + 1;
            let result = match guard::catch(|| {
                write_content(db, &in_db.content, wanted, generation, None)
            }) {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(panic) => Err(panic),
            };
            if let Err(e) = result {
                // redb refuses every write after an I/O error until it is re-opened, and after
                // a panic its state is unknown: re-open in both cases (and in any other).
                return Err(CommitError {
                    message: format!("cannot write {}: {e}", self.path.display()),
                    reopen: true,
                });
            }
            self.in_db = Saved {
                generation,
                content: wanted.clone(),
            };
        }
        if force || self.in_copy.as_ref() != Some(&self.in_db) {
            lastgood::write(&self.dir, &self.in_db).map_err(|e| CommitError {
                message: format!(
                    "cannot write the last-good copy {}: {e}",
                    lastgood::path_in(&self.dir).display()
                ),
                reopen: false,
            })?;
            self.in_copy = Some(self.in_db.clone());
        }
        Ok(())
    }
}

fn describe(state: &StoreState) -> String {
    match state {
        StoreState::Absent => "the file is missing".to_owned(),
        StoreState::Empty => "the file is empty".to_owned(),
        StoreState::InUse => "another process holds it".to_owned(),
        StoreState::IoFailed(e) => e.clone(),
        StoreState::Corrupt(e) => format!("corrupt: {e}"),
        StoreState::Healthy(_) => "healthy".to_owned(),
    }
}

/// Any redb error, as text.
fn text(e: impl Into<redb::Error>) -> String {
    e.into().to_string()
}

/// Opens an existing database and verifies every page's checksum (a plain open trusts the file
/// and may panic on damage).
fn open_verified(path: &Path) -> Result<Database, StoreState> {
    match guard::catch(|| {
        Database::builder()
            .set_check_integrity_on_open(true)
            .open(path)
    }) {
        Err(panic) => Err(StoreState::Corrupt(panic)),
        Ok(Ok(db)) => Ok(db),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Err(StoreState::InUse),
        Ok(Err(DatabaseError::Storage(StorageError::Io(e))))
            if !matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            Err(StoreState::IoFailed(e.to_string()))
        }
        Ok(Err(DatabaseError::Storage(StorageError::PreviousIo))) => Err(StoreState::IoFailed(
            "an I/O error while opening".to_owned(),
        )),
        Ok(Err(e)) => Err(StoreState::Corrupt(text(e))),
    }
}

/// Reads a table that may not exist yet (a database made by an older weft).
fn missing_is_none<T>(result: Result<T, TableError>) -> Result<Option<T>, redb::Error> {
    match result {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Everything the database holds, and the recovery record if it has one.
fn read_content(db: &Database) -> Result<(Saved, Option<RecoveryRecord>), redb::Error> {
    let tx = db.begin_read()?;
    let mut content = Content::default();
    let mut generation = 0;
    let mut record = None;
    if let Some(meta) = missing_is_none(tx.open_table(META))? {
        if let Some(v) = meta.get(PEER_NAME)? {
            content.peer_name = <[u8; 6]>::try_from(v.value()).ok();
        }
        if let Some(v) = meta.get(GENERATION)? {
            generation = <[u8; 8]>::try_from(v.value()).map_or(0, u64::from_le_bytes);
        }
        if let Some(v) = meta.get(RECOVERED_FROM)? {
            record = serde_json::from_slice(v.value()).ok();
        }
    }
    if let Some(targets) = missing_is_none(tx.open_table(TARGETS))? {
        for row in targets.iter()? {
            content.targets.push(row?.0.value().to_owned());
        }
    }
    if let Some(ipam) = missing_is_none(tx.open_table(IPAM))? {
        content.ipam_snapshot = ipam.get(IPAM_SNAPSHOT)?.map(|v| v.value().to_vec());
    }
    Ok((
        Saved {
            generation,
            content,
        },
        record,
    ))
}

/// Writes what differs between `old` and `new`, and the commit's generation, in one
/// transaction (with the recovery record, when given).
fn write_content(
    db: &Database,
    old: &Content,
    new: &Content,
    generation: u64,
    record: Option<&RecoveryRecord>,
) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        meta.insert(GENERATION, &generation.to_le_bytes()[..])?;
        if old.peer_name != new.peer_name {
            match &new.peer_name {
                Some(name) => meta.insert(PEER_NAME, &name[..])?,
                None => meta.remove(PEER_NAME)?,
            };
        }
        if let Some(record) = record {
            let json = serde_json::to_vec(record).unwrap_or_default();
            meta.insert(RECOVERED_FROM, json.as_slice())?;
        }
        let mut targets = tx.open_table(TARGETS)?;
        if old.targets != new.targets {
            targets.retain(|_, _| false)?;
            for target in &new.targets {
                targets.insert(target.as_str(), ())?;
            }
        }
        let mut ipam = tx.open_table(IPAM)?;
        if old.ipam_snapshot != new.ipam_snapshot {
            match &new.ipam_snapshot {
                Some(snapshot) => ipam.insert(IPAM_SNAPSHOT, snapshot.as_slice())?,
                None => ipam.remove(IPAM_SNAPSHOT)?,
            };
        }
    }
    tx.commit()?;
    Ok(())
}

/// What was found at the store's path; the open database when it is healthy.
fn inspect(path: &Path) -> (StoreState, Option<(Database, Option<RecoveryRecord>)>) {
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (StoreState::Absent, None),
        Err(e) => return (StoreState::IoFailed(e.to_string()), None),
        Ok(meta) => meta,
    };
    if !meta.is_file() {
        return (StoreState::Corrupt("not a regular file".to_owned()), None);
    }
    // redb holds an exclusive flock on an open database: a file another router uses is left
    // alone, even when it is empty (redb would not get as far as its lock then).
    match std::fs::File::open(path).map(|f| f.try_lock()) {
        Ok(Err(std::fs::TryLockError::WouldBlock)) => return (StoreState::InUse, None),
        Err(e) => return (StoreState::IoFailed(e.to_string()), None),
        Ok(_) => {}
    }
    if meta.len() == 0 {
        return (StoreState::Empty, None);
    }
    let db = match open_verified(path) {
        Ok(db) => db,
        Err(state) => return (state, None),
    };
    match guard::catch(|| read_content(&db)) {
        Err(panic) => (StoreState::Corrupt(panic), None),
        Ok(Err(redb::Error::Io(e))) => (StoreState::IoFailed(e.to_string()), None),
        Ok(Err(e)) => (StoreState::Corrupt(e.to_string()), None),
        Ok(Ok((saved, record))) => (StoreState::Healthy(saved), Some((db, record))),
    }
}

/// Makes a new database at `path` holding `content`, atomically: it is built beside it and
/// renamed into place, so a crash never leaves an empty `weft.redb`.
fn create(
    dir: &Path,
    path: &Path,
    saved: &Saved,
    record: Option<&RecoveryRecord>,
) -> Result<Database, String> {
    let tmp = dir.join(format!("{FILE_NAME}.new"));
    let _ = std::fs::remove_file(&tmp);
    let built = guard::catch(|| -> Result<Database, String> {
        let db = Database::create(&tmp).map_err(text)?;
        write_content(
            &db,
            &Content::default(),
            &saved.content,
            saved.generation,
            record,
        )
        .map_err(text)?;
        Ok(db)
    })
    .and_then(|r| r);
    let db = match built {
        Ok(db) => db,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot create {}: {e}", tmp.display()));
        }
    };
    drop(db);
    std::fs::rename(&tmp, path)
        .and_then(|()| lastgood::sync_dir(dir))
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
    open_verified(path).map_err(|state| {
        format!(
            "cannot open the new {}: {}",
            path.display(),
            describe(&state)
        )
    })
}

/// Renames `path` to `path.damaged-<unix seconds>`; returns the new name.
fn move_aside(dir: &Path, path: &Path) -> Result<PathBuf, String> {
    let mut aside = PathBuf::from(format!("{}.damaged-{}", path.display(), unix_secs()));
    let mut n = 1;
    while aside.exists() {
        aside = PathBuf::from(format!("{}.damaged-{}-{n}", path.display(), unix_secs()));
        n += 1;
    }
    std::fs::rename(path, &aside)
        .and_then(|()| lastgood::sync_dir(dir))
        .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
    Ok(aside)
}

pub struct Store {
    path: PathBuf,
    copy_path: PathBuf,
    writer: Mutex<Writer<RedbBackend>>,
    health: Arc<StoreHealth>,
    recovered_from: Option<RecoveryRecord>,
    /// What opening it did, in words.
    opened: String,
}

impl Store {
    /// Opens the store in `dir` for a normal start (see [`Store::open_with`]).
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Self, OpenRefused> {
        Self::open_with(dir, Mode::Start)
    }

    /// Opens the store in `dir`, creating it on the first start; a damaged store is refused,
    /// or rebuilt when `mode` is [`Mode::Recover`] (see [`recovery`]). What was decided is
    /// logged.
    pub fn open_with(dir: &Path, mode: Mode) -> Result<Self, OpenRefused> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OpenRefused(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let copy_path = lastgood::path_in(dir);
        let (state, db) = inspect(&path);
        let copy = lastgood::read(dir);
        let copy_damaged = matches!(copy, CopyState::Damaged(_));
        let (store_name, copy_name, dir_name) = (
            path.display().to_string(),
            copy_path.display().to_string(),
            dir.display().to_string(),
        );
        let names = Names {
            store: &store_name,
            copy: &copy_name,
            data_dir: &dir_name,
        };
        let decision = recovery::decide(state, copy.clone(), mode, &names);
        let (db, saved, in_copy, recovered_from, opened) = match decision {
            Decision::Refuse(message) => return Err(OpenRefused(message)),
            Decision::Use {
                saved,
                rewrite_copy,
                note,
            } => {
                let (db, record) = db.ok_or_else(|| {
                    OpenRefused(format!("{store_name}: opened but not kept (a bug)"))
                })?;
                match (&note, copy_damaged) {
                    (Some(note), true) => tracing::warn!(store = %store_name, "{note}"),
                    (Some(note), false) => tracing::info!(store = %store_name, "{note}"),
                    (None, _) => {}
                }
                if let Some(why) = &rewrite_copy {
                    tracing::info!(copy = %copy_name, reason = %why, "writing the last-good copy");
                }
                let in_copy = rewrite_copy.is_none().then(|| saved.clone());
                let opened =
                    note.unwrap_or_else(|| format!("the state store {store_name} is healthy"));
                (db, saved, in_copy, record, opened)
            }
            Decision::Create { note } => {
                if let Some(note) = note {
                    tracing::info!(store = %store_name, "{note}");
                }
                drop(db);
                let db = create(dir, &path, &Saved::default(), None).map_err(OpenRefused)?;
                tracing::info!(store = %store_name, "state store created");
                let opened = format!("the state store {store_name} was created");
                (db, Saved::default(), None, None, opened)
            }
            Decision::Rebuild {
                move_aside: aside,
                saved,
                source,
                reason,
            } => {
                drop(db);
                let damaged = if aside {
                    Some(move_aside(dir, &path).map_err(OpenRefused)?)
                } else {
                    None
                };
                if copy_damaged {
                    // Kept for whoever looks into it; a new copy is written below.
                    let _ = move_aside(dir, &copy_path);
                }
                let record = RecoveryRecord {
                    damaged_file: damaged.as_ref().map(|p| p.display().to_string()),
                    source,
                    reason: reason.clone(),
                    at_unix_secs: unix_secs(),
                };
                let db = create(dir, &path, &saved, Some(&record)).map_err(OpenRefused)?;
                let message = recovery::rebuild_message(
                    source,
                    &saved.content,
                    &reason,
                    record.damaged_file.as_deref(),
                );
                match source {
                    Source::LastGoodCopy => tracing::warn!(store = %store_name, "{message}"),
                    Source::Nothing => tracing::error!(store = %store_name, "{message}"),
                }
                let in_copy = (source == Source::LastGoodCopy).then(|| saved.clone());
                (db, saved, in_copy, Some(record), message)
            }
        };
        let backend = RedbBackend {
            dir: dir.to_owned(),
            path: path.clone(),
            db: Some(db),
            in_db: saved.clone(),
            in_copy,
        };
        let store = Store {
            path,
            copy_path,
            writer: Mutex::new(Writer::new(backend, saved.content, Instant::now())),
            health: Arc::default(),
            recovered_from,
            opened,
        };
        // Brings the last-good copy up to date; a failure (a full disk) is reported by the
        // store's health like any failed write, and retried with the next write.
        let _ = store.write(|_| {});
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Writer<RedbBackend>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, change: impl FnOnce(&mut Content)) -> Result<(), StoreError> {
        let mut writer = self.lock();
        let result = writer.update(change, Instant::now());
        self.health.set(writer.failing().map(|f| f.error.clone()));
        result.map_err(|e| StoreError(format!("persistence failing: {e}")))
    }

    /// Shared with the status endpoint (`/readyz`).
    pub fn health(&self) -> Arc<StoreHealth> {
        self.health.clone()
    }

    /// Whether the last write failed (until one succeeds again).
    pub fn persistence_failing(&self) -> Option<String> {
        self.lock().failing().map(|f| f.error.clone())
    }

    pub fn report(&self, now: Instant) -> StoreReport {
        let writer = self.lock();
        let failing = writer.failing();
        StoreReport {
            path: self.path.display().to_string(),
            last_good_copy: self.copy_path.display().to_string(),
            persistence: if failing.is_some() { "failing" } else { "ok" }.to_owned(),
            error: failing.map(|f| f.error.clone()),
            failing_secs: failing.map(|f| now.saturating_duration_since(f.since).as_secs()),
            write_failures: writer.counters.write_failures,
            reopens: writer.counters.reopens,
            reopen_failures: writer.counters.reopen_failures,
            recovered_from: self.recovered_from.clone(),
        }
    }

    /// What opening the store did: used as it was, created, or rebuilt (and from what).
    pub fn opened(&self) -> &str {
        &self.opened
    }

    pub fn recovered_from(&self) -> Option<&RecoveryRecord> {
        self.recovered_from.as_ref()
    }

    pub fn peer_name(&self) -> Result<Option<[u8; 6]>, StoreError> {
        Ok(self.lock().content().peer_name)
    }

    pub fn set_peer_name(&self, name: [u8; 6]) -> Result<(), StoreError> {
        self.write(|c| c.peer_name = Some(name))
    }

    pub fn targets(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().content().targets.clone())
    }

    /// Replaces the target list.
    pub fn set_targets(&self, targets: &[String]) -> Result<(), StoreError> {
        self.write(|c| c.targets = targets.to_vec())
    }

    /// The IPAM snapshot last written, if any.
    pub fn ipam_snapshot(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().content().ipam_snapshot.clone())
    }

    /// Replaces the IPAM snapshot. The commit is durable when this returns, and atomic: a crash
    /// leaves the previous snapshot or this one, never a mix. The last-good copy is written
    /// too before it returns.
    pub fn set_ipam_snapshot(&self, snapshot: &[u8]) -> Result<(), StoreError> {
        self.write(|c| c.ipam_snapshot = Some(snapshot.to_vec()))
    }
}

#[cfg(test)]
mod tests;
