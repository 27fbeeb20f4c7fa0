//! `seen`: the idempotency keys of everything ingested, appended in blocks and found through an in-memory index.
//!
//! A key of its own per ingested line (`s/<key>`, schema 2) cost sled a random insert in a large tree (16-25 µs in
//! BENCHMARKS.md) plus a look-up that nearly always missed. Now:
//! - a write set's seen keys are appended as one block `S/<20-digit n>` (more than [`MAX_BLOCK`] make more blocks), a
//!   JSON array of `[key, produced]` pairs; block numbers only grow, and blocks are never rewritten;
//! - at open every block is read once into a [`SeenIndex`]: a sorted array of 64-bit fingerprints of the keys, each with
//!   the number of the block that holds it (12 bytes a key), plus the entries recorded since (hash maps, merged into
//!   the arrays in place once they hold an eighth as many);
//! - a look-up hashes the key: no fingerprint, never seen (no store read, the common case of a new line); otherwise the
//!   blocks the fingerprint points at are read, newest first, and the exact key is searched in them. Two keys with the
//!   same fingerprint therefore never hide each other, and a key recorded again is answered by its newest block.
//!
//! The index belongs to one opening of the store: [`Store::reopen`](super::Store::reopen) builds a new one from disk, so a
//! write whose flush failed is forgotten with the rest of it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{StoreError, StoreResult};

/// Key prefix of seen blocks.
pub(super) const PREFIX: &str = "S/";

/// The key prefix of schema 2's one key per seen entry (converted by `migrate`).
pub(super) const OLD_PREFIX: &str = "s/";

/// Entries per block at most: a bulk write set of 250 records makes one block of about 9 KB.
pub(super) const MAX_BLOCK: usize = 512;

/// Entries recorded since the last merge that make the next one: at least this many, and at least an eighth of the
/// merged arrays, so merging costs amortised O(1) per entry.
const MERGE_AT: usize = 16 * 1024;

/// Decoded blocks kept for the next look-ups: re-reading a file asks for its keys in the order they were written.
const CACHED_BLOCKS: usize = 4;

/// How a key is reduced to 64 bits (tests inject one that collides).
pub(crate) type Fingerprint = fn(&str) -> u64;

/// SipHash with a key drawn once per process: fingerprints are never stored, so they need not be stable, and a sender
/// cannot choose keys that collide on purpose (a collision would only cost a block read anyway).
pub(crate) fn fingerprint(key: &str) -> u64 {
    static STATE: OnceLock<std::hash::RandomState> = OnceLock::new();
    STATE.get_or_init(std::hash::RandomState::new).hash_one(key)
}

pub(super) fn block_key(n: u32) -> String {
    format!("{PREFIX}{n:020}")
}

pub(super) fn block_number(key: &[u8]) -> StoreResult<u32> {
    let text = String::from_utf8_lossy(key);
    text.strip_prefix(PREFIX)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            corrupt(
                &text,
                "a seen block key is `S/` and a block number below 2^32",
            )
        })
}

fn corrupt(key: &str, message: &str) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        source: <serde_json::Error as serde::de::Error>::custom(message),
    }
}

/// A stored block: `[key, produced]` pairs.
pub(super) type Block = Vec<(String, Box<RawValue>)>;

/// One entry read for the index only: the key, borrowed where it has no escapes, and the value skipped.
#[derive(Deserialize)]
struct KeyOnly<'a>(#[serde(borrow)] Cow<'a, str>, IgnoredAny);

/// `[[key, produced], ...]` from values already encoded.
pub(super) fn encode_block<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        out.extend_from_slice(&super::encode(key));
        out.push(b',');
        out.extend_from_slice(value);
        out.push(b']');
    }
    out.push(b']');
    out
}

/// The in-memory index of one opening: fingerprint -> blocks holding a key with it.
pub(super) struct SeenIndex {
    fingerprint: Fingerprint,
    /// Merged entries sorted by `(fingerprint, block)`, each pair once, as two arrays (no padding between a u64 and a u32).
    fingerprints: Vec<u64>,
    blocks: Vec<u32>,
    /// Entries recorded since the last merge; their blocks are newer than every merged one.
    recent: Recent,
    /// The number the next block gets.
    next_block: u32,
    /// The last blocks read, newest use last.
    cache: Mutex<Vec<(u32, Arc<Block>)>>,
}

/// The entries recorded since the last merge, fingerprint -> blocks: hash maps, as a look-up (two a line) and an insert
/// (one a line) in a B-tree of up to an eighth of the index cost a bulk import more than the rest of dedupe.
#[derive(Default)]
struct Recent {
    /// A fingerprint's first block.
    first: HashMap<u64, u32, BuildHasherDefault<FingerprintHasher>>,
    /// Its later blocks, oldest first (a key recorded again, or two keys sharing a fingerprint): rare.
    more: HashMap<u64, Vec<u32>, BuildHasherDefault<FingerprintHasher>>,
    len: usize,
}

impl Recent {
    /// Note that block `n` holds a key with fingerprint `fp`; `n` is never below a block noted before.
    fn insert(&mut self, fp: u64, n: u32) {
        match self.first.get(&fp) {
            None => {
                self.first.insert(fp, n);
            }
            Some(&first) if first == n => return,
            Some(_) => {
                let more = self.more.entry(fp).or_default();
                if more.last() == Some(&n) {
                    return;
                }
                more.push(n);
            }
        }
        self.len += 1;
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The blocks noted for `fp`, newest first.
    fn newest_first(&self, fp: u64) -> impl Iterator<Item = u32> + '_ {
        let more = self.more.get(&fp).map(Vec::as_slice).unwrap_or_default();
        more.iter().rev().chain(self.first.get(&fp)).copied()
    }

    /// Every `(fingerprint, block)` entry, in no order.
    fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let first = self.first.iter().map(|(fp, n)| (*fp, *n));
        let more = self
            .more
            .iter()
            .flat_map(|(fp, blocks)| blocks.iter().map(move |n| (*fp, *n)));
        first.chain(more)
    }

    /// Every entry, sorted.
    fn sorted(self) -> Vec<(u64, u32)> {
        let mut entries: Vec<(u64, u32)> = self.iter().collect();
        entries.sort_unstable();
        entries
    }

    /// What the maps reserve on the heap (a hash map's slot holds its entry and a control byte).
    fn heap_bytes(&self) -> usize {
        self.first.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
            + self.more.capacity() * (std::mem::size_of::<(u64, Vec<u32>)>() + 1)
            + self.more.values().map(|v| v.capacity() * 4).sum::<usize>()
    }
}

/// Fingerprints are hashes already (keyed per process): the map uses them as they are.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The first position in `sorted` holding `fp` or more. Fingerprints are spread evenly over the 64-bit range, so the
/// search starts where an even spread puts `fp` and widens from there until `fp` is bracketed, then bisects the
/// bracket: a few neighbouring cache lines of a large array instead of the far-apart probes a bisection of all of
/// it makes (each a cache miss). Correct for any sorted array; only slower when the spread is uneven.
fn lower_bound(sorted: &[u64], fp: u64) -> usize {
    let len = sorted.len();
    if len == 0 {
        return 0;
    }
    let spread = (u128::from(fp) * len as u128) >> 64;
    let guess = usize::try_from(spread).map_or(len - 1, |g| g.min(len - 1));
    // Afterwards everything before `lo` is below `fp`, and `hi` is `len` or holds `fp` or more.
    let (mut lo, mut hi);
    let mut step = 1;
    if sorted[guess] < fp {
        lo = guess + 1;
        hi = lo;
        while hi < len && sorted[hi] < fp {
            lo = hi + 1;
            hi = (hi + step).min(len);
            step *= 2;
        }
    } else {
        hi = guess;
        lo = guess;
        while lo > 0 && sorted[lo - 1] >= fp {
            hi = lo - 1;
            lo = hi.saturating_sub(step);
            step *= 2;
        }
    }
    lo + sorted[lo..hi].partition_point(|have| *have < fp)
}

impl SeenIndex {
    /// Read every block of `tree` into a new index.
    pub(super) fn load(tree: &sled::Tree, fingerprint: Fingerprint) -> StoreResult<SeenIndex> {
        let mut entries: Vec<(u64, u32)> = Vec::new();
        let mut next_block = 1;
        for item in tree.scan_prefix(PREFIX.as_bytes()) {
            let (k, v) = item?;
            let n = block_number(&k)?;
            let key = String::from_utf8_lossy(&k);
            let json = super::blocks::unpack(&key, &v)?;
            let keys: Vec<KeyOnly<'_>> =
                serde_json::from_slice(&json).map_err(|source| StoreError::Corrupt {
                    key: key.to_string(),
                    source,
                })?;
            entries.extend(keys.iter().map(|KeyOnly(key, _)| (fingerprint(key), n)));
            next_block = n
                .checked_add(1)
                .ok_or_else(|| corrupt(&block_key(n), "the last possible seen block is taken"))?;
        }
        // A block holding two keys of one fingerprint needs to be named once.
        entries.sort_unstable();
        entries.dedup();
        let (fingerprints, blocks) = entries.into_iter().unzip();
        Ok(SeenIndex {
            fingerprint,
            fingerprints,
            blocks,
            recent: Recent::default(),
            next_block,
            cache: Mutex::new(Vec::new()),
        })
    }

    /// Entries: `(fingerprint, block)` pairs, about one per key recorded (a key recorded again counts again).
    pub(super) fn len(&self) -> usize {
        self.fingerprints.len() + self.recent.len()
    }

    /// Bytes the index holds on the heap (what its arrays and the maps of recent entries reserve).
    pub(super) fn heap_bytes(&self) -> usize {
        self.fingerprints.capacity() * 8 + self.blocks.capacity() * 4 + self.recent.heap_bytes()
    }

    /// Split `entries` (a write set's seen keys with their encoded values) into blocks numbered from
    /// [`next_block`](Self::next_block): `(block key, block bytes)` for the batch.
    pub(super) fn blocks_for(
        &self,
        entries: &[(String, Vec<u8>)],
    ) -> StoreResult<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for (i, chunk) in entries.chunks(MAX_BLOCK).enumerate() {
            let n = u32::try_from(i)
                .ok()
                .and_then(|i| self.next_block.checked_add(i))
                .ok_or_else(|| corrupt(PREFIX, "the last possible seen block is taken"))?;
            out.push((
                n,
                super::blocks::pack(encode_block(
                    chunk.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                )),
            ));
        }
        Ok(out)
    }

    /// After the batch holding `blocks_for(entries)` was applied: index its keys.
    pub(super) fn record(&mut self, entries: &[(String, Vec<u8>)]) {
        let mut n = self.next_block;
        for chunk in entries.chunks(MAX_BLOCK) {
            for (key, _) in chunk {
                self.recent.insert((self.fingerprint)(key), n);
            }
            n += 1;
        }
        self.next_block = n;
        if self.recent.len() >= MERGE_AT.max(self.fingerprints.len() / 8) {
            self.merge();
        }
    }

    /// Move the recent entries into the sorted arrays, in place: the arrays grow (by doubling, so most merges find
    /// the room already reserved, and room not yet written takes no memory) and are merged from the back, so no second
    /// copy of them is made. (A merge into new arrays held both at once: ~40 MB for 1.7 million entries.)
    fn merge(&mut self) {
        let recent = std::mem::take(&mut self.recent).sorted();
        let merged = self.fingerprints.len();
        let total = merged + recent.len();
        self.fingerprints.resize(total, 0);
        self.blocks.resize(total, 0);
        // `i`: merged entries not yet moved, `k`: the next place to fill, from the end.
        let (mut i, mut k) = (merged, total);
        for &(fp, n) in recent.iter().rev() {
            while i > 0 && (self.fingerprints[i - 1], self.blocks[i - 1]) > (fp, n) {
                i -= 1;
                k -= 1;
                self.fingerprints[k] = self.fingerprints[i];
                self.blocks[k] = self.blocks[i];
            }
            k -= 1;
            self.fingerprints[k] = fp;
            self.blocks[k] = n;
        }
    }

    /// The blocks that may hold `key`, newest first.
    fn candidates(&self, key: &str) -> Vec<u32> {
        let fp = (self.fingerprint)(key);
        let mut out: Vec<u32> = self.recent.newest_first(fp).collect();
        let from = lower_bound(&self.fingerprints, fp);
        let to = from
            + self.fingerprints[from..]
                .iter()
                .take_while(|have| **have == fp)
                .count();
        out.extend(self.blocks[from..to].iter().rev());
        out
    }

    /// What `key` produced when it was last recorded, as stored (JSON), or `None` when it never was.
    pub(super) fn get(&self, tree: &sled::Tree, key: &str) -> StoreResult<Option<Box<RawValue>>> {
        for n in self.candidates(key) {
            let block = self.block(tree, n)?;
            if let Some((_, value)) = block.iter().rev().find(|(have, _)| have == key) {
                return Ok(Some(value.clone()));
            }
        }
        Ok(None)
    }

    /// A block, from the cache or the store. A block the index names but the store lacks is corruption.
    fn block(&self, tree: &sled::Tree, n: u32) -> StoreResult<Arc<Block>> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(at) = cache.iter().position(|(have, _)| *have == n) {
            let hit = cache.remove(at);
            let block = hit.1.clone();
            cache.push(hit);
            return Ok(block);
        }
        let key = block_key(n);
        let bytes = tree.get(key.as_bytes())?.ok_or_else(|| {
            corrupt(
                &key,
                "the seen index names this block but the store has no such key",
            )
        })?;
        let block: Arc<Block> = Arc::new(super::decode(&key, &bytes)?);
        if cache.len() >= CACHED_BLOCKS {
            cache.remove(0);
        }
        cache.push((n, block.clone()));
        Ok(block)
    }

    /// Compare this index with one read afresh from `tree`: every difference in words (none when they agree).
    pub(super) fn differences(&self, tree: &sled::Tree) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        let mut old_keys = 0usize;
        for key in tree.scan_prefix(OLD_PREFIX.as_bytes()).keys() {
            let key = key?;
            old_keys += 1;
            if old_keys <= 10 {
                out.push(format!(
                    "seen key {} is in the schema 2 layout, which dedupe no longer reads",
                    String::from_utf8_lossy(&key)
                ));
            }
        }
        if old_keys > 10 {
            out.push(format!(
                "... {} more seen keys in the schema 2 layout",
                old_keys - 10
            ));
        }
        let disk = SeenIndex::load(tree, self.fingerprint)?;
        if disk.next_block > self.next_block {
            out.push(format!(
                "the store holds seen block {} but the index would write the next block as {}",
                block_key(disk.next_block - 1),
                block_key(self.next_block)
            ));
        }
        let mut mine: Vec<(u64, u32)> = self.entries().collect();
        mine.sort_unstable();
        let theirs: Vec<(u64, u32)> = disk.entries().collect();
        let (missing, extra) = sorted_differences(&theirs, &mine);
        // Name the keys of entries one side lacks: read their blocks (few, unless something is badly wrong).
        let named = |(fp, n): (u64, u32)| -> StoreResult<String> {
            let key = block_key(n);
            let Some(bytes) = tree.get(key.as_bytes())? else {
                return Ok(format!("block {key}, which the store does not hold"));
            };
            let block: Block = super::decode(&key, &bytes)?;
            let keys: Vec<&str> = block
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| (self.fingerprint)(k) == fp)
                .collect();
            Ok(match keys.as_slice() {
                [] => format!("block {key}, which holds no key with that fingerprint"),
                _ => format!("key {} in block {key}", keys.join(", ")),
            })
        };
        for entry in missing.iter().take(10) {
            out.push(format!(
                "{} is missing from the in-memory seen index",
                named(*entry)?
            ));
        }
        for entry in extra.iter().take(10) {
            out.push(format!(
                "the in-memory seen index points at {}",
                named(*entry)?
            ));
        }
        if missing.len() > 10 || extra.len() > 10 {
            out.push(format!(
                "{} entries missing from the seen index and {} it holds that the store does not, in all",
                missing.len(),
                extra.len()
            ));
        }
        Ok(out)
    }

    fn entries(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.fingerprints
            .iter()
            .copied()
            .zip(self.blocks.iter().copied())
            .chain(self.recent.iter())
    }
}

/// What sorted `a` holds that sorted `b` lacks, and the other way round.
fn sorted_differences<T: Ord + Copy>(a: &[T], b: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                only_a.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                only_a.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                only_b.push(*y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_in_place_keeps_every_entry_sorted_and_findable() {
        // A fingerprint of few bits, so that many keys share one and runs of equal fingerprints cross the merges.
        fn narrow(key: &str) -> u64 {
            fingerprint(key) % 5_000
        }
        let mut index = SeenIndex {
            fingerprint: narrow,
            fingerprints: Vec::new(),
            blocks: Vec::new(),
            recent: Recent::default(),
            next_block: 1,
            cache: Mutex::new(Vec::new()),
        };
        let mut all: Vec<(u64, u32)> = Vec::new();
        let mut merges = 0;
        for batch in 0..120u32 {
            // Batches of 500 keys, some recorded again later (a key seen twice is indexed under both blocks).
            let entries: Vec<(String, Vec<u8>)> = (0..500u32)
                .map(|i| {
                    (
                        format!("key-{}", (batch * 500 + i) % 45_000),
                        b"{}".to_vec(),
                    )
                })
                .collect();
            let first = index.next_block;
            let before = index.fingerprints.len();
            index.record(&entries);
            if index.fingerprints.len() > before {
                merges += 1;
            }
            for (chunk, n) in entries.chunks(MAX_BLOCK).zip(first..) {
                all.extend(chunk.iter().map(|(key, _)| (narrow(key), n)));
            }
        }
        index.merge();
        assert!(
            merges >= 2,
            "the test merges into arrays already holding entries ({merges})"
        );
        all.sort_unstable();
        all.dedup();
        let mine: Vec<(u64, u32)> = index.entries().collect();
        assert_eq!(mine, all);
        for key in ["key-0", "key-17", "key-44999"] {
            let mut expected: Vec<u32> = all
                .iter()
                .filter(|(fp, _)| *fp == narrow(key))
                .map(|(_, n)| *n)
                .collect();
            expected.reverse();
            assert_eq!(index.candidates(key), expected, "{key}");
        }
    }

    #[test]
    fn lower_bound_agrees_with_a_bisection_on_even_uneven_and_repeating_arrays() {
        let mut seed = 11u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed
        };
        for len in [0usize, 1, 2, 3, 7, 64, 1000, 20_000] {
            let even: Vec<u64> = (0..len).map(|_| next()).collect();
            // Uneven: everything in a narrow band near the top or bottom, and long runs of one value.
            let high: Vec<u64> = (0..len).map(|_| u64::MAX - (next() >> 40)).collect();
            let low: Vec<u64> = (0..len).map(|_| next() >> 40).collect();
            let runs: Vec<u64> = (0..len).map(|_| (next() % 5) << 61).collect();
            for mut sorted in [even, high, low, runs] {
                sorted.sort_unstable();
                let mut probes: Vec<u64> = (0..200).map(|_| next()).collect();
                probes.extend(sorted.iter().step_by(len / 50 + 1).copied());
                probes.extend(
                    sorted
                        .iter()
                        .step_by(len / 50 + 1)
                        .map(|v| v.wrapping_add(1)),
                );
                probes.extend([0, 1, u64::MAX, u64::MAX - 1, 1 << 63]);
                for fp in probes {
                    let want = sorted.partition_point(|have| *have < fp);
                    assert_eq!(lower_bound(&sorted, fp), want, "len {len}, fp {fp}");
                }
            }
        }
    }
}
