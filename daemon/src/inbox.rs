//! The file inbox: folders where users (or their bank's SFTP job) drop statements and exports.
//!
//! The inbox file protocol (README.md): a file is taken once no local process has it open for writing (inotify
//! close-write; a file renamed into the folder counts as closed) and its size, modification time and inode have not
//! changed for `[imports] inbox_settle_ms`. Temporary names ([`is_temporary`]: dot-files, `*.part`, `*.tmp`,
//! `*.filepart`, `*.crdownload`, `*~`, ...) and empty files are left alone, so a writer that writes under such a name
//! and renames when done is never read early. A taken file is sniffed (or routed to the connector that owns the
//! folder), parsed and ingested; only after the records are durable is it moved to `done/` (with a `.summary.json`
//! beside it) — or to `failed/` with a `.error` file saying why (and a `.summary.json` listing the records the engine
//! refused, when that is why). A file that changed while it was read is not moved:
//! it is read again once it is still, and re-processing is harmless because every record dedupes. A crash before the
//! move leaves the file in place, for the same reason.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::config::Config;
use crate::plugin_host::PluginHost;

/// One watched folder and the connector it belongs to (`None`: any file connector, by sniffing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbox {
    /// The folder.
    pub dir: PathBuf,
    /// The connector instance that owns it.
    pub connector: Option<String>,
}

/// The shared inbox `<data_dir>/inbox` plus every connector's own `inbox`.
pub fn inboxes(config: &Config, host: &PluginHost) -> Vec<Inbox> {
    let mut out = vec![Inbox {
        dir: config.data_dir().join("inbox"),
        connector: None,
    }];
    for instance in host.instances() {
        if let Some(dir) = instance.inbox {
            out.push(Inbox {
                dir,
                connector: Some(instance.name),
            });
        }
    }
    out
}

const POLL: Duration = Duration::from_millis(500);

/// Name endings of files still being written, by the conventions of common upload and download tools (curl and
/// browsers, WinSCP, Chrome, Safari, editors, temp files). Compared without regard to case.
const TEMPORARY_SUFFIXES: &[&str] = &[
    ".part",
    ".partial",
    ".filepart",
    ".crdownload",
    ".download",
    ".tmp",
    ".temp",
    ".swp",
    "~",
];

/// Whether a file name is a temporary name the inbox leaves alone: a dot-file, an office lock file (`~$...`) or a
/// name ending in one of [`TEMPORARY_SUFFIXES`].
pub fn is_temporary(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with('.')
        || lower.starts_with("~$")
        || TEMPORARY_SUFFIXES.iter().any(|s| lower.ends_with(s))
}

/// What identifies one version of a file: size, modification time, inode and device.
type Stamp = (u64, SystemTime, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.len(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.ino(),
        meta.dev(),
    ))
}

/// Watch the inboxes until cancelled.
pub async fn run(
    state: AppState,
    host: Arc<PluginHost>,
    inboxes: Vec<Inbox>,
    cancel: CancellationToken,
) {
    let mut inboxes = inboxes;
    set_up(&inboxes, &[]);
    let settle = Duration::from_millis(state.engine.config().imports.inbox_settle_ms);
    let mut writers = Writers::watch(&inboxes);
    let mut seen: HashMap<PathBuf, (Stamp, Instant)> = HashMap::new();
    // Files held back because `done/` or `failed/` is not a real folder, each reported once.
    let mut held: HashSet<PathBuf> = HashSet::new();
    loop {
        // A config reload may have added, moved or removed a connector's own inbox.
        let now = self::inboxes(state.engine.config(), &host);
        if now != inboxes {
            set_up(&now, &inboxes);
            writers = Writers::watch(&now);
            inboxes = now;
        }
        writers.update();
        for inbox in &inboxes {
            for path in candidates(&inbox.dir) {
                let Some(now_stamp) = stamp(&path) else {
                    continue;
                };
                let now = Instant::now();
                let writing = writers.is_writing(&path);
                let unchanged_since = match seen.get(&path) {
                    Some((before, since)) if *before == now_stamp => Some(*since),
                    _ => None,
                };
                // Empty files have nothing to import and are usually about to be written.
                let ready = !writing
                    && now_stamp.0 > 0
                    && unchanged_since.is_some_and(|since| now.duration_since(since) >= settle);
                if !ready {
                    if writing || unchanged_since.is_none() {
                        seen.insert(path, (now_stamp, now));
                    }
                    continue;
                }
                if let Err(why) = outcome_folders(&inbox.dir) {
                    if held.insert(path.clone()) {
                        tracing::error!(file = %path.display(), error = %why, "inbox file not imported: it stays in the inbox until the folder is fixed");
                    }
                    continue;
                }
                held.remove(&path);
                match process(&state, &host, inbox, &path, now_stamp).await {
                    Processed::Moved => {
                        seen.remove(&path);
                    }
                    Processed::Changed | Processed::Retry => {
                        // Read again once it is still: the records already committed dedupe.
                        if let Some(changed) = stamp(&path) {
                            seen.insert(path, (changed, Instant::now()));
                        }
                    }
                }
            }
        }
        seen.retain(|p, _| p.exists());
        held.retain(|p| p.exists());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Creates the folders of the inboxes not in `before` and logs that they are watched.
fn set_up(inboxes: &[Inbox], before: &[Inbox]) {
    for inbox in inboxes.iter().filter(|i| !before.contains(i)) {
        for sub in ["", "done", "failed"] {
            if let Err(e) = std::fs::create_dir_all(inbox.dir.join(sub)) {
                tracing::error!(dir = %inbox.dir.display(), error = %e, "cannot create inbox folder");
            }
        }
        tracing::info!(dir = %inbox.dir.display(), connector = inbox.connector.as_deref().unwrap_or("any"), "watching inbox");
    }
}

/// Checks that `done/` and `failed/` of an inbox are real folders: a symlink would send statements wherever it
/// points (anywhere the daemon can write), so it is refused, naming it.
fn outcome_folders(inbox: &Path) -> Result<(), String> {
    for sub in ["done", "failed"] {
        let dir = inbox.join(sub);
        let meta = std::fs::symlink_metadata(&dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{} is a symlink; imported files are only moved into a real folder: replace it with a directory",
                dir.display()
            ));
        }
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
    }
    Ok(())
}

/// Files some local process is writing, from inotify: a write marks a file, closing it (or renaming it into the
/// folder) clears the mark. Without a watcher (or after the kernel dropped events) only the settle time applies.
struct Writers {
    events: std::sync::mpsc::Receiver<WriterEvent>,
    writing: HashSet<PathBuf>,
    _watcher: Option<notify::RecommendedWatcher>,
}

enum WriterEvent {
    Writing(PathBuf),
    Done(PathBuf),
    Forget,
}

impl Writers {
    fn watch(inboxes: &[Inbox]) -> Writers {
        let (tx, events) = std::sync::mpsc::channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else {
                let _ = tx.send(WriterEvent::Forget);
                return;
            };
            if event.need_rescan() {
                let _ = tx.send(WriterEvent::Forget);
            }
            let make: fn(PathBuf) -> WriterEvent = match event.kind {
                EventKind::Modify(ModifyKind::Data(_)) => WriterEvent::Writing,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::From))
                | EventKind::Remove(_) => WriterEvent::Done,
                _ => return,
            };
            for path in event.paths {
                let _ = tx.send(make(path));
            }
        });
        let watcher = match watcher {
            Ok(mut watcher) => {
                for inbox in inboxes {
                    if let Err(e) = watcher.watch(&inbox.dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %inbox.dir.display(), error = %e, "cannot watch the inbox for writers; only the settle time protects files being written");
                    }
                }
                Some(watcher)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the inboxes for writers; only the settle time protects files being written");
                None
            }
        };
        Writers {
            events,
            writing: HashSet::new(),
            _watcher: watcher,
        }
    }

    fn update(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                WriterEvent::Writing(path) => {
                    self.writing.insert(path);
                }
                WriterEvent::Done(path) => {
                    self.writing.remove(&path);
                }
                WriterEvent::Forget => self.writing.clear(),
            }
        }
    }

    fn is_writing(&self, path: &Path) -> bool {
        self.writing.contains(path)
    }
}

fn candidates(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter(|e| !is_temporary(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// What became of a file taken from the inbox.
enum Processed {
    /// Moved to `done/` or `failed/`.
    Moved,
    /// It changed while it was read: left in place to be read again.
    Changed,
    /// The store could not write (a full disk): left in place to be read again once it can.
    Retry,
}

async fn process(
    state: &AppState,
    host: &PluginHost,
    inbox: &Inbox,
    path: &Path,
    taken: Stamp,
) -> Processed {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let result = state
        .pipeline(host)
        .import(&name, inbox.connector.as_deref(), path)
        .await;
    if stamp(path) != Some(taken) {
        tracing::info!(file = %name, "inbox file changed while it was imported; importing it again once it is still");
        return Processed::Changed;
    }
    if let Err(e) = &result {
        if let Some(failure) = state.engine.store().failure() {
            tracing::warn!(file = %name, error = %e, store = %failure.describe(),
                "inbox file not imported: the store cannot write; it stays in the inbox and is read again");
            return Processed::Retry;
        }
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    match result {
        Ok(summary) => {
            let target = inbox.dir.join("done").join(format!("{stamp}-{name}"));
            tracing::info!(file = %name, new = summary.new, duplicates = summary.duplicates, review = summary.review, "inbox file imported");
            let summary_text = serde_json::to_string_pretty(&summary).unwrap_or_default();
            move_with_note(path, &target, "summary.json", &summary_text);
        }
        Err(e) => {
            let target = inbox.dir.join("failed").join(format!("{stamp}-{name}"));
            let why = e.to_string();
            tracing::warn!(file = %name, error = %why, "inbox file failed");
            if let Some(summary) = e.summary() {
                // Refused records: the summary lists each with its position.
                let note = PathBuf::from(format!("{}.summary.json", target.display()));
                let text = serde_json::to_string_pretty(summary).unwrap_or_default();
                if let Err(e) = std::fs::write(&note, text) {
                    tracing::warn!(file = %note.display(), error = %e, "cannot write inbox note");
                }
            }
            move_with_note(path, &target, "error", &format!("{why}\n"));
        }
    }
    Processed::Moved
}

fn move_with_note(from: &Path, to: &Path, suffix: &str, note: &str) {
    let note_path = PathBuf::from(format!("{}.{suffix}", to.display()));
    if let Err(e) = std::fs::write(&note_path, note) {
        tracing::warn!(file = %note_path.display(), error = %e, "cannot write inbox note");
    }
    if let Err(e) = std::fs::rename(from, to) {
        tracing::error!(file = %from.display(), to = %to.display(), error = %e, "cannot move inbox file");
    }
}

#[cfg(test)]
mod tests {
    use super::is_temporary;

    #[test]
    fn temporary_names_of_common_tools_are_recognised_in_any_case() {
        for name in [
            ".statement.csv",
            "statement.csv.part",
            "STATEMENT.CSV.PART",
            "statement.csv.partial",
            "statement.csv.filepart",
            "statement.csv.crdownload",
            "statement.csv.download",
            "statement.csv.tmp",
            "statement.csv.temp",
            "statement.csv.swp",
            "statement.csv~",
            "~$statement.xlsx",
        ] {
            assert!(is_temporary(name), "{name}");
        }
        for name in [
            "statement.csv",
            "camt053-2026-03.xml",
            "export.part1.csv",
            "mt940.sta",
            "a~b.csv",
        ] {
            assert!(!is_temporary(name), "{name}");
        }
    }
}
