//! The Maildir transport: messages in `new/` (complete by the Maildir rules: delivered to `tmp/`, then renamed) go to
//! the plugin in batches; once a batch is committed each file moves to `cur/` with the `S` (seen) flag. A crash before
//! the move leaves the file in `new/`, and reading it again creates nothing twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Mailbox, Retry};

const POLL: Duration = Duration::from_millis(500);

/// Watch the folder until cancelled.
pub(super) async fn run(mailbox: Mailbox, dir: PathBuf, cancel: CancellationToken) {
    let mut delay = Duration::from_secs(1);
    for sub in ["new", "cur", "tmp"] {
        if let Err(e) = std::fs::create_dir_all(dir.join(sub)) {
            tracing::error!(connector = %mailbox.connector, dir = %dir.display(), error = %e, "cannot create maildir folder");
        }
    }
    tracing::info!(connector = %mailbox.connector, dir = %dir.display(), "watching maildir");
    while !cancel.is_cancelled() {
        match batch(&mailbox, &dir).await {
            Ok(0) => {
                mailbox.status().set_state(&mailbox.connector, "watching");
                delay = Duration::from_secs(1);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            Ok(_) => {
                mailbox.status().set_state(&mailbox.connector, "watching");
                delay = Duration::from_secs(1);
            }
            Err(error) => {
                tracing::warn!(connector = %mailbox.connector, dir = %dir.display(), %error, "maildir batch failed; retrying");
                mailbox.status().backing_off(&mailbox.connector, &error);
                if !mailbox.backoff(&mut delay, &cancel).await {
                    break;
                }
            }
        }
    }
    mailbox.status().set_state(&mailbox.connector, "stopped");
}

/// Process up to one batch from `new/`; how many files were handled.
async fn batch(mailbox: &Mailbox, dir: &Path) -> Result<usize, String> {
    let new = dir.join("new");
    let mut names: Vec<String> = std::fs::read_dir(&new)
        .map_err(|e| format!("reading {}: {e}", new.display()))?
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names.truncate(mailbox.config.batch);
    if names.is_empty() {
        return Ok(0);
    }
    let max = mailbox.config.max_bytes();
    let mut messages = Vec::with_capacity(names.len());
    for name in &names {
        let path = new.join(name);
        let location = format!("new/{name}");
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .len();
        if size > max {
            messages.push(mailbox.oversized(format!("oversized:{name}"), location, size));
            continue;
        }
        let raw = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        match mailbox.judge(raw, location).await {
            Ok(m) => messages.push(m),
            Err(Retry(reason)) => {
                return Err(format!(
                    "handing {} to the plugin: {reason}",
                    path.display()
                ))
            }
        }
    }
    let summary = mailbox
        .state
        .engine
        .ingest_mail(&mailbox.connector, &mailbox.plugin, None, messages)
        .await
        .map_err(|e| format!("committing messages of {}: {e}", dir.display()))?;
    mailbox
        .state
        .metrics
        .records_ingested
        .fetch_add(summary.records.new, std::sync::atomic::Ordering::Relaxed);
    for (location, reason) in &summary.failed {
        tracing::warn!(connector = %mailbox.connector, %location, %reason, "mail message failed");
    }
    mailbox.status().committed(&mailbox.connector, &summary);
    for name in &names {
        let from = new.join(name);
        let to = dir.join("cur").join(seen_name(name));
        std::fs::rename(&from, &to)
            .map_err(|e| format!("moving {} to {}: {e}", from.display(), to.display()))?;
    }
    Ok(names.len())
}

/// The `cur/` name of a message: its name with the `S` flag in the `:2,` info part.
fn seen_name(name: &str) -> String {
    match name.split_once(":2,") {
        Some((base, flags)) if flags.contains('S') => format!("{base}:2,{flags}"),
        Some((base, flags)) => {
            let mut f: Vec<char> = flags.chars().chain(['S']).collect();
            f.sort_unstable();
            format!("{base}:2,{}", f.into_iter().collect::<String>())
        }
        None => format!("{name}:2,S"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_seen_message_gets_the_s_flag_in_sorted_order() {
        assert_eq!(super::seen_name("1.M2.host"), "1.M2.host:2,S");
        assert_eq!(super::seen_name("1.M2.host:2,FT"), "1.M2.host:2,FST");
        assert_eq!(super::seen_name("1.M2.host:2,S"), "1.M2.host:2,S");
    }
}
