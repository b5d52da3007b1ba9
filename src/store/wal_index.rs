//! Whether anything was committed to a SQLite database in WAL mode since the store last read its
//! revision, told by one small read of a file instead of a read transaction.
//!
//! SQLite keeps the WAL-index header at the start of the database's `-shm` file: 48 bytes
//! (change counter, last valid frame, salts, checksums) that every commit rewrites, whichever
//! process makes it, as two copies: the second, then the first. SQLite's own readers compare
//! this header with the one they saw last to know whether the database changed. rsgo does the
//! same for its revision counter: a revision read after the header was seen is the newest as long
//! as the header stays byte for byte the same. Any difference, a header being rewritten (its
//! copies differ) or one not built yet means a real read, so a doubt costs a read and never an
//! old answer.
//!
//! The file is opened once per store and never closed: closing any descriptor of a file drops
//! every POSIX lock the process holds on it, and SQLite's connections hold such locks on the
//! `-shm` file. While the store's connections are open the file stays the same one (SQLite only
//! removes it when the last connection of all processes closes).

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::Result;

/// Bytes of one copy of the WAL-index header.
const HEADER: usize = 48;
/// Offset of the header's `isInit` byte, which is 1 once a connection has built the index.
const IS_INIT: usize = 12;

/// One copy of the WAL-index header.
type Header = [u8; HEADER];

/// The store's revision together with the WAL-index header seen just before it was read.
pub struct CommitWatch {
    /// The `-shm` file, or `None` when it could not be opened (every look is then a real read).
    shm: Option<ManuallyDrop<File>>,
    /// The header, then the revision read after it.
    seen: Mutex<Option<(Header, u64)>>,
}

impl CommitWatch {
    /// Watches the WAL-index of the database at `database`, which one of the caller's
    /// connections must hold open (in WAL mode) for as long as this is used.
    pub fn open(database: &Path) -> Self {
        let mut shm = database.as_os_str().to_owned();
        shm.push("-shm");
        Self {
            shm: File::open(shm).ok().map(ManuallyDrop::new),
            seen: Mutex::new(None),
        }
    }

    /// The header as it is now, when it could be read whole, built and settled.
    fn header(&self) -> Option<Header> {
        let mut both = [0; 2 * HEADER];
        self.shm.as_ref()?.read_exact_at(&mut both, 0).ok()?;
        let (first, second) = both.split_at(HEADER);
        if first != second || first[IS_INIT] == 0 {
            return None;
        }
        first.try_into().ok()
    }

    /// The newest revision: the one read last while no commit happened since, otherwise
    /// `read`'s answer (read after looking at the header, so the pair stays true).
    pub fn newest(&self, read: impl FnOnce() -> Result<u64>) -> Result<u64> {
        let header = self.header();
        let seen = *self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(now), Some((then, revision))) = (header, seen)
            && now == then
        {
            return Ok(revision);
        }
        let revision = read()?;
        if let Some(header) = header {
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((header, revision));
        }
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use rusqlite::Connection;

    use super::*;

    fn revision(conn: &Connection) -> u64 {
        conn.query_row("SELECT value FROM revision", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    }

    /// Reads through `watch`, counting the real reads in `reads`.
    fn newest(watch: &CommitWatch, conn: &Connection, reads: &Cell<u32>) -> u64 {
        watch
            .newest(|| {
                reads.set(reads.get() + 1);
                Ok(revision(conn))
            })
            .unwrap()
    }

    #[test]
    fn a_real_read_follows_every_commit_of_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.db");
        let ours = Connection::open(&path).unwrap();
        ours.pragma_update(None, "journal_mode", "WAL").unwrap();
        ours.execute_batch(
            "CREATE TABLE revision (value INTEGER NOT NULL); INSERT INTO revision VALUES (1);",
        )
        .unwrap();
        let watch = CommitWatch::open(&path);
        let reads = Cell::new(0);

        assert_eq!(newest(&watch, &ours, &reads), 1);
        assert_eq!(newest(&watch, &ours, &reads), 1);
        assert_eq!(
            reads.get(),
            1,
            "nothing was committed: the second look reads nothing"
        );

        // Another connection, as another process would, commits.
        let other = Connection::open(&path).unwrap();
        other.execute("UPDATE revision SET value = 2", []).unwrap();
        assert_eq!(newest(&watch, &ours, &reads), 2);
        assert_eq!(reads.get(), 2);

        // A checkpoint that empties the WAL, then a commit that starts it over from its first
        // frame: the header differs still.
        other
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        other.execute("UPDATE revision SET value = 3", []).unwrap();
        assert_eq!(newest(&watch, &ours, &reads), 3);
        assert_eq!(newest(&watch, &ours, &reads), 3);
        assert_eq!(reads.get(), 3);

        // Any commit counts, also one that leaves the revision alone.
        other.execute("CREATE TABLE other (value)", []).unwrap();
        newest(&watch, &ours, &reads);
        assert_eq!(reads.get(), 4);
    }

    /// Looks twice at a `-shm` file holding `first` then `second` as the header's two copies;
    /// answers how many of the looks read.
    fn reads_with_header(first: Header, second: Header) -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = first.to_vec();
        bytes.extend_from_slice(&second);
        std::fs::write(dir.path().join("fake.db-shm"), bytes).unwrap();
        let watch = CommitWatch::open(&dir.path().join("fake.db"));
        let reads = Cell::new(0);
        for _ in 0..2 {
            watch
                .newest(|| {
                    reads.set(reads.get() + 1);
                    Ok(1)
                })
                .unwrap();
        }
        reads.get()
    }

    #[test]
    fn only_a_built_and_settled_header_spares_a_read() {
        let mut built = [7; HEADER];
        built[IS_INIT] = 1;
        assert_eq!(reads_with_header(built, built), 1, "settled: one read");
        let mut rewritten = built;
        rewritten[20] = 8;
        assert_eq!(
            reads_with_header(built, rewritten),
            2,
            "copies that differ are a header being written"
        );
        let mut unbuilt = built;
        unbuilt[IS_INIT] = 0;
        assert_eq!(reads_with_header(unbuilt, unbuilt), 2, "not built yet");
    }

    #[test]
    fn without_a_wal_index_every_look_reads() {
        let dir = tempfile::tempdir().unwrap();
        let watch = CommitWatch::open(&dir.path().join("absent.db"));
        let reads = Cell::new(0);
        for expected in 1..=3 {
            let revision = watch
                .newest(|| {
                    reads.set(reads.get() + 1);
                    Ok(7)
                })
                .unwrap();
            assert_eq!((revision, reads.get()), (7, expected));
        }
    }
}
