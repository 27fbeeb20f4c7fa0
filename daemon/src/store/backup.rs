//! `settled backup` / `settled restore`: a portable JSON-lines dump of every key.
//!
//! Each line is `{"k": "<key>", "v": <the stored JSON value>}`; the first line is a header naming the format and schema.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use super::{Store, StoreError, StoreResult, SCHEMA_VERSION};

const FORMAT: &str = "settled-backup";

/// Write every key of the store to `file`. Returns the number of records written.
pub fn backup_to(store: &Store, file: &Path) -> StoreResult<u64> {
    let io = |source| StoreError::Io {
        context: format!("writing backup {}", file.display()),
        source,
    };
    let tmp = file.with_extension("partial");
    let out = std::fs::File::create(&tmp).map_err(io)?;
    let mut out = BufWriter::new(out);
    let header = serde_json::json!({"format": FORMAT, "schema": SCHEMA_VERSION, "created_at": chrono::Utc::now()});
    writeln!(out, "{header}").map_err(io)?;
    let mut count = 0u64;
    // Deferred writes included (a checkpoint runs first in `settled backup`, but a store in use may hold some).
    for item in store.scan_merged("")? {
        let (key, v) = item?;
        let value: serde_json::Value = super::decode(&key, &v)?;
        let line = serde_json::json!({"k": key, "v": value});
        writeln!(out, "{line}").map_err(io)?;
        count += 1;
    }
    out.flush().map_err(io)?;
    out.get_ref().sync_all().map_err(io)?;
    drop(out);
    std::fs::rename(&tmp, file).map_err(io)?;
    Ok(count)
}

/// Load a backup into an EMPTY store. Returns the number of records restored.
pub fn restore_from(store: &Store, file: &Path) -> StoreResult<u64> {
    let bad = |line: usize, message: String| StoreError::Io {
        context: format!("reading backup {} line {line}", file.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
    };
    let input = std::fs::File::open(file).map_err(|source| StoreError::Io {
        context: format!("opening backup {}", file.display()),
        source,
    })?;
    let tree = store.tree()?;
    let non_meta = tree
        .iter()
        .keys()
        .filter_map(Result::ok)
        .any(|k| !k.starts_with(b"m/"));
    if non_meta {
        return Err(StoreError::Io {
            context: format!("restoring into {}", store.path().display()),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the data directory already holds records; restore into an empty --data-dir",
            ),
        });
    }
    let mut lines = BufReader::new(input).lines();
    let header = match lines.next() {
        Some(Ok(h)) => h,
        _ => {
            return Err(bad(
                1,
                "empty file, expected a settled-backup header".into(),
            ))
        }
    };
    let header: serde_json::Value =
        serde_json::from_str(&header).map_err(|e| bad(1, format!("bad header: {e}")))?;
    if header["format"] != FORMAT {
        return Err(bad(1, "not a settled backup (format field missing)".into()));
    }
    let schema = header["schema"].as_u64();
    if !schema.is_some_and(|v| (1..=SCHEMA_VERSION).contains(&v)) {
        return Err(bad(
            1,
            format!(
                "backup has schema {}, this settled understands 1 to {SCHEMA_VERSION}",
                header["schema"]
            ),
        ));
    }
    // Parse everything first so a bad line restores nothing.
    let mut batch = sled::Batch::default();
    let mut count = 0u64;
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let line = line.map_err(|e| bad(n, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(n, e.to_string()))?;
        let key = row["k"]
            .as_str()
            .ok_or_else(|| bad(n, "missing key `k`".into()))?;
        let value = serde_json::to_vec(&row["v"]).map_err(|e| bad(n, e.to_string()))?;
        batch.insert(key.as_bytes(), value);
        count += 1;
    }
    tree.apply_batch(batch)?;
    if let Some(older @ 1..SCHEMA_VERSION) = schema {
        super::migrate::upgrade(&tree, older)?;
    }
    store.reload_seen()?;
    store.flush()?;
    Ok(count)
}
