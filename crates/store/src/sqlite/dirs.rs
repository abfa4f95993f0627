//! Which key directories each revision of the log touched, so that a watch skips revisions
//! that hold none of its keys without reading them.
//!
//! The log is keyed by `(revision, idx)`: a watch of a prefix reads every row of every revision
//! after its cursor and keeps those under its prefix. A watch whose keys rarely change (the
//! agent's IPAM affinities) read all 50,197 rows of an apply of 50,000 Services to find none of
//! its keys (~9 ms per watching process, most of it copying the revision's pages out of the
//! WAL). An index on `log (key, …)` would find them without the scan, but costs every write a
//! second B-tree insert per row (~25 ms more for that apply, on the writer's critical path).
//!
//! Instead each write records, in `log_dirs`, the distinct directories of the keys it logged
//! ([`key_dir`]: a key up to its fourth `/`, e.g. `/serval/resources/services/`; 1-3 rows per
//! revision). A watch reads those rows for the revisions after its cursor ([`plan`]) and skips
//! a revision whose directories all lie outside its prefix. A revision without rows here
//! (written by an earlier version, which knows nothing of the table; or before the table
//! existed) is read as before, so every revision of every writer is seen.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Revision;

/// The table, created by [`ensure`] in new and existing databases; earlier versions ignore it.
/// `WITHOUT ROWID` regardless of the database's layout: nothing but this module uses it.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log_dirs (
    revision INTEGER NOT NULL,
    dir BLOB NOT NULL,
    PRIMARY KEY (revision, dir)
) WITHOUT ROWID;
";

/// How many `log_dirs` rows one [`plan`] reads: a watch far behind reads its plan in steps.
const PLAN_ROWS: i64 = 4096;

/// Whether the database has `log_dirs`.
pub(super) fn exists(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'log_dirs'")?
        .query_row([], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

/// Create `log_dirs` if the database lacks it (in the caller's write transaction).
pub(super) fn ensure(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

/// The directory of `key`: the key up to and including its fourth `/`, or the whole key when
/// it has fewer. It is a prefix of the key, so a key that starts with a watch's prefix has a
/// directory that starts with the prefix or that the prefix starts with ([`may_hold`]).
pub(super) fn key_dir(key: &[u8]) -> &[u8] {
    match key.iter().enumerate().filter(|&(_, &b)| b == b'/').nth(3) {
        Some((at, _)) => &key[..=at],
        None => key,
    }
}

/// Whether a revision with a key in directory `dir` may hold a key under `prefix`.
fn may_hold(dir: &[u8], prefix: &[u8]) -> bool {
    dir.starts_with(prefix) || prefix.starts_with(dir)
}

/// At most this many directories are recorded for one revision; a revision with more records
/// the empty directory instead, which every watch reads.
const MAX_DIRS: usize = 64;

/// Record the directories of `keys`, the keys logged at `revision` (in the write's
/// transaction, when the table [`exists`]).
pub(super) fn write<'a>(
    tx: &Connection,
    revision: Revision,
    keys: impl Iterator<Item = &'a [u8]>,
) -> rusqlite::Result<()> {
    let mut dirs: Vec<&[u8]> = Vec::new();
    for key in keys {
        let dir = key_dir(key);
        // Keys of one directory mostly come together: compare with the last one first.
        if dirs.last() == Some(&dir) || dirs.contains(&dir) {
            continue;
        }
        if dirs.len() == MAX_DIRS {
            dirs = vec![b""];
            break;
        }
        dirs.push(dir);
    }
    let mut insert =
        tx.prepare_cached("INSERT OR IGNORE INTO log_dirs (revision, dir) VALUES (?1, ?2)")?;
    for dir in dirs {
        insert.execute(params![revision, dir])?;
    }
    Ok(())
}

/// Drop the rows of revisions up to `revision` (compaction).
pub(super) fn compact(tx: &Connection, revision: Revision) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM log_dirs WHERE revision <= ?1")?
        .execute([revision])?;
    Ok(())
}

/// Which revisions of `from..=head` a watch of `prefix` must read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// Read `first..=last` (the first run of revisions that may hold the prefix's keys);
    /// everything from `from` before `first` holds none.
    Read { first: Revision, last: Revision },
    /// No revision of `from..=last` holds a key under the prefix (`last` < `head` when the
    /// plan stopped at [`PLAN_ROWS`]).
    Skip { last: Revision },
}

/// Plan a watch's read of revisions `from..=head` (`from <= head`): skip the revisions whose
/// recorded directories are all outside `prefix`; a revision with no directories recorded
/// must be read.
pub(super) fn plan(
    conn: &Connection,
    prefix: &[u8],
    from: Revision,
    head: Revision,
) -> rusqlite::Result<Plan> {
    let mut stmt = conn.prepare_cached(
        "SELECT revision, dir FROM log_dirs WHERE revision >= ?1 AND revision <= ?2
         ORDER BY revision, dir LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![from, head, PLAN_ROWS])?;
    // (revision, whether it may hold the prefix's keys), one per recorded revision in order.
    let mut recorded: Vec<(Revision, bool)> = Vec::new();
    let mut read = 0;
    while let Some(r) = rows.next()? {
        read += 1;
        let revision: Revision = r.get(0)?;
        let dir = r.get_ref(1)?.as_blob()?;
        let may = may_hold(dir, prefix);
        match recorded.last_mut() {
            Some((last, any)) if *last == revision => *any |= may,
            _ => recorded.push((revision, may)),
        }
    }
    // Revisions after the last complete one read are not known yet: the last revision read may
    // have more rows beyond the limit.
    let known = if read < PLAN_ROWS {
        head
    } else {
        match recorded.pop() {
            Some((revision, _)) => revision - 1,
            None => from - 1,
        }
    };
    if known < from {
        return Ok(Plan::Read {
            first: from,
            last: head,
        });
    }
    // The first revision to read: the first not recorded, or recorded and matching.
    let mut first = from;
    for &(revision, may) in &recorded {
        if revision > first || may {
            break;
        }
        first = revision + 1;
    }
    if first > known {
        return Ok(Plan::Skip { last: known });
    }
    // The run to read ends before the next skippable revision.
    let last = recorded
        .iter()
        .find(|&&(revision, may)| revision > first && revision <= known && !may)
        .map_or(head, |&(revision, _)| revision - 1);
    Ok(Plan::Read { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_directory_is_a_prefix_that_meets_every_matching_watch_prefix() {
        assert_eq!(
            key_dir(b"/serval/resources/services/default/x"),
            b"/serval/resources/services/"
        );
        assert_eq!(
            key_dir(b"/serval/allocations/services"),
            b"/serval/allocations/services"
        );
        assert_eq!(key_dir(b"/a/1"), b"/a/1");
        assert_eq!(key_dir(b""), b"");
        let keys: [&[u8]; 6] = [
            b"/serval/resources/services/default/x",
            b"/serval/ipam/affinities/node1/10.0.0.0-26",
            b"/serval/allocations/services",
            b"/a/1",
            b"/a",
            b"",
        ];
        let prefixes: [&[u8]; 9] = [
            b"",
            b"/",
            b"/a",
            b"/a/",
            b"/serval/",
            b"/serval/ipam/affinities/",
            b"/serval/resources/services/def",
            b"/serval/resources/services/default/x/y",
            b"/serval/allocations/services/",
        ];
        for key in keys {
            for prefix in prefixes {
                if key.starts_with(prefix) {
                    assert!(
                        may_hold(key_dir(key), prefix),
                        "{:?} under {:?}",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(prefix)
                    );
                }
            }
        }
        assert!(!may_hold(
            key_dir(b"/serval/resources/services/default/x"),
            b"/serval/ipam/affinities/"
        ));
        assert!(!may_hold(
            key_dir(b"/serval/allocations/services"),
            b"/serval/ipam/affinities/"
        ));
    }

    /// Revisions 1-9: 2, 5 and 6 hold only `/b/` keys (skippable for `/a/`), 4 has no
    /// directories recorded (an earlier version's write), the others hold `/a/` keys.
    #[test]
    fn the_plan_skips_only_recorded_revisions_without_the_prefixs_keys() {
        let conn = Connection::open_in_memory().expect("open");
        ensure(&conn).expect("schema");
        for revision in [1, 2, 3, 5, 6, 7, 8, 9] {
            let keys: &[&[u8]] = match revision {
                2 | 5 | 6 => &[b"/b/x/y/1", b"/b/x/y/2"],
                _ => &[b"/b/x/y/1", b"/a/1"],
            };
            write(&conn, revision, keys.iter().copied()).expect("write");
        }
        let plan = |from, head| plan(&conn, b"/a/", from, head).expect("plan");
        assert_eq!(plan(1, 9), Plan::Read { first: 1, last: 1 });
        assert_eq!(plan(2, 9), Plan::Read { first: 3, last: 4 });
        assert_eq!(plan(4, 9), Plan::Read { first: 4, last: 4 });
        assert_eq!(plan(5, 9), Plan::Read { first: 7, last: 9 });
        assert_eq!(plan(5, 6), Plan::Skip { last: 6 });
        assert_eq!(plan(6, 6), Plan::Skip { last: 6 });
        // Revisions past the recorded ones (written by an earlier version) are read.
        assert_eq!(plan(5, 12), Plan::Read { first: 7, last: 12 });
        let b = |from, head| super::plan(&conn, b"/b/", from, head).expect("plan");
        assert_eq!(b(1, 9), Plan::Read { first: 1, last: 9 });
        compact(&conn, 5).expect("compact");
        assert_eq!(plan(1, 9), Plan::Read { first: 1, last: 5 });
    }

    /// A revision with more than [`MAX_DIRS`] directories records the empty one: every watch
    /// reads it.
    #[test]
    fn a_revision_of_many_directories_is_read_by_every_watch() {
        let conn = Connection::open_in_memory().expect("open");
        ensure(&conn).expect("schema");
        let keys: Vec<String> = (0..=MAX_DIRS).map(|i| format!("/b/{i}")).collect();
        write(&conn, 1, keys.iter().map(|k| k.as_bytes())).expect("write");
        write(&conn, 2, keys[..MAX_DIRS].iter().map(|k| k.as_bytes())).expect("write");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM log_dirs", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 1 + MAX_DIRS as i64);
        assert_eq!(
            plan(&conn, b"/a/", 1, 2).expect("plan"),
            Plan::Read { first: 1, last: 1 }
        );
    }

    /// A plan longer than [`PLAN_ROWS`] rows stops at the last complete revision it read.
    #[test]
    fn a_long_plan_is_read_in_steps() {
        let conn = Connection::open_in_memory().expect("open");
        ensure(&conn).expect("schema");
        let head = PLAN_ROWS / 2 + 10;
        for revision in 1..=head {
            write(&conn, revision, [&b"/b/x/y/1"[..], b"/c/x/y/1"].into_iter()).expect("write");
        }
        let mut from = 1;
        let mut steps = 0;
        loop {
            steps += 1;
            match plan(&conn, b"/a/", from, head).expect("plan") {
                Plan::Skip { last } if last == head => break,
                Plan::Skip { last } => from = last + 1,
                other => panic!("nothing to read here: {other:?}"),
            }
        }
        assert_eq!(steps, 2);
    }
}
