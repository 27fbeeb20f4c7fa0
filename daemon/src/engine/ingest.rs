//! Records from connector plugins (and API payments without explicit allocations) into the pipeline:
//! dedupe on `seen`, leads captured, payments reconciled against open invoices, the rest to the review queue.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use settled_plugin_api::{EntryStatus, LeadRecord, PaymentKind, PaymentRecord, Record};

use super::billing::{
    index_paid, payment_recorded, Allocated, Allocating, AllocationJson, Named, PaymentDraft,
    PaymentInput,
};
use super::reversal::{self, Original};
use super::{Engine, EngineResult, ImportJournal, Tx};
use crate::domain::invoice::{self, Invoice};
use crate::domain::lead::LeadInput;
use crate::domain::money::{parse_positive_amount, Currency};
use crate::domain::party::CreditSource;
use crate::domain::payment::{self, AllocationKind, AllocationRequest, Payment};
use crate::domain::DomainError;
use crate::reconcile::{self, Decision, ReviewReason, Suggestion};

/// Records per write set on bulk paths: bounds memory while sharing one flush across many records.
const CHUNK: usize = 250;

/// What an import or intake did, record by record, summed up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImportSummary {
    /// File name, when the records came from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Connector instance that parsed them.
    pub plugin: String,
    /// Records the plugin produced.
    pub records_read: u64,
    /// New records committed.
    pub new: u64,
    /// Recognised as already ingested (replays, re-imports, overlapping statements).
    pub duplicates: u64,
    /// Payments matched automatically, per rule.
    pub matched: BTreeMap<String, u64>,
    /// Matched payments that left an invoice partially paid.
    pub partially_matched: u64,
    /// Payments sent to the review queue.
    pub review: u64,
    /// Entries that settle nothing by design (pending, outgoing, zero).
    pub ignored: u64,
    /// Reversals, refunds and chargebacks that reopened what they paid.
    pub reversed: u64,
    /// Records refused, with where and why.
    pub failed: Vec<Failure>,
    /// Ids of what was created (leads or payments), for intake replies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// A refused record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    /// Its position among the records the plugin produced, from 1 (0 for a payment entered through the API).
    #[serde(default)]
    pub record: u64,
    /// Where in the source, as the plugin gave it (`statement.csv#line 3`), else the sender's id for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The record field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Why.
    pub reason: String,
}

impl Failure {
    fn new(record: u64, location: Option<String>, error: DomainError) -> Failure {
        let field = match &error {
            DomainError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        Failure {
            record,
            location,
            field,
            reason: error.to_string(),
        }
    }
}

/// Why the engine refuses `record`, the `index`-th (from 1) a plugin produced, if it does. Reads nothing: transports
/// check a whole file or request with it before anything is committed, and [`IngestRun::add`] skips exactly these.
pub fn refusal(index: u64, record: &Record) -> Option<Failure> {
    match record {
        Record::Lead(lead) => {
            let error = crate::domain::lead::validate(&lead_input(lead.clone())).err()?;
            Some(Failure::new(index, lead.external_id.clone(), error))
        }
        Record::Payment(payment) => {
            let error = Currency::parse(&payment.currency).err()?;
            let location = payment
                .source_position
                .clone()
                .or_else(|| Some(payment.external_id.clone()).filter(|id| !id.is_empty()));
            Some(Failure::new(index, location, error))
        }
        Record::Invoice(invoice) => {
            let error = super::external::invoice_refusal(invoice)?;
            let location = invoice
                .source_position
                .clone()
                .or_else(|| Some(invoice.external_id.clone()));
            Some(Failure::new(index, location, error))
        }
    }
}

/// What happened to one ingested record.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    /// Committed as new; the id created.
    New(String),
    /// Already seen; the id it produced then.
    Duplicate(Option<String>),
    /// Settles nothing by design.
    Ignored,
}

/// Status of a review item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// Waiting for a person.
    Open,
    /// Allocated by a person.
    Allocated,
    /// Dismissed by a person.
    Dismissed,
    /// Money going back that a person matched to the payment it reverses.
    Reversed,
}

/// A payment that needs a person, with ranked suggestions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReviewItem {
    /// Id.
    pub id: String,
    /// The payment waiting (unallocated).
    pub payment_id: String,
    /// Why it was not matched automatically.
    pub reason: ReviewReason,
    /// The reason in words.
    pub explanation: String,
    /// Best first.
    pub suggestions: Vec<Suggestion>,
    /// Open, allocated, dismissed or reversed.
    pub status: ReviewStatus,
    /// The normalised record as received, for the reviewer.
    pub record: PaymentRecord,
    /// When queued.
    pub created_at: DateTime<Utc>,
    /// When resolved.
    #[serde(default)]
    pub resolved_at: Option<DateTime<Utc>>,
    /// How it was resolved.
    #[serde(default)]
    pub resolution: Option<String>,
}

/// `POST /v1/review/{id}/allocate` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewAllocate {
    /// Where the money goes.
    pub allocations: Vec<AllocationJson>,
}

/// `POST /v1/review/{id}/dismiss` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewDismiss {
    /// Why (kept in the audit log).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/review/{id}/reverse` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewReverse {
    /// The payment the item's money going back reverses.
    pub payment_id: String,
}

fn record_from_api(
    input: &PaymentInput,
    amount: Decimal,
    currency: &Currency,
    today: NaiveDate,
) -> PaymentRecord {
    let mut r = PaymentRecord::new(
        input.external_id.clone().unwrap_or_default(),
        amount,
        currency.code(),
    );
    r.booked_on = Some(input.received_on.unwrap_or(today));
    r.counterparty_name = input.payer.clone();
    r.remittance = input.reference.clone();
    r
}

impl Engine {
    /// Record a payment. With explicit allocations they are applied as given (rule `manual`); without, the payment is
    /// reconciled like any ingested one. A repeated `external_id` returns the first payment unchanged.
    pub async fn record_payment(
        &self,
        input: PaymentInput,
        actor: &str,
    ) -> EngineResult<(Payment, bool)> {
        let currency = Currency::parse(&input.currency)
            .map_err(|e| super::sales::rename_field(e, "currency"))?;
        let amount = parse_positive_amount("amount", input.amount.as_str(), &currency)?;
        // An empty list would record money that reaches no invoice, no credit balance and no review item.
        if input.allocations.as_ref().is_some_and(Vec::is_empty) {
            return Err(DomainError::invalid(
                "allocations",
                "names no invoice: name at least one, or leave `allocations` out to have the payment reconciled",
            )
            .into());
        }
        if input.allocations.is_some() {
            return self
                .record_allocated_payment(input, currency, amount, actor)
                .await;
        }
        let record = record_from_api(&input, amount, &currency, self.today());
        self.ingest_api_payment(record, actor).await
    }

    /// Ingest the records one connector produced (from intake, a file or a mailbox), in chunks that each commit atomically;
    /// returns once everything is durable.
    pub async fn ingest(
        &self,
        connector: &str,
        plugin: &str,
        file: Option<&str>,
        records: Vec<Record>,
    ) -> EngineResult<ImportSummary> {
        let mut run = self.begin_ingest(connector, plugin, file);
        run.add(records)?;
        run.finish().await
    }

    /// Start ingesting a stream of records (a large file parsed piece by piece): add batches as they come, then finish.
    pub fn begin_ingest(&self, connector: &str, plugin: &str, file: Option<&str>) -> IngestRun<'_> {
        IngestRun {
            engine: self,
            plugin: plugin.to_string(),
            actor: format!("connector:{connector}"),
            summary: ImportSummary {
                file: file.map(str::to_string),
                plugin: connector.to_string(),
                ..ImportSummary::default()
            },
            last_ticket: None,
            journal: None,
            position: 0,
        }
    }

    /// An API payment without explicit allocations: reconciled like an ingested one.
    async fn ingest_api_payment(
        &self,
        record: PaymentRecord,
        actor: &str,
    ) -> EngineResult<(Payment, bool)> {
        let (id, duplicate) = self
            .write(|tx| {
                let mut record = record;
                if record.external_id.is_empty() {
                    record.external_id = tx.new_id("api-payment", "api")?;
                }
                let mut summary = ImportSummary::default();
                match ingest_payment(tx, "api", actor, record, &mut summary)? {
                    IngestOutcome::New(id) => Ok((id, false)),
                    IngestOutcome::Duplicate(Some(id)) => Ok((id, true)),
                    IngestOutcome::Duplicate(None) | IngestOutcome::Ignored => {
                        Err(DomainError::invalid("amount", "this payment settles nothing").into())
                    }
                }
            })
            .await?;
        // Read after the write set is applied: within it the payment exists only in the batch.
        Ok((self.get("payment", &id)?, duplicate))
    }

    /// Allocate a queued payment by hand.
    pub async fn review_allocate(
        &self,
        id: &str,
        input: ReviewAllocate,
        actor: &str,
    ) -> EngineResult<ReviewItem> {
        // Resolving the item with nothing allocated would close it while its money reaches no invoice and no credit.
        if input.allocations.is_empty() {
            return Err(DomainError::invalid(
                "allocations",
                "names no invoice: name at least one, or dismiss the item if the payment is not ours",
            )
            .into());
        }
        self.write(|tx| {
            let mut item = open_review_item(tx, id, "allocate")?;
            let mut pay: Payment = tx.get("payment", &item.payment_id)?;
            let mut requests = Vec::with_capacity(input.allocations.len());
            for (i, a) in input.allocations.iter().enumerate() {
                requests.push(AllocationRequest {
                    invoice_id: a.invoice_id.clone(),
                    amount: a
                        .amount
                        .as_ref()
                        .map(|x| {
                            parse_positive_amount(
                                &format!("allocations[{i}].amount"),
                                x.as_str(),
                                &pay.currency,
                            )
                        })
                        .transpose()?,
                });
            }
            let mut invoices = Vec::with_capacity(requests.len());
            for (i, r) in requests.iter().enumerate() {
                invoices.push(tx.get::<Invoice>("invoice", &r.invoice_id).map_err(|e| {
                    super::sales::field_not_found(e, &format!("allocations[{i}].invoice_id"))
                })?);
            }
            let refs: Vec<&Invoice> = invoices.iter().collect();
            let plan =
                payment::plan_allocations(pay.amount, &pay.currency, &requests, &refs, tx.today)?;
            let mut made = Vec::with_capacity(plan.parts.len());
            for (invoice_id, part) in &plan.parts {
                let Some(inv) = invoices.iter_mut().find(|i| &i.id == invoice_id) else {
                    continue;
                };
                let what = Allocating {
                    amount: *part,
                    kind: AllocationKind::Payment,
                    rule: "manual",
                    evidence: "allocated in review",
                    confidence: 100,
                };
                made.push(tx.allocate(&pay, inv, &what, actor)?);
            }
            pay.allocations.extend(made.iter().map(|a| a.id.clone()));
            pay.account_id = invoices.first().map(|i| i.account_id.clone());
            if let (Some(account), true) = (pay.account_id.clone(), plan.surplus > Decimal::ZERO) {
                tx.add_credit(
                    &account,
                    &pay.currency.clone(),
                    plan.surplus,
                    CreditSource::Overpayment {
                        payment_id: pay.id.clone(),
                    },
                    actor,
                )?;
                pay.unallocated = plan.surplus;
            }
            if let Some(account) = pay.account_id.clone() {
                for key in payer_keys(&item.record) {
                    tx.link_payer(&key, &account);
                }
            }
            if !made.is_empty() {
                index_paid(
                    tx,
                    &pay.id,
                    Some(&item.record.external_id),
                    item.record.end_to_end_id.as_deref(),
                )?;
            }
            tx.put("payment", &pay.id, &pay);
            item.status = ReviewStatus::Allocated;
            item.resolved_at = Some(tx.now);
            item.resolution = Some(format!("allocated to {}", pay.allocations.join(", ")));
            tx.ws.unindex("open-review", &item.id);
            tx.put("review", &item.id, &item);
            tx.event(
                actor,
                "review.allocated",
                "review",
                &item.id,
                serde_json::json!({"payment_id": pay.id}),
                false,
            );
            payment_recorded(tx, actor, &pay, &made, &[], serde_json::json!({}));
            Ok(item)
        })
        .await
    }

    /// Dismiss a queued payment (not ours, handled elsewhere).
    pub async fn review_dismiss(
        &self,
        id: &str,
        input: ReviewDismiss,
        actor: &str,
    ) -> EngineResult<ReviewItem> {
        self.write(|tx| {
            let mut item = open_review_item(tx, id, "dismiss")?;
            item.status = ReviewStatus::Dismissed;
            item.resolved_at = Some(tx.now);
            item.resolution = Some(input.reason.unwrap_or_else(|| "dismissed".into()));
            tx.ws.unindex("open-review", &item.id);
            tx.put("review", &item.id, &item);
            tx.event(
                actor,
                "review.dismissed",
                "review",
                &item.id,
                serde_json::json!({"reason": item.resolution}),
                false,
            );
            Ok(item)
        })
        .await
    }

    /// Resolve a review item holding money going back (a return that matched nothing, or matched several payments)
    /// by naming the payment it reverses: exactly the amount returned is undone, newest part first, as for a return
    /// found automatically. Refused, changing nothing, when the payment has less left than the return.
    pub async fn review_reverse(
        &self,
        id: &str,
        input: ReviewReverse,
        actor: &str,
    ) -> EngineResult<ReviewItem> {
        self.write(|tx| {
            let mut item = open_review_item(tx, id, "reverse")?;
            let mut returned: Payment = tx.get("payment", &item.payment_id)?;
            if returned.amount >= Decimal::ZERO {
                return Err(DomainError::invalid(
                    "payment_id",
                    format!(
                        "review item {} holds money received ({} {}), not money going back: allocate it instead",
                        item.id,
                        returned.amount,
                        returned.currency.code()
                    ),
                )
                .into());
            }
            let original: Payment = tx
                .get("payment", &input.payment_id)
                .map_err(|e| super::sales::field_not_found(e, "payment_id"))?;
            if original.amount <= Decimal::ZERO || original.currency != returned.currency {
                return Err(DomainError::invalid(
                    "payment_id",
                    format!(
                        "payment {} of {} {} cannot be the original of a return in {}",
                        original.id,
                        original.amount,
                        original.currency.code(),
                        returned.currency.code()
                    ),
                )
                .into());
            }
            let amount = -returned.amount;
            reversal::refuse_beyond_left(tx, &original, amount, "payment_id")?;
            let why = format!(
                "{} {} {} matched by hand in review {}",
                crate::domain::status_name(&item.record.kind),
                amount,
                returned.currency.code(),
                item.id
            );
            let refund = reversal::is_refund(&item.record);
            reversal::reverse(tx, &original.id, Some(amount), refund, &why, actor)?;
            returned.account_id = original.account_id.clone();
            tx.put("payment", &returned.id, &returned);
            item.status = ReviewStatus::Reversed;
            item.resolved_at = Some(tx.now);
            item.resolution = Some(format!("reverses payment {}", original.id));
            tx.ws.unindex("open-review", &item.id);
            tx.put("review", &item.id, &item);
            tx.event(
                actor,
                "review.reversed",
                "review",
                &item.id,
                serde_json::json!({"payment_id": returned.id, "reverses": original.id, "amount": amount}),
                false,
            );
            Ok(item)
        })
        .await
    }
}

/// An ingestion in progress; see [`Engine::begin_ingest`].
pub struct IngestRun<'e> {
    engine: &'e Engine,
    plugin: String,
    actor: String,
    summary: ImportSummary,
    last_ticket: Option<crate::store::CommitTicket>,
    journal: Option<ImportJournal>,
    /// Records handed to [`IngestRun::add`] so far (a record's position is its 1-based index in the file).
    position: u64,
}

impl IngestRun<'_> {
    /// Keep an import's record in step: each chunk's write set also rewrites it with the counts so far. Records an
    /// earlier attempt of the import committed are ingested again (they dedupe) without being counted twice.
    pub fn with_journal(mut self, journal: ImportJournal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Commit a batch of records, [`CHUNK`] per write set (each atomic). Durability is awaited once, in [`IngestRun::finish`].
    pub fn add(&mut self, records: Vec<Record>) -> EngineResult<()> {
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let chunk: Vec<Record> = records.by_ref().take(CHUNK).collect();
            let first = self.position + 1;
            self.position += chunk.len() as u64;
            let replayed = self
                .journal
                .as_mut()
                .map_or(0, |j| j.take_replay(chunk.len()));
            self.summary.records_read += (chunk.len() - replayed) as u64;
            let (plugin, actor, summary, journal) = (
                &self.plugin,
                &self.actor,
                &mut self.summary,
                &mut self.journal,
            );
            let (_, ticket) = self.engine.write_nowait(|tx| {
                let mut counted_before = ImportSummary::default();
                for (i, (index, record)) in (first..).zip(chunk).enumerate() {
                    let into = match i < replayed {
                        true => &mut counted_before,
                        false => &mut *summary,
                    };
                    if let Some(failure) = refusal(index, &record) {
                        into.failed.push(failure);
                        continue;
                    }
                    ingest_one(tx, plugin, actor, record, into)?;
                }
                if let Some(journal) = journal {
                    journal.record(tx, summary);
                }
                Ok(())
            })?;
            if ticket.is_some() {
                self.last_ticket = ticket;
            }
        }
        Ok(())
    }

    /// Wait until everything added is durable; the summary of the whole run.
    pub async fn finish(self) -> EngineResult<ImportSummary> {
        if let Some(ticket) = &self.last_ticket {
            self.engine.durable(ticket).await?;
        }
        // A file import ends with a checkpoint: the next start replays nothing of it.
        if self.journal.is_some() && self.last_ticket.is_some() {
            self.engine.checkpoint()?;
        }
        Ok(self.summary)
    }
}

pub(super) fn ingest_one(
    tx: &mut Tx<'_>,
    plugin: &str,
    actor: &str,
    record: Record,
    summary: &mut ImportSummary,
) -> EngineResult<()> {
    match record {
        Record::Lead(lead) => {
            // Refused leads never get here (see `refusal`).
            let input = crate::domain::lead::validate(&lead_input(lead))?;
            let (lead, duplicate) = super::leads::capture_in(tx, input, actor)?;
            if duplicate {
                summary.duplicates += 1;
            } else {
                summary.new += 1;
            }
            summary.ids.push(lead.id);
        }
        Record::Payment(p) => {
            ingest_payment(tx, plugin, actor, p, summary)?;
        }
        Record::Invoice(i) => {
            super::external::ingest_invoice(tx, plugin, actor, i, summary)?;
        }
    }
    Ok(())
}

fn lead_input(r: LeadRecord) -> LeadInput {
    let mut message = r.message;
    if !r.extra.is_empty() {
        let extra: Vec<String> = r.extra.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        message = Some(match message {
            Some(m) => format!("{m}\n\n{}", extra.join("\n")),
            None => extra.join("\n"),
        });
    }
    LeadInput {
        name: r.name,
        email: r.email,
        phone: r.phone,
        company: r.company,
        source: r.source,
        assigned_to: r.assigned_to,
        external_id: r.external_id,
        message,
    }
}

fn payer_keys(r: &PaymentRecord) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(acct) = &r.counterparty_account {
        keys.push(acct.replace(' ', "").to_lowercase());
    }
    if let Some(name) = &r.counterparty_name {
        let n = reconcile::normalise_party_name(name);
        if !n.is_empty() {
            keys.push(n);
        }
    }
    keys
}

fn ingest_payment(
    tx: &mut Tx<'_>,
    plugin: &str,
    actor: &str,
    record: PaymentRecord,
    summary: &mut ImportSummary,
) -> EngineResult<IngestOutcome> {
    let seen_key = format!("pay:{plugin}:{}", record.external_id);
    if let Some(produced) = tx.seen(&seen_key)? {
        summary.duplicates += 1;
        return Ok(IngestOutcome::Duplicate(
            produced["payment_id"].as_str().map(str::to_string),
        ));
    }
    if record.status == EntryStatus::Pending {
        // Not marked seen: when the entry is booked later it must be processed then.
        summary.ignored += 1;
        return Ok(IngestOutcome::Ignored);
    }
    let currency = match Currency::parse(&record.currency) {
        Ok(c) => c,
        Err(e) => {
            summary
                .failed
                .push(Failure::new(0, record.source_position.clone(), e));
            return Ok(IngestOutcome::Ignored);
        }
    };
    let received_on = record.booked_on.or(record.value_date).unwrap_or(tx.today);
    if record.amount < Decimal::ZERO && record.kind != PaymentKind::Fee {
        if let Some(outcome) =
            ingest_return(tx, plugin, actor, &record, &currency, received_on, summary)?
        {
            return Ok(outcome);
        }
    }
    let settings = reconcile_settings(tx.engine);
    let decision = reconcile::decide(&record, &tx.state.index, &settings);
    match decision {
        Decision::Ignore { reason } => {
            tx.ws
                .seen(&seen_key, &serde_json::json!({"ignored": reason}));
            summary.ignored += 1;
            Ok(IngestOutcome::Ignored)
        }
        Decision::Review {
            reason,
            suggestions,
        } => {
            let pay = tx.new_payment(draft(&record, currency, received_on, plugin))?;
            let explanation = reason.to_string();
            queue_review(tx, &pay, record, reason, explanation, suggestions, actor)?;
            tx.ws
                .seen(&seen_key, &serde_json::json!({"payment_id": pay.id}));
            summary.review += 1;
            summary.new += 1;
            Ok(IngestOutcome::New(pay.id))
        }
        Decision::Allocate {
            allocations,
            write_off,
            surplus,
            fee,
        } => {
            let mut pay = tx.new_payment(draft(&record, currency.clone(), received_on, plugin))?;
            // Each allocation below is listed in this payment's `payment.recorded` event, so the invoices it changes
            // are deferred writes, rebuilt from the journal after a crash. (An error fails the whole write set.)
            tx.defer_invoices = true;
            let mut made = Vec::with_capacity(allocations.len() + 1);
            // As saved, for the event below (which names their numbers) not to read them again.
            let mut paid = Vec::with_capacity(allocations.len() + 1);
            let mut partially = false;
            let rules: Vec<String> = allocations
                .iter()
                .map(|proposed| crate::domain::status_name(&proposed.rule))
                .collect();
            let matched = allocations.iter().zip(&rules).map(|(proposed, rule)| {
                let what = Allocating {
                    amount: proposed.amount,
                    kind: AllocationKind::Payment,
                    rule,
                    evidence: &proposed.evidence,
                    confidence: proposed.confidence,
                };
                (&proposed.invoice_id, what)
            });
            let written_off = write_off.as_ref().map(|(invoice_id, amount)| {
                let what = Allocating {
                    amount: *amount,
                    kind: AllocationKind::WriteOff,
                    rule: "write_off",
                    evidence: "shortfall within the configured tolerance",
                    confidence: 100,
                };
                (invoice_id, what)
            });
            for (invoice_id, what) in matched.chain(written_off) {
                let done = match tx.allocate_open(&pay, invoice_id, &what, actor)? {
                    Some(done) => done,
                    None => {
                        let mut inv: Invoice = tx.get("invoice", invoice_id)?;
                        let allocation = tx.allocate(&pay, &mut inv, &what, actor)?;
                        Allocated {
                            allocation,
                            named: Named::from(&inv),
                            balance: invoice::balance(&inv),
                            account_id: inv.account_id,
                        }
                    }
                };
                let open = done.balance > Decimal::ZERO;
                made.push(done.allocation);
                paid.push(done.named);
                pay.account_id.get_or_insert(done.account_id);
                if what.kind == AllocationKind::WriteOff {
                    partially = open;
                } else {
                    *summary.matched.entry(what.rule.to_string()).or_default() += 1;
                    partially |= open;
                }
            }
            tx.defer_invoices = false;
            if surplus > Decimal::ZERO {
                if let Some(account) = pay.account_id.clone() {
                    tx.add_credit(
                        &account,
                        &currency,
                        surplus,
                        CreditSource::Overpayment {
                            payment_id: pay.id.clone(),
                        },
                        actor,
                    )?;
                    pay.unallocated = surplus;
                }
            }
            if let Some(account) = pay.account_id.clone() {
                for key in payer_keys(&record) {
                    tx.link_payer(&key, &account);
                }
            }
            if partially {
                summary.partially_matched += 1;
            }
            pay.allocations.extend(made.iter().map(|a| a.id.clone()));
            if !made.is_empty() {
                index_paid(
                    tx,
                    &pay.id,
                    Some(&record.external_id),
                    record.end_to_end_id.as_deref(),
                )?;
            }
            tx.put("payment", &pay.id, &pay);
            let extra = serde_json::json!({"fee": fee, "external_id": record.external_id,
                "source": record.source_position});
            payment_recorded(tx, actor, &pay, &made, &paid, extra);
            tx.ws
                .seen(&seen_key, &serde_json::json!({"payment_id": pay.id}));
            summary.new += 1;
            Ok(IngestOutcome::New(pay.id))
        }
    }
}

/// A negative record that may undo an earlier payment: one the source marks as a return, reversal, refund or
/// chargeback, or a plain outgoing transfer whose references lead to a payment of the same payer. The original is
/// looked for across connectors ([`reversal::find_original`]); exactly the amount returned is undone. `None` when it
/// is a plain outgoing transfer after all, for the usual reconciliation to ignore.
fn ingest_return(
    tx: &mut Tx<'_>,
    plugin: &str,
    actor: &str,
    record: &PaymentRecord,
    currency: &Currency,
    received_on: NaiveDate,
    summary: &mut ImportSummary,
) -> EngineResult<Option<IngestOutcome>> {
    let seen_key = format!("pay:{plugin}:{}", record.external_id);
    let marked = reversal::is_marked_return(record);
    let (explanation, suggestions, reason) = match reversal::find_original(tx, plugin, record, marked)? {
        Original::Found {
            payment_id,
            evidence,
        } => {
            let returned = record.amount.abs();
            let why = format!(
                "{} {} {} {} ({})",
                crate::domain::status_name(&record.kind),
                returned,
                record.currency,
                record.external_id,
                evidence
            );
            // A bank reversal undoes the credit: the invoice is owed again. A refund or chargeback gave the money
            // back to the payer: the amount counts as refunded.
            let refund = reversal::is_refund(record);
            let done = reversal::reverse(tx, &payment_id, Some(returned), refund, &why, actor)?;
            summary.reversed += 1;
            summary.new += 1;
            if done.excess <= Decimal::ZERO {
                tx.ws
                    .seen(&seen_key, &serde_json::json!({"reversed": payment_id}));
                return Ok(Some(IngestOutcome::New(payment_id)));
            }
            // More came back than was left of the payment: the rest is money out nothing explains yet.
            let mut rest = record.clone();
            rest.amount = -done.excess;
            let mut pay = tx.new_payment(draft(&rest, currency.clone(), received_on, plugin))?;
            pay.account_id = done.payment.account_id.clone();
            let explanation = format!(
                "{why}: {} of it undid what was left of payment {}; the remaining {} {} matches nothing",
                done.reversed, payment_id, done.excess, record.currency
            );
            let suggestion = Suggestion {
                invoice_id: String::new(),
                number: String::new(),
                amount: done.excess,
                score: 0,
                why: format!("the original payment {payment_id}, already fully undone"),
                payment_id: Some(payment_id.clone()),
            };
            queue_review(tx, &pay, rest, ReviewReason::NoMatch, explanation, vec![suggestion], actor)?;
            tx.ws.seen(
                &seen_key,
                &serde_json::json!({"reversed": payment_id, "payment_id": pay.id}),
            );
            summary.review += 1;
            return Ok(Some(IngestOutcome::New(pay.id)));
        }
        Original::Ambiguous(suggestions) => (
            "a return, reversal or refund that several earlier payments match equally well, so none was undone"
                .to_string(),
            suggestions,
            ReviewReason::Ambiguous,
        ),
        Original::Unknown if marked => (
            "a reversal, refund or chargeback whose original payment is unknown".to_string(),
            Vec::new(),
            ReviewReason::NoMatch,
        ),
        Original::Unknown => return Ok(None),
    };
    // A person decides.
    let pay = tx.new_payment(draft(record, currency.clone(), received_on, plugin))?;
    queue_review(
        tx,
        &pay,
        record.clone(),
        reason,
        explanation,
        suggestions,
        actor,
    )?;
    tx.ws
        .seen(&seen_key, &serde_json::json!({"payment_id": pay.id}));
    summary.review += 1;
    summary.new += 1;
    Ok(Some(IngestOutcome::New(pay.id)))
}

#[allow(clippy::too_many_arguments)] // the review item is made of all of these
fn queue_review(
    tx: &mut Tx<'_>,
    pay: &Payment,
    record: PaymentRecord,
    reason: ReviewReason,
    explanation: String,
    suggestions: Vec<Suggestion>,
    actor: &str,
) -> EngineResult<()> {
    let id = tx.new_id("review", "rev")?;
    let item = ReviewItem {
        id: id.clone(),
        payment_id: pay.id.clone(),
        reason,
        explanation,
        suggestions,
        status: ReviewStatus::Open,
        record,
        created_at: tx.now,
        resolved_at: None,
        resolution: None,
    };
    tx.put("payment", &pay.id, pay);
    tx.put("review", &id, &item);
    tx.ws.index("open-review", &id, &id);
    tx.event(
        actor,
        "review.queued",
        "review",
        &id,
        serde_json::json!({"payment_id": pay.id, "reason": item.reason, "amount": pay.amount, "currency": pay.currency}),
        true,
    );
    Ok(())
}

fn draft<'a>(
    record: &PaymentRecord,
    currency: Currency,
    received_on: NaiveDate,
    source: &'a str,
) -> PaymentDraft<'a> {
    PaymentDraft {
        amount: record.amount,
        currency,
        received_on,
        payer: record.counterparty_name.clone(),
        reference: record.remittance.clone(),
        external_id: Some(record.external_id.clone()),
        source,
        bank_account: record.own_account.clone(),
        payer_account: record.counterparty_account.clone(),
    }
}

fn reconcile_settings(engine: &Engine) -> reconcile::Settings {
    let c = &engine.config().reconcile;
    reconcile::Settings {
        writeoff_tolerance: c.writeoff_tolerance,
        min_confidence: c.min_confidence,
        ..reconcile::Settings::default()
    }
}

/// The review item `id`, refused when a person resolved it already (`action` names what was asked).
fn open_review_item(tx: &mut Tx<'_>, id: &str, action: &'static str) -> EngineResult<ReviewItem> {
    let item: ReviewItem = tx.get("review", id)?;
    if item.status != ReviewStatus::Open {
        return Err(DomainError::transition(
            "review item",
            crate::domain::status_name(&item.status),
            action,
            "it was resolved already",
        )
        .into());
    }
    Ok(item)
}
