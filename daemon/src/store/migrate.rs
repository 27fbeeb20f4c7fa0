//! Conversions of older stores, run at open (and after restoring an older backup), one schema after the other.
//!
//! Schema 3 -> 4: blocks are packed from now on (see `blocks::pack`); stored ones stay as they are and read as before.
//!
//! Schema 2 -> 3: the `s/<key>` seen keys move into `S/` blocks (see `seen`), up to a block's worth per atomic batch
//! that removes them and writes their block, so a conversion cut short continues with the keys still left and no key
//! is lost or kept twice.
//!
//! Schema 1 -> 2. Schema 1 covers two layouts: the first release's, and the one that followed it without a version bump.
//! Both end up in schema 2:
//! - payments, allocations, review items and audit events move from a key each into blocks;
//! - an old `o/` outbox row becomes the `outbox` flag on the event it was made from;
//! - an invoice's `i/alloc-by-invoice/` rows become its `allocations` list, and its `p/` key its `announced_status`;
//! - the `i/alloc-by-payment/` rows, which nothing reads (a payment lists its allocations), are dropped.
//!
//! Each step moves its records in atomic batches (old keys removed, new ones written) and the schema version is raised
//! last, so a conversion cut short by a crash continues with whatever is still in the old layout on the next start.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::blocks::{self, MAX_BLOCK};
use super::seen;
use super::{decode, encode, seq_key, StoreResult, SCHEMA_VERSION};

/// Records moved per batch.
const PER_BATCH: usize = MAX_BLOCK * 16;

/// Convert a store of schema `from` (1 to 3) to [`SCHEMA_VERSION`].
pub(super) fn upgrade(tree: &sled::Tree, from: u64) -> StoreResult<()> {
    if from < 2 {
        from_v1(tree)?;
    }
    if from < 3 {
        from_v2(tree, None)?;
    }
    from_v3(tree)
}

/// Schema 3 -> 4: blocks written from now on may be packed ([`blocks::pack`]); those already stored are read as they
/// are, so nothing moves. The version is raised so that an older settled refuses the store with a clear error
/// instead of failing on the first packed block it reads.
fn from_v3(tree: &sled::Tree) -> StoreResult<()> {
    tree.insert(b"m/schema", SCHEMA_VERSION.to_string().as_bytes())?;
    tree.flush()?;
    tracing::info!("store converted from schema 3 to {SCHEMA_VERSION}: new blocks are packed");
    Ok(())
}

/// Schema 2 -> 3: `s/<key>` into seen blocks. `stop_after` blocks, in tests: a conversion cut short.
pub(super) fn from_v2(tree: &sled::Tree, stop_after: Option<usize>) -> StoreResult<()> {
    // A conversion cut short left blocks: new ones follow them.
    let mut next = match tree.scan_prefix(seen::PREFIX.as_bytes()).keys().next_back() {
        None => 1,
        Some(key) => seen::block_number(&key?)? + 1,
    };
    let mut moved = 0usize;
    let mut written = 0usize;
    loop {
        if stop_after.is_some_and(|stop| written >= stop) {
            return Ok(());
        }
        let rows = tree
            .scan_prefix(seen::OLD_PREFIX.as_bytes())
            .take(seen::MAX_BLOCK)
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            break;
        }
        let mut batch = sled::Batch::default();
        for (k, _) in &rows {
            batch.remove(k);
        }
        let entries = rows
            .iter()
            .map(|(k, v)| (std::str::from_utf8(&k[seen::OLD_PREFIX.len()..]), &v[..]))
            .map(|(k, v)| k.map(|k| (k, v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| super::StoreError::Io {
                context: "converting seen keys".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
        batch.insert(
            seen::block_key(next).as_bytes(),
            seen::encode_block(entries),
        );
        tree.apply_batch(batch)?;
        next += 1;
        moved += rows.len();
        written += 1;
    }
    tree.insert(b"m/schema", b"3")?;
    tree.flush()?;
    tracing::info!(seen_keys = moved, "store converted from schema 2 to 3");
    Ok(())
}

/// Schema 1 -> 2.
fn from_v1(tree: &sled::Tree) -> StoreResult<()> {
    let mut moved = 0usize;
    for kind in blocks::BLOCKED {
        moved += entities_into_blocks(tree, kind)?;
    }
    moved += events_into_blocks(tree)?;
    moved += remove_prefix(tree, b"o/")?;
    moved += fold_into_invoices(tree, "i/alloc-by-invoice/", |invoice, row| {
        let list = invoice["allocations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut ids: Vec<String> = list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if let Some(id) = row.as_str() {
            if !ids.iter().any(|have| have == id) {
                ids.push(id.to_string());
            }
        }
        // Oldest first: ids number allocations in the order they were made.
        ids.sort_by_key(|id| id.rsplit_once('_').and_then(|(_, n)| n.parse::<u64>().ok()));
        invoice["allocations"] = serde_json::json!(ids);
    })?;
    moved += remove_prefix(tree, b"i/alloc-by-payment/")?;
    moved += fold_into_invoices(tree, "p/", |invoice, status| {
        invoice["announced_status"] = status;
    })?;
    tree.insert(b"m/schema", b"2")?;
    tree.flush()?;
    tracing::info!(records = moved, "store converted from schema 1 to 2");
    Ok(())
}

/// `e/<kind>/<prefix>_<n>` keys into blocks of [`MAX_BLOCK`].
fn entities_into_blocks(tree: &sled::Tree, kind: &str) -> StoreResult<usize> {
    // Ids sort by number, not by text, once their digits outgrow the padding: sort the keys first.
    let prefix = format!("e/{kind}/");
    let mut keys: Vec<(u64, String)> = Vec::new();
    for key in tree.scan_prefix(prefix.as_bytes()).keys() {
        let key = String::from_utf8_lossy(&key?).to_string();
        if let Some((_, _, n)) = blocks::blocked_key(&key) {
            keys.push((n, key));
        }
    }
    keys.sort();
    let mut moved = 0;
    for group in keys.chunks(PER_BATCH) {
        let mut batch = sled::Batch::default();
        let mut records = Vec::with_capacity(group.len());
        for (n, key) in group {
            let Some(value) = tree.get(key.as_bytes())? else {
                continue;
            };
            batch.remove(key.as_bytes());
            records.push((*n, key[prefix.len()..].to_string(), value));
        }
        for block in records.chunks(MAX_BLOCK) {
            let encoded =
                blocks::encode_fresh(block.iter().map(|(_, id, v)| (id.as_str(), &v[..])));
            batch.insert(blocks::block_key(kind, block[0].0).as_bytes(), encoded);
        }
        moved += records.len();
        tree.apply_batch(batch)?;
    }
    Ok(moved)
}

/// One event per `v/<id>` key (a JSON object) into blocks (JSON arrays), flagging the events old `o/` rows were made from.
fn events_into_blocks(tree: &sled::Tree) -> StoreResult<usize> {
    #[derive(Deserialize)]
    struct OutboxRow {
        event_id: u64,
    }
    let mut announced = HashSet::new();
    for item in tree.scan_prefix(b"o/") {
        let (k, v) = item?;
        announced.insert(decode::<OutboxRow>(&String::from_utf8_lossy(&k), &v)?.event_id);
    }
    let mut moved = 0;
    let mut legacy: Vec<(u64, sled::IVec, Vec<u8>)> = Vec::new();
    let mut flush = |legacy: &mut Vec<(u64, sled::IVec, Vec<u8>)>| -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        for (_, k, _) in legacy.iter() {
            batch.remove(k);
        }
        // A block's key is its first event's key, so it is inserted after the removals.
        for group in legacy.chunks(MAX_BLOCK) {
            let events = blocks::encode_events(group.iter().map(|(_, _, v)| v.as_slice()));
            batch.insert(seq_key("v/", group[0].0).as_bytes(), events);
        }
        moved += legacy.len();
        tree.apply_batch(batch)?;
        legacy.clear();
        Ok(())
    };
    for item in tree.scan_prefix(b"v/") {
        let (k, v) = item?;
        if v.first() != Some(&b'{') {
            continue;
        }
        let key = String::from_utf8_lossy(&k).to_string();
        let id: u64 = key["v/".len()..].parse().unwrap_or(0);
        let value = if announced.contains(&id) {
            let mut event: super::Event = decode(&key, &v)?;
            event.outbox = true;
            encode(&event)
        } else {
            v.to_vec()
        };
        legacy.push((id, k, value));
        if legacy.len() == PER_BATCH {
            flush(&mut legacy)?;
        }
    }
    if !legacy.is_empty() {
        flush(&mut legacy)?;
    }
    Ok(moved)
}

/// Rows `<prefix><invoice id>` or `<prefix><invoice id>/<more>` folded into their invoice's JSON, a batch at a time; rows
/// of an invoice that no longer exists are dropped.
fn fold_into_invoices(
    tree: &sled::Tree,
    prefix: &str,
    fold: impl Fn(&mut serde_json::Value, serde_json::Value),
) -> StoreResult<usize> {
    let mut moved = 0;
    loop {
        let rows = tree
            .scan_prefix(prefix.as_bytes())
            .take(PER_BATCH)
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(moved);
        }
        let mut invoices: BTreeMap<String, Option<serde_json::Value>> = BTreeMap::new();
        let mut batch = sled::Batch::default();
        for (k, v) in &rows {
            let key = String::from_utf8_lossy(k).to_string();
            let rest = &key[prefix.len()..];
            let id = rest.split_once('/').map_or(rest, |(id, _)| id).to_string();
            if !invoices.contains_key(&id) {
                let stored = super::entity_key("invoice", &id);
                let invoice = match tree.get(stored.as_bytes())? {
                    Some(bytes) => Some(decode(&stored, &bytes)?),
                    None => None,
                };
                invoices.insert(id.clone(), invoice);
            }
            if let Some(invoice) = invoices.get_mut(&id).and_then(Option::as_mut) {
                fold(invoice, decode(&key, v)?);
            }
            batch.remove(k);
        }
        for (id, invoice) in invoices {
            if let Some(invoice) = invoice {
                batch.insert(
                    super::entity_key("invoice", &id).as_bytes(),
                    encode(&invoice),
                );
            }
        }
        moved += rows.len();
        tree.apply_batch(batch)?;
    }
}

/// Remove every key under `prefix`, a batch at a time.
fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> StoreResult<usize> {
    let mut moved = 0;
    loop {
        let keys = tree
            .scan_prefix(prefix)
            .keys()
            .take(PER_BATCH)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Ok(moved);
        }
        let mut batch = sled::Batch::default();
        for k in &keys {
            batch.remove(k);
        }
        moved += keys.len();
        tree.apply_batch(batch)?;
    }
}
