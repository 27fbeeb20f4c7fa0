//! The journal is the truth for an invoice's payment state: an ingested payment's allocations are listed in its
//! `payment.recorded` event (and stored as allocation records), both written through in the payment's write set,
//! while the invoice it pays (its `amount_paid`, `allocations`, `announced_status`, `updated_at`, and its
//! `i/open-invoice/` and `i/open-due/` rows) is a deferred write held in the store's overlay
//! ([`crate::store::WriteSet::put_deferred`]). A checkpoint writes the overlay to sled with the event id it covers
//! (`m/checkpoint`); at start and after the store reopens, [`replay`] rebuilds the overlay from the events after it.
//!
//! Replay is idempotent whatever mix of written-through, checkpointed and lost writes an invoice had: an allocation
//! counts only if the invoice does not list its id yet, and `invoice.payment_status_changed` events are applied in
//! order (every change of `announced_status` has one), so the last one wins.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::billing::{due_key, open_invoice};
use super::EngineResult;
use crate::domain::invoice::{self, Invoice, InvoiceKind, InvoiceState, PaymentStatus};
use crate::domain::party::Account;
use crate::reconcile::OpenInvoice;
use crate::store::Store;

/// One allocation as a `payment.recorded` event lists it.
#[derive(Deserialize)]
struct Listed {
    id: String,
    invoice_id: String,
    amount: Decimal,
}

/// An invoice replay touched, as the journal leaves it. Not also a copy of it as read (a tail of 100,000 lines touches
/// about 110,000 invoices, and that second copy raised the start's peak by ~25 MiB): replay changes only what an
/// allocation it did not list yet or a status event changes, so those two say whether it differs from what was read.
struct Touched {
    after: Invoice,
    /// An allocation was added (with its amount and `updated_at`).
    appended: bool,
    /// `announced_status` as read.
    status_read: Option<PaymentStatus>,
}

impl Touched {
    fn changed(&self) -> bool {
        self.appended || self.after.announced_status != self.status_read
    }
}

/// An audit event as far as replay reads it: its data stays undecoded unless its type is one replay applies.
#[derive(Deserialize)]
struct JournalEvent {
    id: u64,
    at: DateTime<Utc>,
    #[serde(rename = "type")]
    kind: String,
    entity_id: String,
    data: Box<RawValue>,
}

/// The fields of an event's data replay reads (`allocations` of `payment.recorded`, `to` of a status change).
#[derive(Deserialize)]
struct JournalData {
    allocations: Option<Box<RawValue>>,
    to: Option<Box<RawValue>>,
}

impl JournalEvent {
    /// What it does to invoices, appended to `steps`. Data replay cannot read is skipped, as an event of another
    /// type is.
    fn steps(self, steps: &mut Vec<Step>) {
        let data = || serde_json::from_str::<JournalData>(self.data.get()).ok();
        match self.kind.as_str() {
            "payment.recorded" => {
                let Some(list) = data().and_then(|d| d.allocations) else {
                    return;
                };
                let listed: Vec<Listed> = serde_json::from_str(list.get()).unwrap_or_default();
                steps.extend(listed.into_iter().map(|a| Step::Allocated(a, self.at)));
            }
            "invoice.payment_status_changed" => {
                let to = data()
                    .and_then(|d| d.to)
                    .and_then(|to| serde_json::from_str::<PaymentStatus>(to.get()).ok());
                if let Some(to) = to {
                    steps.push(Step::Status(self.entity_id, to));
                }
            }
            _ => {}
        }
    }
}

/// What an event after the checkpoint does to an invoice, in the events' order.
enum Step {
    /// An allocation a `payment.recorded` event lists, at the event's time.
    Allocated(Listed, DateTime<Utc>),
    /// An `invoice.payment_status_changed` event: invoice id and the status announced.
    Status(String, PaymentStatus),
}

impl Step {
    fn invoice_id(&self) -> &str {
        match self {
            Step::Allocated(listed, _) => &listed.invoice_id,
            Step::Status(id, _) => id,
        }
    }
}

/// Rebuild the overlay from the events after the checkpoint (a store without one gets one at its newest event: it
/// has deferred nothing). Returns how many events were read.
pub(crate) fn replay(store: &Store) -> EngineResult<u64> {
    let started = std::time::Instant::now();
    store.clear_deferred();
    store.init_checkpoint()?;
    let from = store.checkpoint()?.unwrap_or(0);
    // Decoded a run of blocks per core, each event only as far as replay needs it; the steps stay in the events' order.
    let blocks = store.event_blocks_from(from)?;
    let runs = in_parallel(&blocks, BLOCKS_PARALLEL_FROM, |blocks| {
        let mut steps = Vec::new();
        let mut read = 0u64;
        for block in blocks {
            for event in block.events(|e: &JournalEvent| e.id)? {
                read += 1;
                event.steps(&mut steps);
            }
        }
        Ok((steps, read))
    })?;
    drop(blocks);
    let read: u64 = runs.iter().map(|(_, read)| read).sum();
    let steps: Vec<Step> = runs.into_iter().flat_map(|(steps, _)| steps).collect();
    let events_ms = started.elapsed().as_millis();
    // The invoices the steps touch, read in key order (nothing writes the store meanwhile, so the order changes no
    // value): neighbours share sled's pages, where reading them in the events' order pulled a page from the log file for
    // almost every invoice of a long tail.
    // Reading and decoding them is most of a long replay's time: it is shared out between the cores (each thread
    // reads its own run of keys, so they still share pages).
    let ids: Vec<&str> = steps
        .iter()
        .map(Step::invoice_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let runs = in_parallel(&ids, PARALLEL_FROM, |ids| {
        let mut read = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(inv) = store.get::<Invoice>("invoice", id)? {
                read.push(Touched {
                    status_read: inv.announced_status,
                    after: inv,
                    appended: false,
                });
            }
        }
        Ok(read)
    })?;
    // In key order, as the rows are written below; `place` finds an invoice among them.
    let mut touched: Vec<Touched> = runs.into_iter().flatten().collect();
    let place: HashMap<String, usize> = touched
        .iter()
        .enumerate()
        .map(|(i, t)| (t.after.id.clone(), i))
        .collect();
    for step in steps {
        let Some(t) = place
            .get(step.invoice_id())
            .and_then(|&i| touched.get_mut(i))
        else {
            continue;
        };
        match step {
            Step::Allocated(a, at) => {
                if !t.after.allocations.contains(&a.id) {
                    t.after.amount_paid += a.amount;
                    t.after.allocations.push(a.id);
                    t.after.updated_at = at;
                    t.appended = true;
                }
            }
            Step::Status(_, to) => t.after.announced_status = Some(to),
        }
    }
    // Each invoice's keys are its own, so the threads never write or read each other's.
    in_parallel(&touched, PARALLEL_FROM, |touched| {
        for t in touched {
            if t.changed() {
                store.replay_deferred(&format!("e/invoice/{}", t.after.id), Some(&t.after));
            }
            // Even when the invoice itself is current: a checkpoint cut short writes every `e/invoice/` key before
            // the `i/open-*` rows, so its rows may still be those of before.
            defer_rows(store, &t.after)?;
        }
        Ok(())
    })?;
    if read > 0 {
        tracing::info!(
            events = read,
            after = from,
            invoices = store.deferred_len(),
            events_ms,
            ms = started.elapsed().as_millis(),
            "replayed the journal after the last checkpoint"
        );
    }
    Ok(read)
}

/// Below this many invoices [`in_parallel`] does the work on the calling thread. (Two in unit tests, so that every
/// replay they make shares its work out.)
#[cfg(not(test))]
const PARALLEL_FROM: usize = 4096;
#[cfg(test)]
const PARALLEL_FROM: usize = 2;
/// The same for blocks of events (up to 64 events each, about one invoice each).
const BLOCKS_PARALLEL_FROM: usize = PARALLEL_FROM.div_ceil(64);

/// `work` done on consecutive runs of `items`, one per core (up to four), on scoped threads, when there are `from` or
/// more; the results in the runs' order. The first error is returned once every run has ended.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    from: usize,
    work: impl Fn(&[T]) -> EngineResult<R> + Sync,
) -> EngineResult<Vec<R>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 || items.len() < from.max(2) {
        return Ok(vec![work(items)?]);
    }
    let run = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let runs: Vec<_> = items
            .chunks(run)
            .map(|items| scope.spawn(move || work(items)))
            .collect();
        runs.into_iter()
            .map(|run| match run.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Put an invoice's `i/open-invoice/` and `i/open-due/` rows into the overlay as `save_invoice` leaves them, where the
/// store holds anything else.
fn defer_rows(store: &Store, inv: &Invoice) -> EngineResult<()> {
    let open = inv.state == InvoiceState::Issued
        && inv.kind == InvoiceKind::Invoice
        && invoice::balance(inv) > Decimal::ZERO;
    let open_key = format!("i/open-invoice/{}", inv.id);
    let due_key = format!("i/open-due/{}", due_key(inv));
    let row = store.get_raw::<OpenInvoice>(&open_key)?;
    let due = store.get_raw::<String>(&due_key)?;
    if !open {
        if row.is_some() {
            store.replay_deferred::<()>(&open_key, None);
        }
        if due.is_some() {
            store.replay_deferred::<()>(&due_key, None);
        }
        return Ok(());
    }
    let name: std::sync::Arc<str> = match &row {
        Some(row) => row.account_name.clone(),
        None => store
            .get::<Account>("account", &inv.account_id)?
            .map(|a| a.name.into())
            .unwrap_or_default(),
    };
    if let Some(wanted) = open_invoice(inv, &name) {
        if row.as_ref() != Some(&wanted) {
            store.replay_deferred(&open_key, Some(&wanted));
        }
        if due.is_none() {
            store.replay_deferred(&due_key, Some(&inv.id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    #[test]
    fn in_parallel_gives_every_run_s_results_in_order_and_an_error_of_any_run() {
        let items: Vec<u32> = (0..10_001).collect();
        let runs = in_parallel(&items, 100, |run| {
            Ok(run.iter().map(|n| n * 2).collect::<Vec<_>>())
        })
        .unwrap();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        assert_eq!(runs.len(), threads);
        let all: Vec<u32> = runs.into_iter().flatten().collect();
        assert_eq!(all, items.iter().map(|n| n * 2).collect::<Vec<_>>());
        // One run failing fails the whole.
        let failed = in_parallel(&items, 100, |run| match run.contains(&10_000) {
            true => Err(EngineError::NotFound {
                entity: "item",
                id: "10000".into(),
            }),
            false => Ok(run.len()),
        });
        assert!(matches!(failed, Err(EngineError::NotFound { id, .. }) if id == "10000"));
        // Too few to share: one run, on this thread.
        let here = std::thread::current().id();
        let runs = in_parallel(&items[..99], 100, |_| Ok(std::thread::current().id())).unwrap();
        assert_eq!(runs, vec![here]);
    }
}
