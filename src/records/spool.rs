//! `CALL_EVENTS_SPOOL_DIR`: records on disk until delivered, so a crash (SIGKILL, a lost
//! machine with its volume kept) loses none.
//!
//! One append-only file, `records.spool`, one line per change: `+` and the record (written and
//! fsync'd before its first attempt), `-` and its id once delivered or given up (not fsync'd: a
//! lost `-` line means one more delivery of a record already delivered, which the receiver
//! recognises by its `webhook-id`). At start the records with a `+` and no `-` are delivered
//! first, and the file is rewritten with only those. It is rewritten again whenever it holds
//! more than twice what is pending (and 1 MiB): its size follows the queue's, which is bounded.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::delivery::Record;

const FILE: &str = "records.spool";
/// The file is compacted once it is this much larger than what is pending.
const COMPACT_SLACK: u64 = 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Line {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created_ms: u64,
    body: String,
}

pub struct Spool {
    path: PathBuf,
    file: File,
    /// Bytes in the file, and bytes of its lines still pending.
    size: u64,
    live: u64,
    /// Each pending record's id and line length.
    pending: Vec<(String, u64)>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and returns the records it holds undelivered, in
    /// the order they were spooled.
    pub fn open(dir: &Path) -> std::io::Result<(Spool, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut records: Vec<Record> = Vec::new();
        let mut done = std::collections::HashSet::new();
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).lines() {
                // A line cut by a crash is the last one, and was never acknowledged.
                let Ok(line) = line else { break };
                if let Some(json) = line.strip_prefix("+ ") {
                    if let Ok(l) = serde_json::from_str::<Line>(json) {
                        records.push(Record {
                            id: l.id,
                            kind: kind_of(&l.kind),
                            created_ms: l.created_ms,
                            body: l.body,
                        });
                    }
                } else if let Some(id) = line.strip_prefix("- ") {
                    done.insert(id.to_string());
                }
            }
        }
        records.retain(|r| !done.contains(&r.id));
        let (file, pending) = rewrite(&path, records.iter())?;
        let size = pending.iter().map(|(_, len)| len).sum();
        let spool = Spool {
            path,
            file,
            size,
            live: size,
            pending,
        };
        Ok((spool, records))
    }

    /// Writes `record` and waits for the disk.
    pub fn add(&mut self, record: &Record) -> std::io::Result<()> {
        let line = line_of(record);
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        let len = line.len() as u64;
        self.size += len;
        self.live += len;
        self.pending.push((record.id.clone(), len));
        Ok(())
    }

    /// `id` is delivered (or given up and logged): it is not delivered again at the next start.
    pub fn done(&mut self, id: &str, still_pending: &mut dyn Iterator<Item = &Record>) {
        let Some(at) = self.pending.iter().position(|(p, _)| p == id) else {
            return;
        };
        let (_, len) = self.pending.remove(at);
        self.live -= len;
        let line = format!("- {id}\n");
        if self.file.write_all(line.as_bytes()).is_ok() {
            self.size += line.len() as u64;
        }
        if self.size > 2 * self.live + COMPACT_SLACK {
            match rewrite(&self.path, still_pending) {
                Ok((file, pending)) => {
                    self.file = file;
                    self.size = pending.iter().map(|(_, len)| len).sum();
                    self.live = self.size;
                    self.pending = pending;
                }
                Err(e) => log::warn!("records spool: could not compact {:?}: {e}", self.path),
            }
        }
    }
}

fn kind_of(kind: &str) -> &'static str {
    match kind {
        "call.started" => "call.started",
        _ => "call.ended",
    }
}

fn line_of(record: &Record) -> String {
    let line = Line {
        id: record.id.clone(),
        kind: record.kind.to_string(),
        created_ms: record.created_ms,
        body: record.body.clone(),
    };
    format!(
        "+ {}\n",
        serde_json::to_string(&line).expect("strings serialize")
    )
}

/// Replaces the file with one holding `records`, atomically (a crash leaves the old or the new);
/// returns it open for appending, and each record's id and line length.
fn rewrite<'a>(
    path: &Path,
    records: impl Iterator<Item = &'a Record>,
) -> std::io::Result<(File, Vec<(String, u64)>)> {
    let tmp = path.with_extension("tmp");
    let mut pending = Vec::new();
    {
        let mut file = File::create(&tmp)?;
        for record in records {
            let line = line_of(record);
            file.write_all(line.as_bytes())?;
            pending.push((record.id.clone(), line.len() as u64));
        }
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename itself must reach the disk.
        File::open(dir)?.sync_all()?;
    }
    let file = OpenOptions::new().append(true).open(path)?;
    Ok((file, pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            kind: "call.ended",
            created_ms: 1,
            body: format!(r#"{{"type":"call.ended","id":"{id}","text":"line\nbreak"}}"#),
        }
    }

    #[test]
    fn what_was_not_done_comes_back_in_order_after_a_reopen() {
        let dir = std::env::temp_dir().join(format!("callvisor-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (mut spool, pending) = Spool::open(&dir).unwrap();
            assert!(pending.is_empty());
            for id in ["a", "b", "c"] {
                spool.add(&record(id)).unwrap();
            }
            spool.done("b", &mut std::iter::empty());
            // A crash mid-line: the cut line is ignored.
            spool.file.write_all(b"+ {\"id\":\"d\",\"ty").unwrap();
        }
        let (mut spool, pending) = Spool::open(&dir).unwrap();
        let ids: Vec<&str> = pending.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(pending[0].body, record("a").body);
        spool.done("a", &mut std::iter::empty());
        spool.done("c", &mut std::iter::empty());
        drop(spool);
        let (_, pending) = Spool::open(&dir).unwrap();
        assert!(pending.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
