//! Schema 1 -> 2: payments, allocations, review items and audit events move from a key each into blocks, and each
//! invoice's last announced payment status from a `p/` key of its own into the invoice.
//!
//! Each group of records moves in one atomic batch (old keys removed, block written), and the schema version is raised
//! last, so a migration cut short by a crash simply continues with the records still in the old layout on next start.

use super::blocks::{self, MAX_BLOCK};
use super::{seq_key, StoreResult, SCHEMA_VERSION};

/// Records moved per batch.
const PER_BATCH: usize = MAX_BLOCK * 16;

pub(super) fn from_v1(tree: &sled::Tree) -> StoreResult<()> {
    let mut moved = 0usize;
    for kind in blocks::BLOCKED {
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
        for group in keys.chunks(PER_BATCH) {
            let mut batch = sled::Batch::default();
            let mut records = Vec::with_capacity(group.len());
            for (n, key) in group {
                let Some(value) = tree.get(key.as_bytes())? else {
                    continue;
                };
                batch.remove(key.as_bytes());
                let id = key[prefix.len()..].to_string();
                records.push((*n, id, value.to_vec()));
            }
            for block in records.chunks(MAX_BLOCK) {
                let pairs: Vec<(String, Vec<u8>)> = block
                    .iter()
                    .map(|(_, id, v)| (id.clone(), v.clone()))
                    .collect();
                batch.insert(
                    blocks::block_key(kind, block[0].0).as_bytes(),
                    blocks::encode_fresh(&pairs),
                );
            }
            moved += records.len();
            tree.apply_batch(batch)?;
        }
    }
    // Events: the old layout is one event (a JSON object) per `v/` key; blocks are JSON arrays.
    let mut legacy: Vec<(sled::IVec, sled::IVec)> = Vec::new();
    let mut flush = |legacy: &mut Vec<(sled::IVec, sled::IVec)>| -> StoreResult<()> {
        if legacy.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, _) in legacy.iter() {
            batch.remove(k);
        }
        for group in legacy.chunks(MAX_BLOCK) {
            let first: super::Event =
                super::decode(&String::from_utf8_lossy(&group[0].0), &group[0].1)?;
            let events: Vec<Vec<u8>> = group.iter().map(|(_, v)| v.to_vec()).collect();
            batch.insert(
                seq_key("v/", first.id).as_bytes(),
                blocks::encode_events(&events),
            );
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
        legacy.push((k, v));
        if legacy.len() == PER_BATCH {
            flush(&mut legacy)?;
        }
    }
    flush(&mut legacy)?;
    // The last announced payment status moves from `p/<invoice id>` into the invoice (`announced_status`).
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in tree.scan_prefix(b"p/").take(PER_BATCH) {
            let (k, status) = item?;
            let id = String::from_utf8_lossy(&k[2..]).to_string();
            let key = format!("e/invoice/{id}");
            if let Some(v) = tree.get(key.as_bytes())? {
                let mut invoice: serde_json::Value = super::decode(&key, &v)?;
                let status: serde_json::Value =
                    super::decode(&String::from_utf8_lossy(&k), &status)?;
                invoice["announced_status"] = status;
                batch.insert(key.as_bytes(), super::encode(&invoice));
            }
            batch.remove(k);
            n += 1;
        }
        if n == 0 {
            break;
        }
        moved += n;
        tree.apply_batch(batch)?;
    }
    tree.insert(b"m/schema", SCHEMA_VERSION.to_string().as_bytes())?;
    tree.flush()?;
    tracing::info!(
        records = moved,
        "store converted from schema 1 to {SCHEMA_VERSION} (records in blocks)"
    );
    Ok(())
}
