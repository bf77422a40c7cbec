//! The optional JSONL request log (`request_log = PATH`): one line per finished request, the same
//! JSON as `/requests/{id}`, with size-based rotation (`PATH` → `PATH.1` → … → `PATH.N`).
//!
//! Owns the writer thread and its files. It never touches the data plane: accounting offers each
//! record to a bounded channel without blocking (a full channel drops the line and accounting
//! counts it as `records_not_logged`); this thread only drains that channel. File I/O is blocking,
//! which is why it runs on its own OS thread rather than on the async runtime.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::ledger::RequestRecord;

/// Where and how much to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLogConfig {
    /// The live file.
    pub path: PathBuf,
    /// Rotate before a line would make the live file larger than this (a single longer line is
    /// still written, alone in its file).
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` newest … `PATH.N` oldest); 0 keeps none.
    pub files: usize,
}

/// Why the log could not start.
#[derive(Debug, thiserror::Error)]
pub enum RequestLogError {
    /// The live file could not be opened.
    #[error("cannot open request log {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The OS refused the thread.
    #[error("cannot start the request-log thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Counters of the writer, shown in `/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct RequestLogStatus {
    written: AtomicU64,
    write_errors: AtomicU64,
    rotations: AtomicU64,
}

/// A plain copy of [`RequestLogStatus`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestLogCounts {
    /// Lines written.
    pub written: u64,
    /// Lines lost to write or rotation errors.
    pub write_errors: u64,
    /// Rotations done.
    pub rotations: u64,
}

impl RequestLogStatus {
    /// A copy of the counters.
    pub fn counts(&self) -> RequestLogCounts {
        RequestLogCounts {
            written: self.written.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            rotations: self.rotations.load(Relaxed),
        }
    }
}

/// Owner of the writer thread. Dropping it stops the thread after it has written what the
/// channel already holds, and joins it.
#[derive(Debug)]
pub struct RequestLog {
    status: Arc<RequestLogStatus>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often the thread checks its stop flag while the channel is quiet.
const POLL: Duration = Duration::from_millis(100);

impl RequestLog {
    /// Opens (appends to) the live file and starts the writer over `records`.
    pub fn spawn(
        config: RequestLogConfig,
        records: Receiver<Arc<RequestRecord>>,
    ) -> Result<RequestLog, RequestLogError> {
        let writer = Writer::open(config)?;
        let status = Arc::new(RequestLogStatus::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (status2, stop2) = (status.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("joulegate-request-log".into())
            .spawn(move || run(writer, &records, &status2, &stop2))
            .map_err(RequestLogError::Spawn)?;
        Ok(RequestLog {
            status,
            stop,
            thread: Some(thread),
        })
    }

    /// The writer's counters.
    pub fn status(&self) -> &Arc<RequestLogStatus> {
        &self.status
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            // A panic in the thread was already reported; nothing more to do with it here.
            let _ = t.join();
        }
    }
}

fn run(
    mut writer: Writer,
    records: &Receiver<Arc<RequestRecord>>,
    status: &RequestLogStatus,
    stop: &AtomicBool,
) {
    loop {
        match records.recv_timeout(POLL) {
            Ok(first) => {
                writer.write(&first, status);
                // Write whatever else is queued, then flush once: lines reach the file promptly
                // without a syscall per line under load.
                while let Ok(r) = records.try_recv() {
                    writer.write(&r, status);
                }
                writer.flush(status);
            }
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Relaxed) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

struct Writer {
    config: RequestLogConfig,
    file: Option<BufWriter<File>>,
    size: u64,
    line: Vec<u8>,
}

fn open(path: &Path) -> std::io::Result<(BufWriter<File>, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((BufWriter::new(file), size))
}

impl Writer {
    fn open(config: RequestLogConfig) -> Result<Writer, RequestLogError> {
        let (file, size) = open(&config.path).map_err(|source| RequestLogError::Open {
            path: config.path.clone(),
            source,
        })?;
        Ok(Writer {
            config,
            file: Some(file),
            size,
            line: Vec::with_capacity(1024),
        })
    }

    fn write(&mut self, record: &RequestRecord, status: &RequestLogStatus) {
        self.line.clear();
        if serde_json::to_writer(&mut self.line, record).is_err() {
            status.write_errors.fetch_add(1, Relaxed);
            return;
        }
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.config.max_bytes {
            match self.rotate() {
                Ok(()) => {
                    status.rotations.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    tracing::warn!(path = %self.config.path.display(), error = %e, "request log rotation failed");
                }
            }
        }
        // After a failed rotation the file may be gone: try to reopen it for this line.
        if self.file.is_none() {
            if let Ok((file, size)) = open(&self.config.path) {
                self.file = Some(file);
                self.size = size;
            }
        }
        match self.file.as_mut().map(|f| f.write_all(&self.line)) {
            Some(Ok(())) => {
                self.size += len;
                status.written.fetch_add(1, Relaxed);
            }
            Some(Err(_)) | None => {
                status.write_errors.fetch_add(1, Relaxed);
            }
        }
    }

    fn flush(&mut self, status: &RequestLogStatus) {
        if let Some(Err(_)) = self.file.as_mut().map(|f| f.flush()) {
            status.write_errors.fetch_add(1, Relaxed);
        }
    }

    /// `PATH.(N-1)` → `PATH.N`, …, `PATH` → `PATH.1`, then a fresh `PATH`.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        let n = self.config.files;
        if n == 0 {
            std::fs::remove_file(&self.config.path)?;
        } else {
            for i in (1..n).rev() {
                let from = rotated(&self.config.path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.config.path, i + 1))?;
                }
            }
            std::fs::rename(&self.config.path, rotated(&self.config.path, 1))?;
        }
        let (file, size) = open(&self.config.path)?;
        self.file = Some(file);
        self.size = size;
        Ok(())
    }
}

/// The `i`th rotated file of `path` (`PATH.i`).
pub fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> Arc<RequestRecord> {
        Arc::new(RequestRecord::sample(i))
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn writes_lines_and_rotates_keeping_n_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("requests.jsonl");
        let one_line = serde_json::to_vec(&*record(1)).expect("json").len() as u64 + 1;
        let config = RequestLogConfig {
            path: path.clone(),
            // Two lines per file.
            max_bytes: one_line * 2 + 1,
            files: 2,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let log = RequestLog::spawn(config, rx).expect("starts");
        let status = log.status().clone();
        for i in 1..=7 {
            tx.send(record(i)).expect("send");
        }
        drop(tx);
        // Dropping the sender ends the thread once it has written everything; the drop joins.
        drop(log);
        let c = status.counts();
        assert_eq!(c.written, 7);
        assert_eq!(c.write_errors, 0);
        assert_eq!(c.rotations, 3);
        let ids = |p: &Path| -> Vec<u64> {
            lines(p)
                .iter()
                .map(|v| v["prompt_tokens"].as_u64().expect("tokens"))
                .collect()
        };
        assert_eq!(ids(&path), [7]);
        assert_eq!(ids(&rotated(&path, 1)), [5, 6]);
        assert_eq!(ids(&rotated(&path, 2)), [3, 4]);
        assert!(
            !rotated(&path, 3).exists(),
            "only `files` rotated files kept"
        );
        assert_eq!(lines(&path)[0]["id"], "jg-0000000000000007");
    }

    #[test]
    fn unopenable_path_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = RequestLogConfig {
            path: dir.path().join("missing-dir").join("log.jsonl"),
            max_bytes: 1000,
            files: 1,
        };
        let (_tx, rx) = std::sync::mpsc::sync_channel(1);
        assert!(matches!(
            RequestLog::spawn(config, rx),
            Err(RequestLogError::Open { .. })
        ));
    }
}
