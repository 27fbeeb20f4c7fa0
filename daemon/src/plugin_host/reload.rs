//! Hot reload: watches the plugin folder and hands each changed file to the host once it has settled.
//!
//! A file is handled after [`DEBOUNCE`] without events *and* with the same size, mtime and inode as when
//! its last event arrived, so a slow copy into the folder is loaded once, when complete. A file whose private
//! cache copy failed (a full disk) is tried again every [`super::CACHE_RETRY`] until it loads or is refused
//! for a reason of its own.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{lock, PluginHost};

/// Quiet time before a changed file is looked at.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(300);
const TICK: Duration = Duration::from_millis(100);

/// Whether a path in the plugin folder names a plugin: the platform's library extension, not hidden.
pub(crate) fn is_candidate(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden && path.extension().and_then(|e| e.to_str()) == Some(std::env::consts::DLL_EXTENSION)
}

type Stamp = Option<(u64, SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::symlink_metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?, meta.ino()))
}

struct Pending {
    since: Instant,
    stamp: Stamp,
}

enum Seen {
    Path(PathBuf),
    Rescan,
}

/// Starts the watcher and the task that debounces its events; both are kept by the host.
pub(crate) fn start(host: &Arc<PluginHost>) -> Result<(), notify::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                if event.need_rescan() {
                    let _ = tx.send(Seen::Rescan);
                }
                for path in event.paths {
                    let _ = tx.send(Seen::Path(path));
                }
            }
            Err(_) => {
                let _ = tx.send(Seen::Rescan);
            }
        })?;
    watcher.watch(&host.config.plugin_dir, RecursiveMode::NonRecursive)?;
    *lock(&host.watcher) = Some(watcher);
    let task = tokio::spawn(run(
        Arc::downgrade(host),
        host.config.plugin_dir.clone(),
        rx,
    ));
    lock(&host.tasks).push(task);
    Ok(())
}

async fn run(host: Weak<PluginHost>, dir: PathBuf, mut rx: mpsc::UnboundedReceiver<Seen>) {
    let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            seen = rx.recv() => {
                let Some(seen) = seen else { return };
                let paths = match seen {
                    Seen::Path(path) => vec![path],
                    Seen::Rescan => rescan(&host, &dir),
                };
                for path in paths.into_iter().filter(|p| is_candidate(p)) {
                    let stamp = stamp(&path);
                    pending.insert(path, Pending { since: Instant::now(), stamp });
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let due: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, p)| now.duration_since(p.since) >= DEBOUNCE)
                    .map(|(path, _)| path.clone())
                    .collect();
                let retries: Vec<PathBuf> = match host.upgrade() {
                    Some(host) => lock(&host.files)
                        .iter()
                        .filter(|(path, e)| e.retry_at.is_some_and(|at| at <= now) && !pending.contains_key(*path))
                        .map(|(path, _)| path.clone())
                        .collect(),
                    None => return,
                };
                for path in retries {
                    // A copy into the private cache failed (a full disk): the same file, tried again.
                    let Some(host) = host.upgrade() else { return };
                    host.reconcile(&path).await;
                }
                for path in due {
                    let current = stamp(&path);
                    let Some(entry) = pending.get_mut(&path) else { continue };
                    if current != entry.stamp {
                        // Still changing without telling us (or events were coalesced): wait another round.
                        entry.stamp = current;
                        entry.since = now;
                        continue;
                    }
                    pending.remove(&path);
                    let Some(host) = host.upgrade() else { return };
                    host.reconcile(&path).await;
                }
            }
        }
    }
}

/// Every candidate in the folder plus every file the host knows (to notice removals).
fn rescan(host: &Weak<PluginHost>, dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    if let Some(host) = host.upgrade() {
        paths.extend(lock(&host.files).keys().cloned());
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: bool) {
        assert_eq!(is_candidate(Path::new(name)), expected, "{name}");
    }

    #[test]
    fn only_visible_library_files_are_candidates() {
        check("/p/libgood.so", true);
        check("/p/.libgood.so", false);
        check("/p/libgood.so.tmp", false);
        check("/p/readme.txt", false);
        check("/p/so", false);
    }
}
