//! settled connector plugin `hledger`: keeps a plain-text accounting journal in step through hledger-web's JSON API
//! (`hledger-web --serve-api --capabilities=view,add`).
//!
//! - `invoice.issued`: receivable (`assets:receivable:<customer>`) against revenue and VAT per rate (a credit note
//!   the other way round);
//! - `payment.recorded`: bank against the receivable of each invoice it pays (the account the invoice was posted to),
//!   a provider's fee to `expenses:fees`, write-offs against `expenses:write-off`, what went to the customer's credit against `liabilities:customer-credit`;
//! - `payment.reversed`: the same the other way round, for the reversed part.
//!
//! hledger-web has no idempotency and validates nothing, so every delivery reads before it writes: `GET /transactions`,
//! and if a transaction already carries the tag `settled-event:<event id>` the event is done. A transaction is checked
//! to balance before it is sent (an unbalanced one would make the journal unreadable). Tags live in the comment text
//! (`settled-event:<id>, settled-invoice:<invoice id>`), the only place hledger-web reads them from.
//!
//! The read is the whole journal: hledger-web (1.25, the Debian version; the same in its current source) serves
//! `/transactions` unfiltered, ignoring any query, and its one narrower read, `/accounttransactions/<account>`, filters
//! by account only, while the sink must find transactions by their `settled-event` tag and a payment must find its
//! invoices' transactions by `settled-invoice`. The answer is about 1.3 KiB of JSON per two-posting transaction (3.3 MB
//! for 2,500), so the daemon's `[outbox] max_response_mib` (64 by default, about 45,000 transactions) bounds the journal
//! size; a larger answer is refused with an error naming that setting.

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    HttpRequestSpec, HttpResponseSpec, Manifest, Plugin, PluginError, Role, SinkInput, SinkStep,
};

/// Settings of one journal (the `[connector.settings]` table). In account names `<customer>` becomes the invoice's
/// customer name and `<rate>` the VAT rate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// hledger-web's base URL, e.g. `http://127.0.0.1:5000`.
    pub url: String,
    /// The customer's receivable account.
    pub receivable: String,
    /// Net revenue.
    pub revenue: String,
    /// VAT owed, per rate.
    pub vat: String,
    /// Where payments arrive.
    pub bank: String,
    /// What a payment paid beyond its invoices (the customer's credit).
    pub credit: String,
    /// What was written off when a payment settled an invoice.
    pub write_off: String,
    /// A payment provider's fee (the payer sent more than reached the bank).
    pub fees: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: String::new(),
            receivable: "assets:receivable:<customer>".into(),
            revenue: "revenue".into(),
            vat: "liabilities:vat:<rate>".into(),
            bank: "assets:bank".into(),
            credit: "liabilities:customer-credit".into(),
            write_off: "expenses:write-off".into(),
            fees: "expenses:fees".into(),
        }
    }
}

/// A configured journal.
#[derive(Debug)]
pub struct Hledger {
    url: String,
    accounts: Settings,
}

/// One posting: account and signed amount.
type Posting = (String, Decimal);

/// A transaction about to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The description line.
    pub description: String,
    /// Tags besides `settled-event`.
    pub tags: Vec<(String, String)>,
    /// The postings; they sum to zero.
    pub postings: Vec<Posting>,
    /// The commodity (currency code).
    pub commodity: String,
}

impl Hledger {
    /// Validate settings; errors name the key at fault.
    pub fn from_settings(settings: Settings) -> Result<Hledger, PluginError> {
        let url = settings.url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(PluginError::bad_config(
                "url",
                "hledger-web's url is required and must start with http:// or https://",
            ));
        }
        for (key, name) in [
            ("receivable", &settings.receivable),
            ("revenue", &settings.revenue),
            ("vat", &settings.vat),
            ("bank", &settings.bank),
            ("credit", &settings.credit),
            ("write_off", &settings.write_off),
            ("fees", &settings.fees),
        ] {
            if name.trim().is_empty() || name.contains("  ") || name.contains(';') {
                return Err(PluginError::bad_config(
                    key,
                    "an account name must not be empty nor hold two spaces in a row or a `;`",
                ));
            }
        }
        Ok(Hledger {
            url,
            accounts: settings,
        })
    }

    /// One step of delivering an event. The conversation: read the journal (`GET /transactions`; the event's tag is
    /// there: done), pause, write (`PUT /add`), read again to see the write. hledger-web reloads its journal only when
    /// the file's modification time is later than its last read, and file times are coarse (a jiffy): a write right
    /// after a reload can stay invisible until the file changes again, and a redelivery would then post twice. The
    /// pause before the write avoids that; if another write came in between and the read after still misses the
    /// transaction, the sink pauses and appends an empty marker transaction (`settled-reload`, no postings) so
    /// hledger-web reads the file again.
    pub fn step(&self, input: &SinkInput) -> Result<SinkStep, PluginError> {
        let event = &input.event;
        let kind = event["type"].as_str().unwrap_or_default();
        if !matches!(
            kind,
            "invoice.issued" | "payment.recorded" | "payment.reversed"
        ) {
            return Ok(SinkStep::Ignored);
        }
        let event_id = event["id"]
            .as_u64()
            .ok_or_else(|| PluginError::bad_input("event.id", "the event has no numeric id"))?;
        let state = &input.state;
        let phase = state["phase"].as_str().unwrap_or_default();
        let tries = state["tries"].as_u64().unwrap_or(0);
        let response = match (&input.response, phase) {
            (None, "write") => {
                return Ok(self.put(
                    state["body"].clone(),
                    json!({"phase": "written", "tries": tries}),
                ))
            }
            (None, "mark") => {
                let marker = marker_json(event_id, tries, event["at"].as_str().unwrap_or(""));
                return Ok(self.put(marker, json!({"phase": "written", "tries": tries})));
            }
            (None, _) => return Ok(self.read(json!({"phase": "read"}))),
            (Some(response), _) => response,
        };
        if !(200..300).contains(&response.status) {
            let doing = if phase == "written" {
                "adding the transaction"
            } else {
                "reading /transactions"
            };
            return Ok(refused(doing, response));
        }
        if phase == "written" {
            return Ok(self.read(json!({"phase": "verify", "tries": tries})));
        }
        let journal: Vec<Value> = serde_json::from_slice(&response.body).map_err(|e| {
            let start: String = String::from_utf8_lossy(&response.body)
                .chars()
                .take(80)
                .collect();
            PluginError::bad_input(
                "transactions",
                format!(
                    "hledger-web's GET /transactions answer is not a json list of transactions ({e}); it began `{start}`"
                ),
            )
        })?;
        let id = event_id.to_string();
        if journal
            .iter()
            .any(|t| tag(t, "settled-event").as_deref() == Some(&id))
        {
            return Ok(SinkStep::Done);
        }
        if phase == "verify" {
            // Written (hledger-web said so) but not seen: a stale view, see above.
            return Ok(if tries < MARKER_TRIES {
                SinkStep::Wait {
                    millis: PAUSE_MS,
                    state: json!({"phase": "mark", "tries": tries + 1}),
                }
            } else {
                SinkStep::RetryLater {
                    after_secs: 0,
                    reason: format!(
                        "hledger-web took event {event_id}'s transaction but does not show it yet"
                    ),
                }
            });
        }
        let entry = match self.entry(event, &journal) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(SinkStep::Done),
            Err(Missing(reason)) => {
                return Ok(SinkStep::RetryLater {
                    after_secs: 0,
                    reason,
                })
            }
        };
        check_balanced(&entry, event_id)?;
        Ok(SinkStep::Wait {
            millis: PAUSE_MS,
            state: json!({"phase": "write", "body": transaction_json(&entry, event_id)?}),
        })
    }

    fn read(&self, state: Value) -> SinkStep {
        SinkStep::Request {
            request: HttpRequestSpec {
                method: "GET".into(),
                url: format!("{}/transactions", self.url),
                headers: vec![("accept".into(), "application/json".into())],
                body: Vec::new(),
            },
            state,
        }
    }

    fn put(&self, transaction: Value, state: Value) -> SinkStep {
        SinkStep::Request {
            request: HttpRequestSpec {
                method: "PUT".into(),
                url: format!("{}/add", self.url),
                headers: vec![("content-type".into(), "application/json".into())],
                body: serde_json::to_vec(&transaction).unwrap_or_default(),
            },
            state,
        }
    }

    /// The transaction an event posts (`None`: nothing to post, e.g. a zero amount), or what is missing from the
    /// journal before it can be posted.
    pub fn entry(&self, event: &Value, journal: &[Value]) -> Result<Option<Entry>, Missing> {
        let data = &event["data"];
        let mut date = event["at"]
            .as_str()
            .and_then(|at| at.get(..10))
            .unwrap_or("1970-01-01")
            .to_string();
        let commodity = data["currency"].as_str().unwrap_or("EUR").to_string();
        let kind = event["type"].as_str().unwrap_or_default();
        let entity_id = event["entity_id"].as_str().unwrap_or_default().to_string();
        let mut postings = Vec::new();
        let mut tags = Vec::new();
        let description;
        match kind {
            "invoice.issued" => {
                let customer = account_part(data["customer"].as_str().unwrap_or("unknown"));
                let receivable = self.accounts.receivable.replace("<customer>", &customer);
                let sign = if data["kind"] == "credit_note" {
                    Decimal::NEGATIVE_ONE
                } else {
                    Decimal::ONE
                };
                let total = amount(&data["total"]);
                postings.push((receivable, sign * total));
                let taxes = data["taxes"].as_array().cloned().unwrap_or_default();
                if taxes.is_empty() {
                    postings.push((self.accounts.revenue.clone(), -sign * total));
                }
                for group in &taxes {
                    postings.push((
                        self.accounts.revenue.clone(),
                        -sign * amount(&group["base"]),
                    ));
                    let rate = amount(&group["rate"]).normalize().to_string();
                    let vat = self.accounts.vat.replace("<rate>", &rate);
                    postings.push((vat, -sign * amount(&group["amount"])));
                }
                let number = data["number"].as_str().unwrap_or(&entity_id);
                description = format!("{number} {}", data["customer"].as_str().unwrap_or(""))
                    .trim()
                    .to_string();
                if let Some(issued) = data["issue_date"].as_str() {
                    date = issued.to_string();
                }
                tags.push(("settled-invoice".into(), entity_id));
            }
            "payment.recorded" | "payment.reversed" => {
                // A reversal gives money back: every posting the other way round.
                let sign = if kind == "payment.reversed" {
                    Decimal::NEGATIVE_ONE
                } else {
                    Decimal::ONE
                };
                postings.push((self.accounts.bank.clone(), sign * amount(&data["amount"])));
                for alloc in data["allocations"].as_array().into_iter().flatten() {
                    let invoice = alloc["invoice_id"].as_str().unwrap_or_default();
                    let receivable = receivable_of(journal, invoice).ok_or_else(|| {
                        Missing(format!(
                            "invoice {invoice} is not in the journal yet (its invoice.issued comes first)"
                        ))
                    })?;
                    // Reversing allocations carry negative amounts already.
                    let part = amount(&alloc["amount"]);
                    postings.push((receivable, -part));
                    match alloc["kind"].as_str() {
                        Some("write_off") => {
                            postings.push((self.accounts.write_off.clone(), part));
                        }
                        Some("credit") => {
                            postings.push((self.accounts.credit.clone(), part));
                        }
                        _ => {}
                    }
                }
                // `amount` is what reached the bank; the provider kept the fee of what the payer sent.
                let fee = amount(&data["fee"]);
                if !fee.is_zero() {
                    postings.push((self.accounts.fees.clone(), sign * fee));
                }
                let to_credit = amount(&data["to_credit"]);
                if !to_credit.is_zero() {
                    postings.push((self.accounts.credit.clone(), -to_credit));
                }
                let taken_back = amount(&data["credit_taken_back"]);
                if !taken_back.is_zero() {
                    postings.push((self.accounts.credit.clone(), taken_back));
                }
                if let Some(received) = data["received_on"].as_str() {
                    date = received.to_string();
                }
                description = match kind {
                    "payment.recorded" => format!("payment {entity_id}"),
                    _ => format!("reversal of payment {entity_id}"),
                };
                tags.push(("settled-payment".into(), entity_id));
            }
            _ => return Ok(None),
        }
        let postings = merge(postings);
        if postings.is_empty() {
            return Ok(None);
        }
        Ok(Some(Entry {
            date,
            description,
            tags,
            postings,
            commodity,
        }))
    }
}

/// The pause between hledger-web's last read and a write, well above a file-time jiffy (at most 10 ms).
const PAUSE_MS: u64 = 30;
/// Marker transactions one delivery may append to make hledger-web read its journal again.
const MARKER_TRIES: u64 = 2;

/// An empty transaction (no postings, no effect on any balance) whose only purpose is to change the journal file.
fn marker_json(event_id: u64, try_no: u64, at: &str) -> Value {
    let date = at.get(..10).unwrap_or("1970-01-01");
    let position = json!({"sourceColumn": 1, "sourceLine": 1, "sourceName": ""});
    json!({
        "tcode": "", "tcomment": format!("settled-reload:{event_id}-{try_no}"), "tdate": date, "tdate2": null,
        "tdescription": "settled: journal reload marker", "tindex": 0, "tprecedingcomment": "",
        "tsourcepos": [position, position], "tstatus": "Unmarked", "ttags": [], "tpostings": [],
    })
}

/// Something the journal must hold before an event can be posted (retried later).
#[derive(Debug)]
pub struct Missing(pub String);

/// Postings to the same account added up; zero postings dropped.
fn merge(postings: Vec<Posting>) -> Vec<Posting> {
    let mut out: Vec<Posting> = Vec::new();
    for (account, value) in postings {
        match out.iter_mut().find(|(a, _)| *a == account) {
            Some(existing) => existing.1 += value,
            None => out.push((account, value)),
        }
    }
    out.retain(|(_, v)| !v.is_zero());
    out
}

fn check_balanced(entry: &Entry, event_id: u64) -> Result<(), PluginError> {
    let sum: Decimal = entry.postings.iter().map(|(_, v)| *v).sum();
    if sum.is_zero() {
        Ok(())
    } else {
        Err(PluginError::bad_input(
            "event.data",
            format!("event {event_id} would post an unbalanced transaction (off by {sum}); nothing was written"),
        ))
    }
}

/// A decimal from a JSON string (or number); anything else counts as zero.
fn amount(value: &Value) -> Decimal {
    match value {
        Value::String(s) => s.trim().parse().unwrap_or_default(),
        Value::Number(n) => n.to_string().parse().unwrap_or_default(),
        _ => Decimal::ZERO,
    }
}

/// A name made safe as one component of an hledger account: no `:` or `;`, single spaces only.
fn account_part(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c == ':' || c == ';' { ' ' } else { c })
        .collect();
    let joined = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        "unknown".into()
    } else {
        joined
    }
}

/// A tag's value on a transaction from `/transactions` (`ttags` is a list of `[name, value]`).
fn tag(transaction: &Value, name: &str) -> Option<String> {
    transaction["ttags"].as_array()?.iter().find_map(|t| {
        (t[0].as_str() == Some(name)).then(|| t[1].as_str().unwrap_or_default().trim().to_string())
    })
}

/// The receivable account an invoice was posted to: the first posting of its `invoice.issued` transaction.
fn receivable_of(journal: &[Value], invoice_id: &str) -> Option<String> {
    journal
        .iter()
        .filter(|t| tag(t, "settled-event").is_some())
        .find(|t| tag(t, "settled-invoice").as_deref() == Some(invoice_id))
        .and_then(|t| t["tpostings"][0]["paccount"].as_str().map(str::to_string))
}

/// The transaction in the shape `PUT /add` takes: every field of the `/transactions` shape, amounts as mantissa and
/// places with a display precision equal to the places (so `120.50` is written as such).
pub fn transaction_json(entry: &Entry, event_id: u64) -> Result<Value, PluginError> {
    let mut comment = format!("settled-event:{event_id}");
    for (name, value) in &entry.tags {
        comment.push_str(&format!(", {name}:{}", value.replace(',', " ")));
    }
    let postings = entry
        .postings
        .iter()
        .map(|(account, value)| {
            let mantissa = i64::try_from(value.mantissa()).map_err(|_| {
                PluginError::bad_input(
                    "event.data",
                    format!("the amount {value} for {account} is too large for hledger"),
                )
            })?;
            let places = value.scale();
            Ok(json!({
                "paccount": account,
                "pamount": [{
                    "acommodity": entry.commodity,
                    "aprice": null,
                    "aquantity": {"decimalMantissa": mantissa, "decimalPlaces": places},
                    "astyle": {"ascommodityside": "L", "ascommodityspaced": true, "asdecimalpoint": ".",
                               "asdigitgroups": null, "asprecision": places},
                }],
                "pbalanceassertion": null, "pcomment": "", "pdate": null, "pdate2": null, "poriginal": null,
                "pstatus": "Unmarked", "ptags": [], "ptransaction_": "0", "ptype": "RegularPosting",
            }))
        })
        .collect::<Result<Vec<_>, PluginError>>()?;
    let position = json!({"sourceColumn": 1, "sourceLine": 1, "sourceName": ""});
    Ok(json!({
        "tcode": "", "tcomment": comment, "tdate": entry.date, "tdate2": null,
        "tdescription": entry.description.replace(';', ","), "tindex": 0, "tprecedingcomment": "",
        "tsourcepos": [position, position], "tstatus": "Unmarked", "ttags": [], "tpostings": postings,
    }))
}

/// A non-2xx answer: 429, 408 and 5xx are retried, anything else refuses the event for good.
fn refused(doing: &str, response: &HttpResponseSpec) -> SinkStep {
    let status = response.status;
    let text = String::from_utf8_lossy(&response.body);
    let short: String = text.trim().chars().take(200).collect();
    let reason = format!("hledger-web answered {status} {doing}: {short}");
    match status {
        408 | 429 | 500..=599 => SinkStep::RetryLater {
            after_secs: 0,
            reason,
        },
        _ => SinkStep::Failed { reason },
    }
}

impl Plugin for Hledger {
    fn manifest() -> Manifest {
        Manifest {
            name: "hledger".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            roles: vec![Role::Sink],
            description: "invoices and payments posted to an hledger journal through hledger-web"
                .to_owned(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        Hledger::from_settings(settings_from_json(settings)?)
    }

    fn sink_step(&self, input: SinkInput) -> Result<SinkStep, PluginError> {
        self.step(&input)
    }
}

settled_plugin_api::export_plugin!(Hledger);

#[cfg(test)]
mod tests;
