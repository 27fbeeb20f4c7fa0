//! `settled check`: recompute what the store derives and compare it with what the engine serves.
//!
//! Every invoice's amount paid, refunded and credited, balance and payment status are recomputed from the journal
//! (its allocation records, the `payment.reversed` events that say which compensations were refunds, and its issued
//! credit notes), with the domain's own `balance` and `payment_status`, and compared with the invoice as the API
//! serves it. Payments, allocations and credit lots are checked against each other; every number series and id
//! counter against the records it numbered; every index row against its record (and every record that belongs in an
//! index against the index); every outbox cursor against the end of the audit log.
//!
//! It only reads. Offline it opens the store like `settled backup` does; online (`GET /v1/check`) it runs inside the
//! daemon while the writer lock is held, so the view is consistent. The same [`run`] serves both.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::invoice::{self, Invoice, InvoiceKind, InvoiceState};
use crate::domain::money::round_money;
use crate::domain::numbering::SeriesPattern;
use crate::domain::party::{Account, CreditSource};
use crate::domain::payment::{Allocation, AllocationKind, Payment};
use crate::engine::{Engine, EngineResult};
use crate::reconcile::MatchIndex;

/// At most this many differences are listed per kind of check (the count says how many there were).
const MAX_LISTED_GAPS: usize = 10;

/// What a check found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// How many of each thing were checked (`invoices`, `payments`, ...), in a stable order.
    pub checked: BTreeMap<String, u64>,
    /// Every difference, one line each, naming the record.
    pub differences: Vec<String>,
    /// What could not be checked and why (not a difference).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Report {
    /// `checked 3 invoices, 2 payments, ...`.
    pub fn summary(&self) -> String {
        let order = [
            "invoices",
            "payments",
            "allocations",
            "accounts",
            "counters",
            "index rows",
            "outbox sinks",
        ];
        let counted = |k: &str, n: u64| match (n, k.strip_suffix('s')) {
            (1, Some(one)) => format!("1 {one}"),
            _ => format!("{n} {k}"),
        };
        let mut parts: Vec<String> = order
            .iter()
            .filter_map(|k| self.checked.get(*k).map(|n| counted(k, *n)))
            .collect();
        parts.extend(
            self.checked
                .iter()
                .filter(|(k, _)| !order.contains(&k.as_str()))
                .map(|(k, n)| counted(k, *n)),
        );
        let verdict = match self.differences.len() {
            0 => "no differences".to_string(),
            1 => "1 difference".to_string(),
            n => format!("{n} differences"),
        };
        format!("checked {}: {verdict}", parts.join(", "))
    }

    fn count(&mut self, what: &str, n: usize) {
        *self.checked.entry(what.to_string()).or_default() += n as u64;
    }

    fn differ(&mut self, line: String) {
        self.differences.push(line);
    }
}

/// Check the store behind `engine` while no command writes.
pub fn run(engine: &Engine) -> EngineResult<Report> {
    engine.with_writes_paused(|index| Checker::load(engine)?.check(engine, index))
}

/// `settled check` with the daemon stopped: open the data directory's store and check it. A store the daemon holds
/// is reported as [`crate::store::StoreError::Locked`], so the caller can ask the daemon instead.
pub fn offline(config: &crate::config::Config) -> anyhow::Result<Report> {
    let dir = config.data_dir();
    if !dir.join("db").exists() {
        anyhow::bail!(
            "no store in {}: nothing to check (pass --data-dir or --config)",
            dir.display()
        );
    }
    let store = crate::store::Store::open(&dir, &crate::store::StoreOptions::default())?;
    let engine = Engine::new(store, config.clone(), Box::new(crate::engine::SystemClock))?;
    Ok(run(&engine)?)
}

/// Everything the checks read, loaded once.
struct Checker {
    invoices: Vec<Invoice>,
    payments: Vec<Payment>,
    allocations: Vec<Allocation>,
    accounts: Vec<Account>,
    /// Allocation ids a `payment.reversed` event marked as a refund (money back to the payer).
    refunded: HashSet<String>,
    /// The `to_credit` of each payment's last `payment.recorded` event.
    to_credit: HashMap<String, Decimal>,
}

fn scan<T: serde::de::DeserializeOwned + 'static>(
    engine: &Engine,
    kind: &str,
) -> EngineResult<Vec<T>> {
    Ok(engine.store().scan::<T>(kind).collect::<Result<_, _>>()?)
}

fn decimal(v: &Value) -> Option<Decimal> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

impl Checker {
    fn load(engine: &Engine) -> EngineResult<Checker> {
        let mut refunded = HashSet::new();
        let mut to_credit = HashMap::new();
        for event in engine.store().events_from(0)? {
            let event = event?;
            match event.kind.as_str() {
                "payment.reversed" if event.data["refund"] == Value::Bool(true) => {
                    for a in event.data["allocations"].as_array().into_iter().flatten() {
                        if let Some(id) = a["id"].as_str() {
                            refunded.insert(id.to_string());
                        }
                    }
                }
                "payment.recorded" => {
                    if let Some(d) = decimal(&event.data["to_credit"]) {
                        to_credit.insert(event.entity_id.clone(), d);
                    }
                }
                _ => {}
            }
        }
        Ok(Checker {
            invoices: scan(engine, "invoice")?,
            payments: scan(engine, "payment")?,
            allocations: scan(engine, "allocation")?,
            accounts: scan(engine, "account")?,
            refunded,
            to_credit,
        })
    }

    fn payments_by_id(&self) -> HashMap<&str, &Payment> {
        self.payments.iter().map(|p| (p.id.as_str(), p)).collect()
    }

    fn invoices_by_id(&self) -> HashMap<&str, &Invoice> {
        self.invoices.iter().map(|i| (i.id.as_str(), i)).collect()
    }

    fn check(&self, engine: &Engine, index: &MatchIndex) -> EngineResult<Report> {
        let mut report = Report::default();
        let served = self.invoices_and_allocations(engine, &mut report)?;
        self.payments(&mut report);
        self.credit(&mut report);
        self.counters(engine, &mut report)?;
        self.indexes(engine, index, &served, &mut report)?;
        self.seen(engine, &mut report)?;
        outbox(engine, &mut report)?;
        Ok(report)
    }

    /// Invoices against their allocations and credit notes; allocations against invoices, payments and each other.
    /// Returns each invoice's served balance (for the index checks).
    fn invoices_and_allocations(
        &self,
        engine: &Engine,
        report: &mut Report,
    ) -> EngineResult<HashMap<String, Decimal>> {
        let today = engine.today();
        let mut by_invoice: HashMap<&str, Vec<&Allocation>> = HashMap::new();
        for a in &self.allocations {
            by_invoice.entry(a.invoice_id.as_str()).or_default().push(a);
        }
        let mut credited: HashMap<&str, Decimal> = HashMap::new();
        for cn in &self.invoices {
            if cn.kind == InvoiceKind::CreditNote && cn.state == InvoiceState::Issued {
                if let Some(of) = cn.credits.as_deref() {
                    *credited.entry(of).or_default() += cn.totals.total.abs();
                }
            }
        }
        let ids: HashSet<&str> = self.invoices.iter().map(|i| i.id.as_str()).collect();
        let mut balances = HashMap::new();
        for inv in &self.invoices {
            let own = by_invoice.get(inv.id.as_str()).cloned().unwrap_or_default();
            let mut derived = inv.clone();
            derived.amount_paid = own.iter().map(|a| a.amount).sum();
            derived.amount_refunded = own
                .iter()
                .filter(|a| self.refunded.contains(&a.id))
                .map(|a| -a.amount)
                .sum();
            derived.amount_credited = credited.get(inv.id.as_str()).copied().unwrap_or_default();
            let view = engine.show("invoice", &inv.id)?;
            let name = invoice_name(inv);
            let money = |d: Decimal| round_money(d, &inv.currency);
            let fields = [
                ("amount_paid", derived.amount_paid),
                ("amount_refunded", derived.amount_refunded),
                ("amount_credited", derived.amount_credited),
                ("balance", invoice::balance(&derived)),
            ];
            for (field, want) in fields {
                let got = decimal(&view[field]);
                if got != Some(money(want)) {
                    report.differ(format!(
                        "{name}: {field} is {} as served, {} from its allocations and credit notes",
                        view[field],
                        money(want)
                    ));
                }
            }
            let status =
                serde_json::to_value(invoice::payment_status(&derived, today)).unwrap_or_default();
            if view["payment_status"] != status {
                report.differ(format!(
                    "{name}: payment_status is {} as served, {status} from its allocations and credit notes",
                    view["payment_status"]
                ));
            }
            if let Some(b) = decimal(&view["balance"]) {
                balances.insert(inv.id.clone(), b);
            }
            let listed: BTreeSet<&str> = view["allocations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["id"].as_str())
                .collect();
            let stored_list: BTreeSet<&str> = inv.allocations.iter().map(String::as_str).collect();
            let actual: BTreeSet<&str> = own.iter().map(|a| a.id.as_str()).collect();
            for missing in actual.difference(&listed) {
                report.differ(format!(
                    "{name}: allocation {missing} pays it but the invoice does not list it"
                ));
            }
            for extra in stored_list
                .union(&listed)
                .filter(|id| !actual.contains(*id))
            {
                report.differ(format!(
                    "{name}: lists allocation {extra}, which does not exist or pays another invoice"
                ));
            }
        }
        report.count("invoices", self.invoices.len());

        let by_id: HashMap<&str, &Allocation> = self
            .allocations
            .iter()
            .map(|a| (a.id.as_str(), a))
            .collect();
        let mut compensated: HashMap<&str, Decimal> = HashMap::new();
        for a in &self.allocations {
            if !ids.contains(a.invoice_id.as_str()) {
                report.differ(format!(
                    "allocation {}: its invoice {} does not exist",
                    a.id, a.invoice_id
                ));
            }
            match (&a.compensates, a.amount < Decimal::ZERO) {
                (Some(of), true) => match by_id.get(of.as_str()) {
                    None => report.differ(format!(
                        "allocation {}: compensates allocation {of}, which does not exist",
                        a.id
                    )),
                    Some(orig) if orig.invoice_id != a.invoice_id => report.differ(format!(
                        "allocation {}: compensates allocation {of} of invoice {}, but pays invoice {}",
                        a.id, orig.invoice_id, a.invoice_id
                    )),
                    Some(_) => *compensated.entry(of.as_str()).or_default() -= a.amount,
                },
                (Some(of), false) => report.differ(format!(
                    "allocation {}: compensates {of} but its amount {} is not negative",
                    a.id, a.amount
                )),
                (None, true) => report.differ(format!(
                    "allocation {}: negative amount {} without naming the allocation it compensates",
                    a.id, a.amount
                )),
                (None, false) => {}
            }
        }
        for (of, undone) in &compensated {
            if let Some(orig) = by_id.get(of) {
                if *undone > orig.amount {
                    report.differ(format!(
                        "allocation {of}: compensated by {undone} in all, more than its amount {}",
                        orig.amount
                    ));
                }
            }
        }
        report.count("allocations", self.allocations.len());
        Ok(balances)
    }

    /// Each payment's allocations against its amount, its list and the journal's `to_credit`.
    fn payments(&self, report: &mut Report) {
        let mut by_payment: HashMap<&str, Vec<&Allocation>> = HashMap::new();
        for a in &self.allocations {
            if let Some(p) = a.payment_id.as_deref() {
                by_payment.entry(p).or_default().push(a);
            }
        }
        let known: HashSet<&str> = self.payments.iter().map(|p| p.id.as_str()).collect();
        for (p, allocs) in &by_payment {
            if !known.contains(p) {
                for a in allocs {
                    report.differ(format!(
                        "allocation {}: its payment {p} does not exist",
                        a.id
                    ));
                }
            }
        }
        for pay in &self.payments {
            let name = format!("payment {}", pay.id);
            let own = by_payment.get(pay.id.as_str()).cloned().unwrap_or_default();
            let allocated: Decimal = own
                .iter()
                .filter(|a| {
                    a.kind == AllocationKind::Payment
                        && a.compensates.is_none()
                        && a.amount > Decimal::ZERO
                })
                .map(|a| a.amount)
                .sum();
            // A return waiting in review is a payment of a negative amount with nothing allocated.
            if allocated > pay.amount.max(Decimal::ZERO) {
                report.differ(format!(
                    "{name}: its allocations sum to {allocated}, more than its amount {}",
                    pay.amount
                ));
            }
            if pay.unallocated > Decimal::ZERO && allocated + pay.unallocated != pay.amount {
                report.differ(format!(
                    "{name}: unallocated is {} as served, its amount {} less its allocations {allocated} is {}",
                    pay.unallocated,
                    pay.amount,
                    pay.amount - allocated
                ));
            }
            if let Some(journal) = self.to_credit.get(&pay.id) {
                if *journal != pay.unallocated {
                    report.differ(format!(
                        "{name}: unallocated is {} as served, {journal} in its payment.recorded event",
                        pay.unallocated
                    ));
                }
            }
            if pay.credit_reversed > pay.unallocated {
                report.differ(format!(
                    "{name}: credit_reversed {} is more than it put on credit ({})",
                    pay.credit_reversed, pay.unallocated
                ));
            }
            let listed: BTreeSet<&str> = pay.allocations.iter().map(String::as_str).collect();
            let actual: BTreeSet<&str> = own.iter().map(|a| a.id.as_str()).collect();
            for missing in actual.difference(&listed) {
                report.differ(format!(
                    "{name}: allocation {missing} names it but the payment does not list it"
                ));
            }
            for extra in listed.difference(&actual) {
                report.differ(format!(
                    "{name}: lists allocation {extra}, which does not exist or belongs to another payment"
                ));
            }
        }
        report.count("payments", self.payments.len());
    }

    /// Credit lots against the balances, the payments and credit notes they came from, and the `customer_credit`
    /// allocations that spent them.
    fn credit(&self, report: &mut Report) {
        let payments = self.payments_by_id();
        let invoices = self.invoices_by_id();
        let allocations: HashMap<&str, &Allocation> = self
            .allocations
            .iter()
            .map(|a| (a.id.as_str(), a))
            .collect();
        // (allocation id, lot source) -> (spent, reopened), from the lots' side.
        let mut spends: HashMap<(&str, String), (Decimal, Decimal)> = HashMap::new();
        for account in &self.accounts {
            let name = format!("account {}", account.id);
            let mut in_lots: BTreeMap<&str, Decimal> = BTreeMap::new();
            for lot in &account.credit_lots {
                let source = source_name(&lot.source);
                *in_lots.entry(lot.currency.as_str()).or_default() += lot.unspent();
                if lot.unspent() < Decimal::ZERO || lot.taken_back > lot.amount {
                    report.differ(format!(
                        "{name}: credit lot from {source} has {} left of {} (taken back {})",
                        lot.unspent(),
                        lot.amount,
                        lot.taken_back
                    ));
                }
                match &lot.source {
                    CreditSource::Overpayment { payment_id } => match payments.get(payment_id.as_str()) {
                        None => report.differ(format!(
                            "{name}: credit lot from {source}, which does not exist"
                        )),
                        Some(p) => {
                            if p.unallocated != lot.amount || p.credit_reversed != lot.taken_back {
                                report.differ(format!(
                                    "{name}: credit lot from {source} is {} (taken back {}), the payment put {} on credit (taken back {})",
                                    lot.amount, lot.taken_back, p.unallocated, p.credit_reversed
                                ));
                            }
                        }
                    },
                    CreditSource::CreditNote {
                        credit_note_id,
                        invoice_id,
                    } => match invoices.get(credit_note_id.as_str()) {
                        Some(cn)
                            if cn.kind == InvoiceKind::CreditNote
                                && cn.credits.as_deref() == Some(invoice_id.as_str())
                                && lot.amount <= cn.totals.total.abs() => {}
                        _ => report.differ(format!(
                            "{name}: credit lot from {source} has no issued credit note of invoice {invoice_id} of at least {} behind it",
                            lot.amount
                        )),
                    },
                }
                for spend in &lot.spent {
                    let entry = spends
                        .entry((spend.allocation_id.as_str(), source.clone()))
                        .or_default();
                    entry.0 += spend.amount;
                    entry.1 += spend.reopened;
                    match allocations.get(spend.allocation_id.as_str()) {
                        Some(a) if a.kind == AllocationKind::Credit && a.invoice_id == spend.invoice_id => {}
                        _ => report.differ(format!(
                            "{name}: credit lot from {source} paid {} to invoice {} by allocation {}, which is not a credit allocation of that invoice",
                            spend.amount, spend.invoice_id, spend.allocation_id
                        )),
                    }
                }
            }
            for (currency, in_lots) in in_lots {
                let balance = account
                    .credit_balance
                    .get(currency)
                    .copied()
                    .unwrap_or_default();
                if in_lots > balance {
                    report.differ(format!(
                        "{name}: credit balance {balance} {currency} is less than its credit lots have left ({in_lots})"
                    ));
                }
            }
        }
        let mut compensated: HashMap<&str, Decimal> = HashMap::new();
        for a in &self.allocations {
            if let Some(of) = a.compensates.as_deref() {
                *compensated.entry(of).or_default() -= a.amount;
            }
        }
        for a in self
            .allocations
            .iter()
            .filter(|a| a.kind == AllocationKind::Credit && a.amount > Decimal::ZERO)
        {
            let mut drawn = Decimal::ZERO;
            let mut reopened = Decimal::ZERO;
            for draw in &a.credit_sources {
                let source = source_name(&draw.source);
                drawn += draw.amount;
                match spends.get(&(a.id.as_str(), source.clone())) {
                    Some((spent, re)) if *spent == draw.amount => reopened += *re,
                    Some((spent, _)) => report.differ(format!(
                        "allocation {}: drew {} from the credit lot from {source}, the lot says {spent}",
                        a.id, draw.amount
                    )),
                    None => report.differ(format!(
                        "allocation {}: drew {} from the credit lot from {source}, which has no record of it",
                        a.id, draw.amount
                    )),
                }
            }
            let undone = compensated.get(a.id.as_str()).copied().unwrap_or_default();
            if drawn == a.amount && undone != reopened {
                report.differ(format!(
                    "allocation {}: its credit lots reopened {reopened} of it, its compensations undo {undone}",
                    a.id
                ));
            }
        }
        report.count("accounts", self.accounts.len());
    }

    /// `n/id/<kind>` against the ids of that kind; `n/series/<series>/<period>` against the numbers issued.
    fn counters(&self, engine: &Engine, report: &mut Report) -> EngineResult<()> {
        let mut counters: BTreeMap<String, u64> = BTreeMap::new();
        for (key, value) in engine.store().scan_raw::<Value>("n/")? {
            match value.as_u64() {
                Some(n) => {
                    counters.insert(key, n);
                }
                None => report.differ(format!("counter {key}: {value} is not a number")),
            }
        }
        report.count("counters", counters.len());
        // Ids: `<prefix>_<8 digits>`, never above the kind's counter.
        let mut highest: BTreeMap<&str, (u64, String)> = BTreeMap::new();
        let mut note = |kind: &'static str, id: &str| {
            let n = id
                .rsplit_once('_')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or(0);
            let e = highest.entry(kind).or_default();
            if n > e.0 {
                *e = (n, id.to_string());
            }
        };
        self.invoices.iter().for_each(|r| note("invoice", &r.id));
        self.payments.iter().for_each(|r| note("payment", &r.id));
        self.allocations
            .iter()
            .for_each(|r| note("allocation", &r.id));
        self.accounts.iter().for_each(|r| note("account", &r.id));
        for kind in [
            "lead",
            "contact",
            "opportunity",
            "quote",
            "order",
            "review",
            "import",
        ] {
            for v in engine.store().scan::<Value>(kind) {
                if let Some(id) = v?["id"].as_str() {
                    note(kind, id);
                }
            }
        }
        for (kind, (n, id)) in &highest {
            let counter = counters.get(&format!("n/id/{kind}")).copied().unwrap_or(0);
            if *n > counter {
                report.differ(format!(
                    "counter n/id/{kind} is {counter}, but {kind} {id} was issued"
                ));
            }
        }
        // Number series: gap-free from 1 to the counter, each number once.
        let series = |pattern: &str| SeriesPattern::parse(pattern).ok();
        let numbering = &engine.config().numbering;
        let patterns = [
            ("invoice", series(&numbering.invoice)),
            ("credit_note", series(&numbering.credit_note)),
            ("quote", series(&numbering.quote)),
            ("order", series(&numbering.order)),
        ];
        let mut numbered: Vec<(&str, String, NaiveDate)> = Vec::new();
        for inv in &self.invoices {
            let external = inv.external_refs.iter().any(|r| r.origin);
            if let (Some(number), Some(date), false) = (&inv.number, inv.issue_date, external) {
                let series = match inv.kind {
                    InvoiceKind::Invoice => "invoice",
                    InvoiceKind::CreditNote => "credit_note",
                };
                numbered.push((series, number.clone(), date));
            }
        }
        for kind in ["quote", "order"] {
            for v in engine.store().scan::<Value>(kind) {
                let v = v?;
                if v["revision"].as_u64().is_some_and(|r| r > 1) {
                    continue; // a revision keeps its quote's number
                }
                let date = v["created_at"]
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.with_timezone(&chrono::Utc).date_naive());
                if let (Some(number), Some(date)) = (v["number"].as_str(), date) {
                    numbered.push((kind, number.to_string(), date));
                }
            }
        }
        let mut seqs: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        let mut unchecked = 0usize;
        for (series, number, date) in numbered {
            let Some(Some(pattern)) = patterns.iter().find(|(s, _)| *s == series).map(|(_, p)| p)
            else {
                continue;
            };
            match pattern.sequence_of(&number) {
                Some(seq) if pattern.format(date, seq) == number => {
                    let key = format!("n/series/{series}/{}", pattern.period_key(date));
                    seqs.entry(key).or_default().push((seq, number));
                }
                _ => unchecked += 1,
            }
        }
        if unchecked > 0 {
            report.notes.push(format!(
                "{unchecked} document numbers are not of the current [numbering] patterns (changed since?) and were not checked against their series"
            ));
        }
        let keys: BTreeSet<String> = seqs
            .keys()
            .cloned()
            .chain(
                counters
                    .keys()
                    .filter(|k| k.starts_with("n/series/"))
                    .cloned(),
            )
            .collect();
        for key in keys {
            let counter = counters.get(&key).copied().unwrap_or(0);
            let mut issued = seqs.remove(&key).unwrap_or_default();
            issued.sort();
            let mut seen = BTreeSet::new();
            for (seq, number) in &issued {
                if *seq > counter {
                    report.differ(format!(
                        "counter {key} is {counter}, but number {number} was issued"
                    ));
                }
                if !seen.insert(*seq) {
                    report.differ(format!("number {number} ({key}) was issued twice"));
                }
            }
            let gaps: Vec<u64> = (1..=counter).filter(|s| !seen.contains(s)).collect();
            if !gaps.is_empty() {
                let listed: Vec<String> = gaps
                    .iter()
                    .take(MAX_LISTED_GAPS)
                    .map(u64::to_string)
                    .collect();
                let more = if gaps.len() > MAX_LISTED_GAPS {
                    ", ..."
                } else {
                    ""
                };
                report.differ(format!(
                    "counter {key} is {counter}, but {} of its numbers were never issued (sequence {}{more})",
                    gaps.len(),
                    listed.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Every `i/<index>/...` row against the record it points at, and the records that belong in an index against it.
    fn indexes(
        &self,
        engine: &Engine,
        index: &MatchIndex,
        balances: &HashMap<String, Decimal>,
        report: &mut Report,
    ) -> EngineResult<()> {
        let invoices = self.invoices_by_id();
        let payments = self.payments_by_id();
        let open = |inv: &Invoice| {
            inv.state == InvoiceState::Issued
                && inv.kind == InvoiceKind::Invoice
                && balances.get(&inv.id).is_some_and(|b| *b > Decimal::ZERO)
        };
        let qualifying: BTreeSet<&str> = self
            .invoices
            .iter()
            .filter(|i| open(i))
            .map(|i| i.id.as_str())
            .collect();
        let mut open_rows = BTreeSet::new();
        let mut due_rows = BTreeSet::new();
        let mut number_rows = BTreeSet::new();
        let mut review_rows = BTreeSet::new();
        let reviews: HashMap<String, Value> = engine
            .store()
            .scan::<Value>("review")
            .map(|v| v.map(|v| (v["id"].as_str().unwrap_or_default().to_string(), v)))
            .collect::<Result<_, _>>()?;
        let exists = |kind: &'static str, id: &str| -> EngineResult<bool> {
            Ok(engine.store().get::<Value>(kind, id)?.is_some())
        };
        let mut rows = 0usize;
        let mut unchecked: BTreeMap<String, usize> = BTreeMap::new();
        for (key, value) in engine.store().scan_raw::<Value>("i/")? {
            rows += 1;
            let Some((name, rest)) = key["i/".len()..].split_once('/') else {
                report.differ(format!("index row {key}: not of the form i/<index>/<key>"));
                continue;
            };
            let target = value.as_str().unwrap_or_default();
            let row = format!("index row {key}");
            match name {
                "open-invoice" => {
                    open_rows.insert(rest.to_string());
                    match invoices.get(rest) {
                        None => report.differ(format!("{row}: invoice {rest} does not exist")),
                        Some(inv) if !open(inv) => report.differ(format!(
                            "{row}: {} is not open (balance {})",
                            invoice_name(inv),
                            balances.get(rest).copied().unwrap_or_default()
                        )),
                        Some(_) => {}
                    }
                }
                "open-due" => {
                    due_rows.insert(target.to_string());
                    match invoices.get(target) {
                        None => report.differ(format!("{row}: invoice {target} does not exist")),
                        Some(inv) if !open(inv) => {
                            report.differ(format!("{row}: {} is not open", invoice_name(inv)))
                        }
                        Some(inv) => {
                            let due = inv.due_date.map(|d| d.to_string()).unwrap_or_default();
                            if rest != format!("{due}/{}", inv.id) {
                                report.differ(format!("{row}: {} is due {due}", invoice_name(inv)));
                            }
                        }
                    }
                }
                "invoice-number" => {
                    number_rows.insert(target.to_string());
                    match invoices.get(target) {
                        Some(inv) if inv.number.as_deref() == Some(rest) => {}
                        Some(inv) => report.differ(format!(
                            "{row}: {} has number {}",
                            invoice_name(inv),
                            inv.number.as_deref().unwrap_or("(none)")
                        )),
                        None => report.differ(format!("{row}: invoice {target} does not exist")),
                    }
                }
                "invoice-ref" => match invoices.get(target) {
                    Some(inv) if inv.state != InvoiceState::Draft => {}
                    Some(inv) => {
                        report.differ(format!("{row}: {} is not issued", invoice_name(inv)))
                    }
                    None => report.differ(format!("{row}: invoice {target} does not exist")),
                },
                "paid-by" => match payments.get(target) {
                    Some(p)
                        if !p.allocations.is_empty() && rest.ends_with(&format!("/{target}")) => {}
                    Some(p) => report.differ(format!(
                        "{row}: payment {} paid nothing or is not the one the key names",
                        p.id
                    )),
                    None => report.differ(format!("{row}: payment {target} does not exist")),
                },
                "open-review" => {
                    review_rows.insert(target.to_string());
                    match reviews.get(target) {
                        Some(item) if item["status"] == "open" => {}
                        Some(item) => report
                            .differ(format!("{row}: review item {target} is {}", item["status"])),
                        None => {
                            report.differ(format!("{row}: review item {target} does not exist"))
                        }
                    }
                }
                "payer" => {
                    let account = target.split_once('\t').map(|(_, a)| a).unwrap_or_default();
                    if !exists("account", account)? {
                        report.differ(format!("{row}: account {account:?} does not exist"));
                    }
                }
                "lead-email" | "lead-ext" => {
                    if !exists("lead", target)? {
                        report.differ(format!("{row}: lead {target} does not exist"));
                    }
                }
                "account-name" | "account-domain" => {
                    if !exists("account", target)? {
                        report.differ(format!("{row}: account {target} does not exist"));
                    }
                }
                "order-by-quote" => {
                    if !exists("order", target)? {
                        report.differ(format!("{row}: order {target} does not exist"));
                    }
                }
                "contact-email" => {
                    if !exists("contact", target)? {
                        report.differ(format!("{row}: contact {target} does not exist"));
                    }
                }
                other => *unchecked.entry(other.to_string()).or_default() += 1,
            }
        }
        report.count("index rows", rows);
        for (name, n) in unchecked {
            report.notes.push(format!(
                "{n} rows of index {name} were not checked (unknown index)"
            ));
        }
        for id in &qualifying {
            let name = invoice_name(invoices[id]);
            if !open_rows.contains(*id) {
                report.differ(format!("{name}: open, but not in the open-invoice index"));
            }
            if !due_rows.contains(*id) {
                report.differ(format!("{name}: open, but not in the open-due index"));
            }
            match index.get(id) {
                None => report.differ(format!(
                    "{name}: open, but not in the daemon's reconciliation index"
                )),
                Some(o) => {
                    let inv = invoices[id];
                    let served = balances.get(*id).copied().unwrap_or_default();
                    if round_money(o.balance, &inv.currency) != served {
                        report.differ(format!(
                            "{name}: balance {} in the reconciliation index, {served} as served",
                            o.balance
                        ));
                    }
                    // A payment is allocated from these figures without reading the invoice.
                    if let Some(p) = &o.payment {
                        let record = (inv.totals.total, inv.amount_paid, inv.amount_refunded);
                        if (p.total, p.amount_paid, p.amount_refunded) != record
                            || p.announced_status != inv.announced_status
                            || p.external_refs != inv.external_refs
                        {
                            report.differ(format!(
                                "{name}: the reconciliation index has total {}, paid {}, refunded {}, \
                                 announced {:?}, {} external ids; the invoice {}, {}, {}, {:?}, {}",
                                p.total,
                                p.amount_paid,
                                p.amount_refunded,
                                p.announced_status,
                                p.external_refs.len(),
                                inv.totals.total,
                                inv.amount_paid,
                                inv.amount_refunded,
                                inv.announced_status,
                                inv.external_refs.len()
                            ));
                        }
                    }
                }
            }
        }
        if index.len() != qualifying.len() {
            report.differ(format!(
                "the reconciliation index holds {} open invoices, the store {}",
                index.len(),
                qualifying.len()
            ));
        }
        for inv in self.invoices.iter().filter(|i| i.number.is_some()) {
            if !number_rows.contains(&inv.id) {
                report.differ(format!(
                    "{}: not in the invoice-number index",
                    invoice_name(inv)
                ));
            }
        }
        for (id, item) in &reviews {
            if item["status"] == "open" && !review_rows.contains(id) {
                report.differ(format!(
                    "review item {id}: open, but not in the open-review index"
                ));
            }
        }
        Ok(())
    }

    /// The dedupe keys: the in-memory index of `seen` keys against the blocks on disk, and the `paid-by:` notes
    /// (`billing::index_paid`) against the payments they list: each exists, paid something, and for a bank reference
    /// (`ref:`) is the payment of that reference.
    fn seen(&self, engine: &Engine, report: &mut Report) -> EngineResult<()> {
        let store = engine.store();
        for difference in store.verify_seen()? {
            report.differ(format!("seen index: {difference}"));
        }
        report.count("seen keys", store.seen_index_size()?.0);
        let payments = self.payments_by_id();
        let notes = store.seen_entries(crate::engine::PAID_BY_SEEN)?;
        for (key, entry) in &notes {
            let prefix = &key[crate::engine::PAID_BY_SEEN.len()..];
            let Some(listed) = entry["payments"].as_array() else {
                report.differ(format!("seen entry {key}: lists no payments ({entry})"));
                continue;
            };
            for id in listed {
                let Some(id) = id.as_str() else {
                    report.differ(format!("seen entry {key}: {id} is not a payment id"));
                    continue;
                };
                match payments.get(id) {
                    None => report.differ(format!("seen entry {key}: payment {id} does not exist")),
                    Some(p) if p.allocations.is_empty() => {
                        report.differ(format!("seen entry {key}: payment {id} paid nothing"))
                    }
                    Some(p) if prefix.starts_with("ref:") => {
                        let theirs = p
                            .external_id
                            .as_deref()
                            .map(|r| crate::engine::paid_by_prefix("ref", r));
                        if theirs.as_deref() != Some(prefix) {
                            report.differ(format!(
                                "seen entry {key}: payment {id} has the bank reference {:?}",
                                p.external_id.as_deref().unwrap_or("(none)")
                            ));
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        report.count("paid-by notes", notes.len());
        Ok(())
    }
}

/// Outbox rows (`d/<sink>/...`): no cursor, done, retry or dead row beyond the last event.
fn outbox(engine: &Engine, report: &mut Report) -> EngineResult<()> {
    let last = engine.store().last_event_id();
    let mut sinks = BTreeSet::new();
    for (key, value) in engine.store().scan_raw::<Value>("d/")? {
        let Some((sink, rest)) = key["d/".len()..].split_once('/') else {
            continue;
        };
        sinks.insert(sink.to_string());
        let id = if rest == "cursor" {
            value.as_u64()
        } else {
            rest.split_once('/')
                .and_then(|(_, n)| n.parse::<u64>().ok())
        };
        if let Some(id) = id.filter(|id| *id > last) {
            report.differ(format!(
                "outbox row {key}: event {id} is beyond the last event {last}"
            ));
        }
    }
    report.count("outbox sinks", sinks.len());
    Ok(())
}

fn invoice_name(inv: &Invoice) -> String {
    let kind = match inv.kind {
        InvoiceKind::Invoice => "invoice",
        InvoiceKind::CreditNote => "credit note",
    };
    match &inv.number {
        Some(n) => format!("{kind} {} ({n})", inv.id),
        None => format!("{kind} {}", inv.id),
    }
}

fn source_name(source: &CreditSource) -> String {
    match source {
        CreditSource::Overpayment { payment_id } => format!("overpayment {payment_id}"),
        CreditSource::CreditNote { credit_note_id, .. } => format!("credit note {credit_note_id}"),
    }
}

/// Print a report: every difference and note on its own line, then the summary.
pub fn print(report: &Report, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for line in &report.differences {
        writeln!(out, "{line}")?;
    }
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    writeln!(out, "{}", report.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_in_order_and_says_whether_anything_differs() {
        let mut report = Report::default();
        report.count("payments", 1);
        report.count("invoices", 3);
        report.count("index rows", 21);
        assert_eq!(
            report.summary(),
            "checked 3 invoices, 1 payment, 21 index rows: no differences"
        );
        report.differ("invoice inv_1: balance".into());
        assert!(report.summary().ends_with(": 1 difference"));
        report.differ("invoice inv_2: balance".into());
        assert!(report.summary().ends_with(": 2 differences"));
    }
}
