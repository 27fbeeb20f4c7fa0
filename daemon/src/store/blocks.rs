//! Blocks: records that are only ever appended in bulk (payments, allocations, review items, audit events) are stored
//! many to a key instead of one key each.
//!
//! sled's cost is per key: a bank file of a million lines wrote about six keys a line, and every key costs the tree a
//! delta, a page rewrite and a share of its log cleaning. Packed into blocks of up to [`MAX_BLOCK`] records, the same
//! records cost a few keys per write set.
//!
//! - An entity block `b/<kind>/<20-digit n>` holds the records of ids `<prefix>_<n>` and up, as a JSON array of
//!   `[id, record]` pairs in id order. `n` is the number of its first id, so the block of an id is the one with the
//!   greatest start at or below the id's number: one reverse range step. Only ids of the form `<prefix>_<digits>` are
//!   blocked (the engine's [`new_id`](crate::engine::Tx::new_id) makes no others); anything else stays a key of its own.
//! - An event block `v/<20-digit first id>` holds consecutive audit events as a JSON array.
//!
//! A write set's new records go to new blocks (ids only grow, so a new id never falls inside an older block); a change
//! to an older record rewrites its block. Every block write is part of the write set's one atomic batch.
//!
//! Blocks (these and the `seen` blocks) of [`PACK_FROM`] bytes or more are stored LZ4-compressed ([`pack`]): the
//! records of a block share their field names and most of their values, so a block shrinks 5-10 fold. sled rewrites a
//! leaf whole when it consolidates or splits it, and recovers its log at open, so every byte saved is saved several
//! times; a leaf of packed blocks also stays under sled's 128 KiB limit for a log item instead of going to a blob
//! file. Every read goes through [`unpack`], which passes JSON written by older settled (or restored from a backup)
//! through as it is.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::{decode, StoreError, StoreResult};

/// Blocks from this size on are packed: below it LZ4 saves little (a lone audit event of an API write).
pub(super) const PACK_FROM: usize = 512;

/// The first byte of a packed value. No JSON text starts with it, so a value is packed exactly when it does.
const PACKED: u8 = 0x01;

/// The largest value [`unpack`] will make: far above any block (64 records, or a seen block's keys), low enough that a
/// corrupt length cannot ask for gigabytes.
const MAX_UNPACKED: usize = 256 << 20;

/// A block's stored bytes: `json` as it is when short, else [`PACKED`], the JSON's length (u32, little-endian) and its
/// LZ4 block.
pub(super) fn pack(json: Vec<u8>) -> Vec<u8> {
    let Ok(len) = u32::try_from(json.len()) else {
        return json;
    };
    if json.len() < PACK_FROM {
        return json;
    }
    let mut out = vec![0; 5 + lz4_flex::block::get_maximum_output_size(json.len())];
    out[0] = PACKED;
    out[1..5].copy_from_slice(&len.to_le_bytes());
    match lz4_flex::block::compress_into(&json, &mut out[5..]) {
        Ok(written) => {
            out.truncate(5 + written);
            out
        }
        // Cannot happen (the buffer has the maximum size LZ4 needs); the JSON is a valid value all the same.
        Err(_) => json,
    }
}

/// The JSON of a stored value: unpacked when [`pack`] packed it, else the bytes themselves.
pub(super) fn unpack<'a>(key: &str, bytes: &'a [u8]) -> StoreResult<Cow<'a, [u8]>> {
    let [PACKED, rest @ ..] = bytes else {
        return Ok(Cow::Borrowed(bytes));
    };
    let bad = |reason: String| StoreError::Unpack {
        key: key.to_string(),
        reason,
    };
    let (len, body) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("it ends inside its length".into()))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_UNPACKED {
        return Err(bad(format!("it claims {len} bytes, more than any block")));
    }
    let mut out = vec![0; len];
    match lz4_flex::block::decompress_into(body, &mut out) {
        Ok(n) if n == len => Ok(Cow::Owned(out)),
        Ok(n) => Err(bad(format!(
            "it unpacks to {n} bytes, not the {len} it claims"
        ))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Entity kinds kept in blocks.
pub(super) const BLOCKED: [&str; 3] = ["payment", "allocation", "review"];

/// Records per block at most: large enough that a write set of a bulk import costs a handful of keys. A sled leaf of
/// such blocks (up to 17 keys before it splits) is above sled's 128 KiB limit for a log item, so sled writes it as a
/// blob file at every rewrite and split; blocks of 16 records avoid most of that and took 10% off a 400,000-line
/// import, but nothing off a 1,000,000-line one, and doubled the start after it (sled recovers its whole log at open,
/// and the leaves were now in it): BENCHMARKS.md, issue 14, seventh session.
pub(super) const MAX_BLOCK: usize = 64;

/// A decoded entity block: `(id, record)` in id order, the records left undecoded.
pub(super) type Block = Vec<(String, Box<RawValue>)>;

/// The blocked kind and id number of an entity key, `None` for keys stored on their own.
pub(super) fn blocked_key(key: &str) -> Option<(&str, &str, u64)> {
    let rest = key.strip_prefix("e/")?;
    let (kind, id) = rest.split_once('/')?;
    if !BLOCKED.contains(&kind) {
        return None;
    }
    let (_, digits) = id.rsplit_once('_')?;
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind, id, digits.parse().ok()?))
}

pub(super) fn block_key(kind: &str, n: u64) -> String {
    format!("b/{kind}/{n:020}")
}

fn block_start(key: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(key);
    text.rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The block that holds (or would hold) id number `n`: the one starting at or below it.
pub(super) fn lookup(tree: &sled::Tree, kind: &str, n: u64) -> StoreResult<Option<(u64, Block)>> {
    let low = format!("b/{kind}/");
    let high = block_key(kind, n);
    match tree.range(low.as_bytes()..=high.as_bytes()).next_back() {
        None => Ok(None),
        Some(item) => {
            let (k, v) = item?;
            let block = decode(&String::from_utf8_lossy(&k), &v)?;
            Ok(Some((block_start(&k), block)))
        }
    }
}

/// Read one record of a block.
pub(super) fn get(
    tree: &sled::Tree,
    kind: &str,
    id: &str,
    n: u64,
) -> StoreResult<Option<Box<RawValue>>> {
    Ok(lookup(tree, kind, n)?.and_then(|(_, block)| {
        block
            .into_iter()
            .find(|(have, _)| have == id)
            .map(|(_, record)| record)
    }))
}

/// Every block of a kind, in id order.
pub(super) fn scan(
    tree: &sled::Tree,
    kind: &str,
) -> impl Iterator<Item = StoreResult<(String, Box<RawValue>)>> {
    let prefix = format!("b/{kind}/");
    tree.scan_prefix(prefix.as_bytes()).flat_map(records)
}

/// The records of one stored block, for an iterator over blocks to flatten (a block that does not decode is one error).
pub(super) fn records<T: DeserializeOwned>(
    item: sled::Result<(sled::IVec, sled::IVec)>,
) -> Vec<StoreResult<T>> {
    match item {
        Err(e) => vec![Err(e.into())],
        Ok((k, v)) => match decode::<Vec<T>>(&String::from_utf8_lossy(&k), &v) {
            Ok(block) => block.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        },
    }
}

/// A new block being filled: its start and `(id, encoded record)` pairs.
type FreshBlock = (u64, Vec<(String, Vec<u8>)>);

/// One record change of a write set: id number, id, new encoded value (`None`: removed).
pub(super) type Change = (u64, String, Option<Vec<u8>>);

/// Turn a write set's changes to one blocked kind into block writes on `batch`.
pub(super) fn write(
    tree: &sled::Tree,
    kind: &str,
    mut changes: Vec<Change>,
    batch: &mut sled::Batch,
) -> StoreResult<()> {
    changes.sort_by_key(|c| c.0);
    // Blocks already stored that this write set changes (or looked at), by start; `true` once changed.
    let mut older: BTreeMap<u64, (Block, bool)> = BTreeMap::new();
    // Ids above the last stored block's greatest id are new: they need no look-up.
    let mut newest = 0;
    if let Some((start, block)) = lookup(tree, kind, u64::MAX)? {
        newest = block
            .iter()
            .filter_map(|(id, _)| id.rsplit_once('_').and_then(|(_, d)| d.parse().ok()))
            .max()
            .unwrap_or(start);
        older.insert(start, (block, false));
    }
    let mut fresh: Vec<FreshBlock> = Vec::new();
    for (n, id, value) in changes {
        if n > newest {
            // A new id: into a new block (ids only grow, so it falls inside no stored block).
            if let Some(bytes) = value {
                match fresh.last_mut() {
                    Some((_, records)) if records.len() < MAX_BLOCK => records.push((id, bytes)),
                    _ => fresh.push((n, vec![(id, bytes)])),
                }
            }
            continue;
        }
        // The stored block whose range holds `n`: the greatest start at or below it. A block cached for an earlier
        // change may not be it (another block can start between the two), so the cache answers only when it holds
        // the id; taking the id for a new one would write a block shadowing the rest of the stored one.
        let cached = older
            .range(..=n)
            .next_back()
            .map(|(start, _)| *start)
            .filter(|start| older[start].0.iter().any(|(have, _)| *have == id));
        let start = match cached {
            Some(start) => start,
            None => match lookup(tree, kind, n)? {
                Some((start, block)) => {
                    older.entry(start).or_insert((block, false));
                    start
                }
                None => {
                    if let Some(bytes) = value {
                        fresh.push((n, vec![(id, bytes)]));
                    }
                    continue;
                }
            },
        };
        let (block, changed) = older.get_mut(&start).expect("looked up above");
        let at = block.iter().position(|(have, _)| *have == id);
        match (at, value) {
            (Some(at), Some(bytes)) => block[at].1 = raw(kind, &id, bytes)?,
            (Some(at), None) => {
                block.remove(at);
            }
            (None, None) => continue,
            // An id within the block's range it does not hold (one removed earlier): in id order, in that block.
            (None, Some(bytes)) => {
                let number = |have: &str| {
                    have.rsplit_once('_')
                        .and_then(|(_, d)| d.parse::<u64>().ok())
                };
                let at = block
                    .iter()
                    .position(|(have, _)| number(have).is_some_and(|m| m > n))
                    .unwrap_or(block.len());
                block.insert(at, (id.clone(), raw(kind, &id, bytes)?));
            }
        }
        *changed = true;
    }
    for (start, (block, changed)) in older {
        if !changed {
            continue;
        }
        let key = block_key(kind, start);
        if block.is_empty() {
            batch.remove(key.as_bytes());
        } else {
            batch.insert(key.as_bytes(), pack(super::encode(&block)));
        }
    }
    for (start, records) in fresh {
        let block = encode_fresh(records.iter().map(|(id, r)| (id.as_str(), r.as_slice())));
        batch.insert(block_key(kind, start).as_bytes(), pack(block));
    }
    Ok(())
}

fn raw(kind: &str, id: &str, bytes: Vec<u8>) -> StoreResult<Box<RawValue>> {
    let text = String::from_utf8(bytes).map_err(|e| StoreError::Io {
        context: format!("encoding {kind} {id}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    RawValue::from_string(text).map_err(|source| StoreError::Corrupt {
        key: format!("e/{kind}/{id}"),
        source,
    })
}

/// `[[id, record], ...]` from records already encoded: nothing is encoded twice.
pub(super) fn encode_fresh<'a>(records: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    json_array(records, |out, (id, record)| {
        out.push(b'[');
        out.extend_from_slice(&super::encode(id));
        out.push(b',');
        out.extend_from_slice(record);
        out.push(b']');
    })
}

/// `[event, ...]` from events already encoded.
pub(super) fn encode_events<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    json_array(events, |out, event| out.extend_from_slice(event))
}

/// A JSON array of `items`, each written by `write`.
fn json_array<T>(
    items: impl IntoIterator<Item = T>,
    mut write: impl FnMut(&mut Vec<u8>, T),
) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(&mut out, item);
    }
    out.push(b']');
    out
}
