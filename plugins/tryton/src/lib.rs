//! settled connector plugin `tryton`: two-way sync with a Tryton 6 server over its JSON-RPC.
//!
//! **Sink** (settled -> Tryton):
//! - `invoice.issued`: the invoice is created in Tryton as a customer invoice (`account.invoice`, type `out`) for the
//!   party of the same name (created when missing, unless `create_parties = false`), one line per settled line (its
//!   net as the price, its VAT rate as the tax), its reference set to settled's number, checked to have the same total
//!   and posted. Read before write: an invoice whose reference is already there is not created twice.
//! - `payment.recorded`: each payment allocation is entered through the `account.invoice.pay` wizard for the same
//!   amount and date (partial when less than what is due), the payment line described `settled <payment> <allocation>`;
//!   a line so described already there, or an invoice Tryton has as paid, is not paid again.
//! - `payment.reversed` and credit notes: Tryton's API cannot undo a reconciled payment; the event becomes a dead letter
//!   whose error says what to do in Tryton.
//!
//! **Poll** (Tryton -> settled): posted and paid customer invoices, oldest change first, from the cursor
//! `<write_date>/<id>`, become `invoice@1` records with their taxes per rate; those settled created come back with
//! its number as `host_number`. A payment entered in Tryton moves the invoice's write date, so the invoice is read
//! again and the host records what Tryton has as paid beyond what settled knows (allocations of kind
//! `paid_elsewhere`, which the sink never sends back: it pays only allocations of kind `payment`).
//!
//! The session lives in the instance: the plugin logs in when it has none and again when Tryton answers 401.

mod rpc;
mod sink;

use std::sync::{Mutex, MutexGuard};

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};
use settled_plugin_api::chrono::NaiveDateTime;
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    HttpRequestSpec, InvoiceRecord, InvoiceRecordLine, InvoiceRecordTax, Manifest, Plugin,
    PluginError, PollReply, PollResponse, PollStart, Record, Role, SinkInput, SinkStep,
};

use rpc::Session;

/// Settings of one Tryton database (the `[connector.settings]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The server's base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// The database name.
    pub database: String,
    /// The Tryton user settled logs in as.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Create a party that is missing in Tryton (default true); false makes it a dead letter naming the party.
    pub create_parties: bool,
    /// The invoice payment method used for payments (`account.invoice.payment.method`, by name); the first one
    /// when empty.
    pub payment_method: String,
    /// Invoices read per poll page (default 50).
    pub page_size: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: String::new(),
            database: String::new(),
            user: String::new(),
            password: String::new(),
            create_parties: true,
            payment_method: String::new(),
            page_size: 50,
        }
    }
}

/// What the plugin looked up once per instance, each part when a conversation first needed it: ids of the accounts,
/// journal, taxes and currencies (for invoices) and of the payment method (for payments).
#[derive(Debug, Clone, Default)]
pub struct Setup {
    receivable: Option<i64>,
    revenue: Option<i64>,
    journal: Option<i64>,
    /// `(rate as a percent number, tax id, name)`.
    taxes: Vec<(Decimal, i64, String)>,
    /// `(code, id)`.
    currencies: Vec<(String, i64)>,
    payment_method: Option<i64>,
    /// The look-ups made so far (phase names of `sink::SETUP`).
    looked_up: Vec<&'static str>,
}

/// Where a poll stands: the next request depends on what the session needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PollPhase {
    Login,
    Preferences,
    Page,
}

#[derive(Debug, Default)]
struct Live {
    /// The header of a login whose preferences are not read yet.
    pending_auth: Option<String>,
    session: Option<Session>,
    setup: Option<Setup>,
    poll: Option<PollPhase>,
}

/// A configured Tryton database.
#[derive(Debug)]
pub struct Tryton {
    settings: Settings,
    /// `<url>/<database>/`, where every call goes.
    endpoint: String,
    live: Mutex<Live>,
}

impl Tryton {
    /// Validate settings; errors name the key at fault.
    pub fn from_settings(settings: Settings) -> Result<Tryton, PluginError> {
        let url = settings.url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(PluginError::bad_config(
                "url",
                "Tryton's url is required and must start with http:// or https://",
            ));
        }
        for (key, value) in [
            ("database", &settings.database),
            ("user", &settings.user),
            ("password", &settings.password),
        ] {
            if value.trim().is_empty() {
                return Err(PluginError::bad_config(key, "is required"));
            }
        }
        if settings.database.contains('/') {
            return Err(PluginError::bad_config(
                "database",
                "a database name cannot hold `/`",
            ));
        }
        if settings.page_size == 0 || settings.page_size > 500 {
            return Err(PluginError::bad_config(
                "page_size",
                "must be between 1 and 500",
            ));
        }
        let endpoint = format!("{url}/{}/", settings.database);
        Ok(Tryton {
            settings,
            endpoint,
            live: Mutex::new(Live::default()),
        })
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn login_request(&self) -> HttpRequestSpec {
        rpc::request(
            &self.endpoint,
            None,
            "common.db.login",
            json!([self.settings.user, {"password": self.settings.password}]),
        )
    }

    fn preferences_request(auth: &str, endpoint: &str) -> HttpRequestSpec {
        rpc::request(
            endpoint,
            Some(auth),
            "model.res.user.get_preferences",
            json!([true, {}]),
        )
    }

    /// Remember a login answer; the error says why it is not one.
    fn logged_in(&self, answer: &settled_plugin_api::HttpResponseSpec) -> Result<String, String> {
        let result = rpc::result(answer).map_err(|f| match f {
            rpc::Failure::Unauthorized => format!(
                "Tryton refused the login of user `{}` to database `{}`: check `user` and `password`",
                self.settings.user, self.settings.database
            ),
            other => other.describe("logging in"),
        })?;
        let auth = Session::header(&self.settings.user, &result)
            .ok_or_else(|| format!("Tryton's login answer is not [uid, session]: {result}"))?;
        Ok(auth)
    }

    /// Complete the session of login `auth` with the user's preferences.
    fn preferences(
        &self,
        auth: String,
        answer: &settled_plugin_api::HttpResponseSpec,
    ) -> Result<Session, String> {
        let context =
            rpc::result(answer).map_err(|f| f.describe("reading the user's preferences"))?;
        let session = Session { auth, context };
        self.live().session = Some(session.clone());
        Ok(session)
    }

    /// Forget the session (Tryton said 401).
    fn expire(&self) {
        let mut live = self.live();
        live.session = None;
        live.pending_auth = None;
    }

    fn session(&self) -> Option<Session> {
        self.live().session.clone()
    }

    fn call(&self, session: &Session, method: &str, params: Value) -> HttpRequestSpec {
        rpc::request(&self.endpoint, Some(&session.auth), method, params)
    }

    // ---- poll ----

    fn poll_request(&self, cursor: Option<&str>) -> Result<HttpRequestSpec, PluginError> {
        let phase = {
            let mut live = self.live();
            let phase = if live.session.is_some() {
                PollPhase::Page
            } else if live.pending_auth.is_some() {
                PollPhase::Preferences
            } else {
                PollPhase::Login
            };
            live.poll = Some(phase);
            phase
        };
        Ok(match phase {
            PollPhase::Login => self.login_request(),
            PollPhase::Preferences => {
                let auth = self.live().pending_auth.clone().unwrap_or_default();
                Self::preferences_request(&auth, &self.endpoint)
            }
            PollPhase::Page => {
                let session = self.session().unwrap_or_else(|| Session {
                    auth: String::new(),
                    context: json!({}),
                });
                let mut domain = vec![
                    json!(["type", "=", "out"]),
                    json!(["state", "in", ["posted", "paid"]]),
                ];
                if let Some(cursor) = cursor {
                    let (at, id) = parse_cursor(cursor)?;
                    domain.push(json!([
                        "OR",
                        ["write_date", ">", rpc::datetime(at)],
                        [["write_date", "=", rpc::datetime(at)], ["id", ">", id]]
                    ]));
                }
                self.call(
                    &session,
                    "model.account.invoice.search_read",
                    json!([
                        domain,
                        0,
                        self.settings.page_size,
                        [["write_date", "ASC"], ["id", "ASC"]],
                        POLL_FIELDS,
                        session.context
                    ]),
                )
            }
        })
    }

    fn poll_reply(&self, response: PollResponse) -> Result<PollReply, PluginError> {
        let phase = self.live().poll.take();
        let again = |cursor: Option<String>| PollReply {
            records: Vec::new(),
            cursor,
            more: true,
        };
        match phase {
            Some(PollPhase::Login) => {
                let auth = self
                    .logged_in(&response.response)
                    .map_err(|e| PluginError::new("login_failed", e))?;
                self.live().pending_auth = Some(auth);
                Ok(again(response.cursor))
            }
            Some(PollPhase::Preferences) => {
                let auth = self.live().pending_auth.take().unwrap_or_default();
                self.preferences(auth, &response.response)
                    .map_err(|e| PluginError::new("login_failed", e))?;
                Ok(again(response.cursor))
            }
            None => Err(PluginError::new(
                "internal",
                "a poll response came without a poll request",
            )),
            Some(PollPhase::Page) => match rpc::result(&response.response) {
                Err(rpc::Failure::Unauthorized) => {
                    tracing::info!("Tryton session expired; logging in again");
                    self.expire();
                    Ok(again(response.cursor))
                }
                Err(f) => Err(PluginError::new(
                    "peer_error",
                    f.describe("listing invoices"),
                )),
                Ok(Value::Array(rows)) => {
                    let mut records = Vec::new();
                    let mut cursor = response.cursor.clone();
                    for row in &rows {
                        records.push(Record::Invoice(invoice_record(row)?));
                        let at = rpc::to_datetime(&row["write_date"]).ok_or_else(|| {
                            PluginError::bad_input("write_date", "an invoice without write_date")
                        })?;
                        cursor = Some(format!(
                            "{}/{}",
                            at.format("%Y-%m-%dT%H:%M:%S%.6f"),
                            row["id"].as_i64().unwrap_or_default()
                        ));
                    }
                    Ok(PollReply {
                        more: rows.len() >= self.settings.page_size as usize,
                        records,
                        cursor,
                    })
                }
                Ok(other) => Err(PluginError::bad_input(
                    "search_read",
                    format!("Tryton's invoice list is not a list: {other}"),
                )),
            },
        }
    }
}

/// The invoice fields a poll reads (dotted names read related records in the same call).
const POLL_FIELDS: &[&str] = &[
    "id",
    "number",
    "reference",
    "write_date",
    "invoice_date",
    "party.name",
    "currency.code",
    "untaxed_amount",
    "tax_amount",
    "total_amount",
    "amount_to_pay",
    "lines_to_pay.maturity_date",
    "lines.description",
    "lines.quantity",
    "lines.unit_price",
    "lines.amount",
    "taxes.base",
    "taxes.amount",
    "taxes.tax.rate",
];

fn parse_cursor(cursor: &str) -> Result<(NaiveDateTime, i64), PluginError> {
    let bad = || {
        PluginError::bad_input(
            "cursor",
            format!("`{cursor}` is not `<write date>/<invoice id>`"),
        )
    };
    let (at, id) = cursor.split_once('/').ok_or_else(bad)?;
    let at = NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S%.f").map_err(|_| bad())?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

/// One `search_read` row as an `invoice@1`.
fn invoice_record(row: &Value) -> Result<InvoiceRecord, PluginError> {
    let id = row["id"].as_i64().unwrap_or_default();
    let at = format!("tryton account.invoice {id}");
    let amount = |field: &str| {
        rpc::to_decimal(&row[field])
            .ok_or_else(|| PluginError::bad_input(format!("{at} {field}"), "not an amount"))
    };
    let issue_date = rpc::to_date(&row["invoice_date"])
        .ok_or_else(|| PluginError::bad_input(format!("{at} invoice_date"), "not a date"))?;
    let due_date = row["lines_to_pay."]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| rpc::to_date(&l["maturity_date"]))
        .max();
    let lines = row["lines."]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some(InvoiceRecordLine {
                description: l["description"].as_str().unwrap_or_default().to_string(),
                quantity: rpc::to_decimal(&l["quantity"])?,
                unit_price: rpc::to_decimal(&l["unit_price"])?,
                net: rpc::to_decimal(&l["amount"])?,
            })
        })
        .collect();
    Ok(InvoiceRecord {
        taxes: tax_groups(row),
        external_id: id.to_string(),
        number: row["number"].as_str().unwrap_or_default().to_string(),
        host_number: row["reference"]
            .as_str()
            .filter(|r| !r.trim().is_empty())
            .map(str::to_string),
        customer: row["party."]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        customer_email: None,
        customer_tax_id: None,
        currency: row["currency."]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        untaxed: amount("untaxed_amount")?,
        tax: amount("tax_amount")?,
        total: amount("total_amount")?,
        amount_due: amount("amount_to_pay")?,
        issue_date,
        due_date,
        lines,
        source_position: Some(at),
    })
}

/// The invoice's tax lines (`account.invoice.tax`) as per-rate groups; none when a line has no percentage rate or
/// the lines do not add up to the invoice's tax (the host then keeps the tax as one amount).
fn tax_groups(row: &Value) -> Vec<InvoiceRecordTax> {
    let groups: Option<Vec<InvoiceRecordTax>> = row["taxes."]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            Some(InvoiceRecordTax {
                rate: (rpc::to_decimal(&t["tax."]["rate"])? * Decimal::ONE_HUNDRED).normalize(),
                base: rpc::to_decimal(&t["base"])?,
                amount: rpc::to_decimal(&t["amount"])?,
            })
        })
        .collect();
    let groups = groups.unwrap_or_default();
    let tax = rpc::to_decimal(&row["tax_amount"]).unwrap_or_default();
    let untaxed = rpc::to_decimal(&row["untaxed_amount"]).unwrap_or_default();
    let (bases, amounts) = groups
        .iter()
        .fold((Decimal::ZERO, Decimal::ZERO), |(b, a), t| {
            (b + t.base, a + t.amount)
        });
    let negative = groups
        .iter()
        .any(|t| t.rate < Decimal::ZERO || t.base < Decimal::ZERO || t.amount < Decimal::ZERO);
    if amounts != tax || bases > untaxed || negative {
        return Vec::new();
    }
    groups
}

impl Plugin for Tryton {
    fn manifest() -> Manifest {
        Manifest {
            name: "tryton".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            roles: vec![Role::Sink, Role::Poll],
            description: "invoices and payments kept in step with a Tryton server (JSON-RPC)"
                .to_owned(),
        }
    }

    fn configure(settings: Value) -> Result<Self, PluginError> {
        Tryton::from_settings(settings_from_json(settings)?)
    }

    fn sink_step(&self, input: SinkInput) -> Result<SinkStep, PluginError> {
        self.step(&input)
    }

    fn poll_start(&self, start: PollStart) -> Result<HttpRequestSpec, PluginError> {
        self.poll_request(start.cursor.as_deref())
    }

    fn poll_response(&self, response: PollResponse) -> Result<PollReply, PluginError> {
        self.poll_reply(response)
    }
}

settled_plugin_api::export_plugin!(Tryton);

#[cfg(test)]
mod tests;
