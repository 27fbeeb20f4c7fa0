//! Patches: deferred writes that change a few fields of a stored JSON object without reading it.
//!
//! An ingested payment changes four fields of the invoice it pays (`amount_paid`, `allocations`, `announced_status`,
//! `updated_at`). Reading the invoice from sled to rewrite it whole was the import's largest cost (a random read in a
//! tree far larger than the page cache, and the record decoded and encoded again). The engine knows the new values
//! from the matching index, so it writes a [`Patch`] instead: fields set to absolute values, and ids appended to list
//! fields. The base is read only when someone reads the key, and by the checkpoint, which reads in key order.
//!
//! Applying a patch twice is applying it once: set values are absolute and an id already listed is not appended again.
//! So a patch is still right over a base a checkpoint has already patched (the checkpoint writes `base + p1` while a
//! later payment makes the overlay's entry `p1 + p2`), and two patches of one key compose into one.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;

use super::{decode, encode, StoreError, StoreResult};

/// Fields set and ids appended to list fields of a JSON object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch {
    set: Vec<(&'static str, Value)>,
    append: Vec<(&'static str, String)>,
}

impl Patch {
    /// An empty patch.
    pub fn new() -> Patch {
        Patch::default()
    }

    /// Set `field` to `value` (a later set of the same field wins).
    pub fn set(&mut self, field: &'static str, value: Value) -> &mut Patch {
        match self.set.iter_mut().find(|(f, _)| *f == field) {
            Some((_, old)) => *old = value,
            None => self.set.push((field, value)),
        }
        self
    }

    /// Append `id` to the list `field`, unless the list holds it already.
    pub fn append(&mut self, field: &'static str, id: &str) -> &mut Patch {
        if !self.append.iter().any(|(f, v)| *f == field && v == id) {
            self.append.push((field, id.to_string()));
        }
        self
    }

    /// This patch followed by `later`, as one.
    pub fn then(&mut self, later: &Patch) {
        for (field, value) in &later.set {
            self.set(field, value.clone());
        }
        for (field, id) in &later.append {
            self.append(field, id);
        }
    }

    /// The object `base` (JSON bytes of `key`) with the patch applied. Only the fields it changes are parsed: the
    /// others (an invoice's lines and totals) are copied as they are, which keeps a checkpoint's pass over thousands of
    /// patched invoices cheap.
    pub fn apply(&self, key: &str, base: &[u8]) -> StoreResult<Vec<u8>> {
        let corrupt = |source| StoreError::Corrupt {
            key: key.to_string(),
            source,
        };
        let raw = |value: &Value| RawValue::from_string(value.to_string()).map_err(corrupt);
        let mut object: BTreeMap<String, Box<RawValue>> = decode(key, base)?;
        for (field, value) in &self.set {
            object.insert((*field).to_string(), raw(value)?);
        }
        let mut fields: Vec<&'static str> = self.append.iter().map(|(f, _)| *f).collect();
        fields.sort_unstable();
        fields.dedup();
        for field in fields {
            let mut items: Vec<Value> = match object.get(field) {
                Some(list) => decode(key, list.get().as_bytes())?,
                None => Vec::new(),
            };
            for (_, id) in self.append.iter().filter(|(f, _)| *f == field) {
                if !items.iter().any(|v| v.as_str() == Some(id)) {
                    items.push(Value::String(id.clone()));
                }
            }
            object.insert(field.to_string(), raw(&Value::Array(items))?);
        }
        Ok(encode(&object))
    }
}
