//! The file inbox: folders where users (or their bank's SFTP job) drop statements and exports.
//!
//! A file is taken once it is complete (size and modification time unchanged between two looks a second apart;
//! names starting with `.` or ending in `.part`/`.tmp` are still being written). It is sniffed (or routed to the
//! connector that owns the folder), parsed and ingested; only after the records are durable is it moved to `done/`
//! (with a `.summary.json` beside it) — or to `failed/` with a `.error` file saying why (and a `.summary.json` listing
//! the records the engine refused, when that is why). A crash before the move leaves the file in place, and
//! re-processing it is harmless: every record dedupes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::config::Config;
use crate::plugin_host::PluginHost;

/// One watched folder and the connector it belongs to (`None`: any file connector, by sniffing).
#[derive(Debug, Clone)]
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
const SETTLE: Duration = Duration::from_millis(1000);

/// Watch the inboxes until cancelled.
pub async fn run(
    state: AppState,
    host: Arc<PluginHost>,
    inboxes: Vec<Inbox>,
    cancel: CancellationToken,
) {
    for inbox in &inboxes {
        for sub in ["", "done", "failed"] {
            if let Err(e) = std::fs::create_dir_all(inbox.dir.join(sub)) {
                tracing::error!(dir = %inbox.dir.display(), error = %e, "cannot create inbox folder");
            }
        }
        tracing::info!(dir = %inbox.dir.display(), connector = inbox.connector.as_deref().unwrap_or("any"), "watching inbox");
    }
    let mut seen: HashMap<PathBuf, (u64, SystemTime, std::time::Instant)> = HashMap::new();
    loop {
        for inbox in &inboxes {
            for path in candidates(&inbox.dir) {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let stamp = (
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                );
                let now = std::time::Instant::now();
                match seen.get(&path) {
                    Some((len, mtime, since)) if (*len, *mtime) == stamp => {
                        if now.duration_since(*since) >= SETTLE {
                            seen.remove(&path);
                            process(&state, &host, inbox, &path).await;
                        }
                    }
                    _ => {
                        seen.insert(path, (stamp.0, stamp.1, now));
                    }
                }
            }
        }
        seen.retain(|p, _| p.exists());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

fn candidates(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            !name.starts_with('.') && !name.ends_with(".part") && !name.ends_with(".tmp")
        })
        .collect();
    out.sort();
    out
}

async fn process(state: &AppState, host: &PluginHost, inbox: &Inbox, path: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let result =
        crate::api::import_path(state, host, &name, inbox.connector.as_deref(), path).await;
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
            let why = e.message().to_string();
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
