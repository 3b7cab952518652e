//! A node's durable state: a key-value store whose writes last only once
//! synced.
//!
//! A [`Disk`] stages writes in memory; [`Disk::sync`] makes everything
//! staged durable at once, and a crash loses whatever was staged and not
//! synced, as a power cut loses what a file system had not flushed. Reads
//! see staged writes. Protocols that must not forget (Raft's term, vote
//! and log) sync before they answer.
//!
//! Two backends share these rules:
//!
//! - a file ([`Disk::open`]): an embedded `redb` database, by default
//!   `node.redb` under the node's data directory; a sync is one committed,
//!   fsynced transaction;
//! - simulated ([`Disk::simulated`]): the durable part is memory that
//!   outlives a simulated node's crash and restart, and [`Disk::crash`]
//!   drops what was staged — what whoever drives the simulation calls when
//!   it crashes the node that owns the disk.
//!
//! ```
//! use foundation::storage::Disk;
//!
//! let disk = Disk::simulated();
//! disk.put(b"term", b"7");
//! disk.sync().unwrap();
//! disk.put(b"vote", b"node-3");
//! assert_eq!(disk.get(b"vote").unwrap().as_deref(), Some(&b"node-3"[..]));
//! disk.crash(); // the vote was never synced
//! assert_eq!(disk.get(b"vote").unwrap(), None);
//! assert_eq!(disk.get(b"term").unwrap().as_deref(), Some(&b"7"[..]));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::TableDefinition;

/// A node's durable key-value state. Cheap to clone; every clone is the
/// same disk.
#[derive(Clone)]
pub struct Disk {
    inner: Arc<Inner>,
}

struct Inner {
    /// Writes not yet synced: `None` deletes.
    staged: Mutex<Staged>,
    durable: Durable,
}

type Staged = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

enum Durable {
    File(redb::Database),
    Simulated(Mutex<BTreeMap<Vec<u8>, Vec<u8>>>),
}

/// Why the disk failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    /// The database file could not be opened or created.
    Open(PathBuf, String),
    /// A read or a sync failed.
    Io(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Open(path, error) => write!(f, "cannot open {}: {error}", path.display()),
            StorageError::Io(error) => write!(f, "disk: {error}"),
        }
    }
}

impl std::error::Error for StorageError {}

/// The one table a node's database holds.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("foundation");

fn io(error: impl fmt::Display) -> StorageError {
    StorageError::Io(error.to_string())
}

impl Disk {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Disk, StorageError> {
        let path = path.as_ref();
        let open =
            |error: &dyn fmt::Display| StorageError::Open(path.to_owned(), error.to_string());
        let database = redb::Database::create(path).map_err(|e| open(&e))?;
        // Create the table, so that reads find it.
        let write = database.begin_write().map_err(|e| open(&e))?;
        write.open_table(TABLE).map_err(|e| open(&e))?;
        write.commit().map_err(|e| open(&e))?;
        Ok(Disk::with(Durable::File(database)))
    }

    /// A simulated disk, empty.
    pub fn simulated() -> Disk {
        Disk::with(Durable::Simulated(Mutex::default()))
    }

    fn with(durable: Durable) -> Disk {
        Disk {
            inner: Arc::new(Inner {
                staged: Mutex::default(),
                durable,
            }),
        }
    }

    /// Stages `value` at `key`.
    pub fn put(&self, key: &[u8], value: &[u8]) {
        self.staged().insert(key.to_vec(), Some(value.to_vec()));
    }

    /// Stages the removal of `key`.
    pub fn delete(&self, key: &[u8]) {
        self.staged().insert(key.to_vec(), None);
    }

    /// The value at `key`, staged or durable.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(staged) = self.staged().get(key) {
            return Ok(staged.clone());
        }
        match &self.inner.durable {
            Durable::File(database) => {
                let read = database.begin_read().map_err(io)?;
                let table = read.open_table(TABLE).map_err(io)?;
                let value = table.get(key).map_err(io)?;
                Ok(value.map(|value| value.value().to_vec()))
            }
            Durable::Simulated(durable) => Ok(lock(durable).get(key).cloned()),
        }
    }

    /// The entries with keys in `from..to`, in key order, staged writes
    /// over durable ones.
    pub fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<Entry>, StorageError> {
        if from >= to {
            return Ok(Vec::new());
        }
        // Held throughout, so that a sync cannot move writes from staged to
        // durable between the two reads.
        let staged = self.staged();
        let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = match &self.inner.durable {
            Durable::File(database) => {
                let read = database.begin_read().map_err(io)?;
                let table = read.open_table(TABLE).map_err(io)?;
                let range = table.range::<&[u8]>(from..to).map_err(io)?;
                range
                    .map(|entry| {
                        let (key, value) = entry.map_err(io)?;
                        Ok((key.value().to_vec(), value.value().to_vec()))
                    })
                    .collect::<Result<_, StorageError>>()?
            }
            Durable::Simulated(durable) => {
                let bounds = (Bound::Included(from), Bound::Excluded(to));
                lock(durable)
                    .range::<[u8], _>(bounds)
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            }
        };
        let bounds = (Bound::Included(from), Bound::Excluded(to));
        for (key, write) in staged.range::<[u8], _>(bounds) {
            match write {
                Some(value) => entries.insert(key.clone(), value.clone()),
                None => entries.remove(key),
            };
        }
        Ok(entries.into_iter().collect())
    }

    /// Makes every staged write durable, at once. On an error nothing
    /// staged is lost: the writes stay staged for the next sync.
    pub fn sync(&self) -> Result<(), StorageError> {
        let mut staged = self.staged();
        if staged.is_empty() {
            return Ok(());
        }
        match &self.inner.durable {
            Durable::File(database) => {
                let write = database.begin_write().map_err(io)?;
                {
                    let mut table = write.open_table(TABLE).map_err(io)?;
                    for (key, value) in staged.iter() {
                        match value {
                            Some(value) => table.insert(key.as_slice(), value.as_slice()),
                            None => table.remove(key.as_slice()).map(|_| None),
                        }
                        .map_err(io)?;
                    }
                }
                write.commit().map_err(io)?;
                staged.clear();
            }
            Durable::Simulated(durable) => {
                let mut durable = lock(durable);
                for (key, value) in std::mem::take(&mut *staged) {
                    match value {
                        Some(value) => durable.insert(key, value),
                        None => durable.remove(&key),
                    };
                }
            }
        }
        Ok(())
    }

    /// Writes staged and not yet synced.
    pub fn unsynced(&self) -> usize {
        self.staged().len()
    }

    /// Loses every write not synced, as a crash does; returns how many.
    /// Whoever drives a simulation calls it on the disk of a node it
    /// crashes.
    pub fn crash(&self) -> usize {
        std::mem::take(&mut *self.staged()).len()
    }

    fn staged(&self) -> MutexGuard<'_, Staged> {
        lock(&self.inner.staged)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh database file, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "foundation-storage-{}-{name}.redb",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// What both backends must do: reads see staged writes, a sync keeps
    /// them, a crash loses only what was not synced.
    /// `reopen` gives the disk back as a restarted node would find it
    /// (every other handle on it dropped first).
    fn obeys_the_rules(disk: Disk, reopen: impl Fn() -> Disk) {
        disk.put(b"a", b"1");
        disk.put(b"b", b"2");
        disk.put(b"c", b"3");
        assert_eq!(disk.get(b"b").unwrap(), Some(b"2".to_vec()));
        disk.sync().unwrap();
        assert_eq!(disk.unsynced(), 0);
        disk.delete(b"b");
        disk.put(b"d", b"4");
        disk.put(b"a", b"one");
        let staged_view: Vec<_> = disk.range(b"a", b"d").unwrap();
        assert_eq!(
            staged_view,
            vec![
                (b"a".to_vec(), b"one".to_vec()),
                (b"c".to_vec(), b"3".to_vec())
            ]
        );
        assert_eq!(
            disk.range(b"z", b"a").unwrap(),
            Vec::new(),
            "an empty range"
        );
        assert_eq!(disk.crash(), 3);
        drop(disk);
        let after = reopen();
        let durable: Vec<_> = after.range(b"a", b"z").unwrap();
        assert_eq!(
            durable,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec()),
                (b"c".to_vec(), b"3".to_vec())
            ]
        );
        after.delete(b"a");
        after.sync().unwrap();
        drop(after);
        assert_eq!(reopen().get(b"a").unwrap(), None);
    }

    #[test]
    fn a_simulated_disk_loses_only_unsynced_writes() {
        let disk = Disk::simulated();
        let same = disk.clone();
        obeys_the_rules(disk, move || same.clone());
    }

    #[test]
    fn a_file_keeps_synced_writes_across_opens() {
        let file = TempFile::new("rules");
        let disk = Disk::open(&file.0).unwrap();
        // A new handle on the same file, as a restarted process opens it,
        // sees only what was committed.
        obeys_the_rules(disk, || Disk::open(&file.0).unwrap());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let file = TempFile::new("garbage");
        std::fs::write(&file.0, b"this is not a redb file, not at all").unwrap();
        assert!(matches!(Disk::open(&file.0), Err(StorageError::Open(..))));
    }
}
