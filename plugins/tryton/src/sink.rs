//! The sink conversation: each step reads the previous call's answer from the host and returns the next call. The
//! conversation's position (`phase`) and what it learnt travel in the step state; the session and the looked-up ids
//! ([`Setup`]) live in the instance, shared with the poll.

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use settled_plugin_api::chrono::NaiveDate;
use settled_plugin_api::{HttpRequestSpec, HttpResponseSpec, PluginError, SinkInput, SinkStep};

use crate::rpc::{self, Failure, Session};
use crate::{Setup, Tryton};

/// Requests the host lets one conversation make.
const MAX_REQUESTS: u64 = 16;
/// Requests paying one allocation takes at most (find the invoice, find the payment, the wizard's five calls). A
/// first conversation also logs in (two calls) and looks up the payment methods (one), so it pays at least one.
const REQUESTS_PER_PAYMENT: u64 = 7;

/// Logins one conversation may make (a session that expires again at once is not retried forever).
const MAX_LOGINS: u64 = 2;

/// Setup look-ups, in order: phase name, model method, domain and fields.
const SETUP: &[(&str, &str, &str, &str)] = &[
    (
        "setup_accounts",
        "model.account.account.search_read",
        r#"["OR", [["type.receivable", "=", true]], [["type.revenue", "=", true]]]"#,
        r#"["id", "type.receivable", "type.revenue"]"#,
    ),
    (
        "setup_journal",
        "model.account.journal.search_read",
        r#"[["type", "=", "revenue"]]"#,
        r#"["id"]"#,
    ),
    (
        "setup_taxes",
        "model.account.tax.search_read",
        r#"[["type", "=", "percentage"], ["parent", "=", null], ["group", "=", null]]"#,
        r#"["id", "name", "rate"]"#,
    ),
    (
        "setup_currencies",
        "model.currency.currency.search_read",
        r#"[]"#,
        r#"["id", "code"]"#,
    ),
    (
        "setup_methods",
        "model.account.invoice.payment.method.search_read",
        r#"[]"#,
        r#"["id", "name"]"#,
    ),
];

/// How a conversation stops early.
enum Stop {
    Retry(String),
    Failed(String),
}

impl From<Stop> for SinkStep {
    fn from(stop: Stop) -> SinkStep {
        match stop {
            Stop::Retry(reason) => SinkStep::RetryLater {
                after_secs: 0,
                reason,
            },
            Stop::Failed(reason) => SinkStep::Failed { reason },
        }
    }
}

/// The result of a call's answer, or how to stop.
fn answer(response: &HttpResponseSpec, doing: &str) -> Result<Value, Stop> {
    rpc::result(response).map_err(|f| match f {
        f @ (Failure::Http(..) | Failure::Garbled(_))
            if f.transient() || matches!(f, Failure::Garbled(_)) =>
        {
            Stop::Retry(f.describe(doing))
        }
        f => Stop::Failed(f.describe(doing)),
    })
}

/// A boolean field as Tryton answers it (`true`, or `1` on SQLite).
fn truthy(value: &Value) -> bool {
    value.as_bool().unwrap_or(false) || value.as_i64().is_some_and(|n| n != 0)
}

fn rows(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn amount(value: &Value) -> Decimal {
    rpc::to_decimal(value).unwrap_or_default()
}

impl Tryton {
    /// One step of delivering an event.
    pub fn step(&self, input: &SinkInput) -> Result<SinkStep, PluginError> {
        let event = &input.event;
        let data = &event["data"];
        match event["type"].as_str().unwrap_or_default() {
            "invoice.issued" => {
                let born_here = data["external_refs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["system"] == "tryton" && r["origin"] == true);
                if born_here {
                    return Ok(SinkStep::Ignored);
                }
                if data["kind"] == "credit_note" {
                    return Ok(SinkStep::Failed {
                        reason: format!(
                            "Tryton's API cannot credit an invoice for settled: in Tryton, open the customer invoice \
                             whose reference is the invoice credit note {} credits, use Credit, set the amount to {} {} \
                             and post it; then settle this dead letter by hand (it is the record of what was done)",
                            data["number"].as_str().unwrap_or("?"),
                            data["total"].as_str().unwrap_or("?"),
                            data["currency"].as_str().unwrap_or("")
                        ),
                    });
                }
            }
            "payment.recorded" => {
                if payment_allocations(data).is_empty() {
                    return Ok(SinkStep::Ignored);
                }
            }
            "payment.reversed" => {
                let invoices: Vec<String> = data["allocations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["invoice_number"].as_str().map(str::to_string))
                    .collect();
                return Ok(SinkStep::Failed {
                    reason: format!(
                        "Tryton's API cannot undo a payment: in Tryton, for invoice(s) {} open the payment line \
                         described `settled {} ...`, unreconcile it (Unreconcile Lines) and cancel its move, so the \
                         invoice is posted again with {} {} more to pay",
                        if invoices.is_empty() {
                            "?".to_string()
                        } else {
                            invoices.join(", ")
                        },
                        data["payment_id"]
                            .as_str()
                            .or(event["entity_id"].as_str())
                            .unwrap_or("?"),
                        data["amount"].as_str().unwrap_or("?"),
                        data["currency"].as_str().unwrap_or("")
                    ),
                });
            }
            _ => return Ok(SinkStep::Ignored),
        }
        let mut st = input.state.as_object().cloned().unwrap_or_default();
        let phase = st
            .get("phase")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut response = input.response.as_ref();
        // The session first: log in, read the preferences, and again when Tryton says the session expired.
        match (phase.as_str(), response) {
            ("login", Some(r)) => {
                return Ok(match self.logged_in(r) {
                    Ok(auth) => {
                        st.insert("auth".into(), json!(auth));
                        st.insert("phase".into(), json!("prefs"));
                        request_step(st, Tryton::preferences_request(&auth, &self.endpoint))
                    }
                    Err(e) if r.status == 401 => SinkStep::Failed { reason: e },
                    Err(e) => SinkStep::RetryLater {
                        after_secs: 0,
                        reason: e,
                    },
                });
            }
            ("prefs", Some(r)) => {
                let auth = st
                    .get("auth")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if let Err(e) = self.preferences(auth, r) {
                    return Ok(SinkStep::RetryLater {
                        after_secs: 0,
                        reason: e,
                    });
                }
                st.insert("phase".into(), json!("begin"));
                response = None;
            }
            (_, Some(r)) if r.status == 401 => {
                let logins = st.get("logins").and_then(Value::as_u64).unwrap_or(0) + 1;
                if logins > MAX_LOGINS {
                    return Ok(SinkStep::RetryLater {
                        after_secs: 0,
                        reason: "Tryton keeps refusing fresh sessions".into(),
                    });
                }
                tracing::info!("Tryton session expired; logging in again");
                self.expire();
                st.insert("logins".into(), json!(logins));
                st.insert("phase".into(), json!("begin"));
                response = None;
            }
            _ => {}
        }
        let Some(session) = self.session() else {
            st.insert("phase".into(), json!("login"));
            return Ok(request_step(st, self.login_request()));
        };
        let needed: &[usize] = match event["type"].as_str().unwrap_or_default() {
            "invoice.issued" => &[0, 1, 2, 3],
            _ => &[4],
        };
        let setup = match self.setup(&mut st, &session, response, needed) {
            Ok(Ok(setup)) => setup,
            Ok(Err(request)) => return Ok(request_step(st, request)),
            Err(stop) => return Ok(stop.into()),
        };
        // Setup just finished: the last answer was its own.
        if st.remove("setup_done").is_some() {
            response = None;
        }
        let work = Work {
            tryton: self,
            session: &session,
            setup: &setup,
            event,
        };
        let next = match event["type"].as_str().unwrap_or_default() {
            "invoice.issued" => work.invoice(&mut st, response),
            _ => work.payment(&mut st, response),
        };
        Ok(match next {
            Ok(Some(request)) => request_step(st, request),
            Ok(None) => SinkStep::Done,
            Err(stop) => {
                // What was missing may be created in Tryton before the retry: look everything up again.
                self.live().setup = None;
                stop.into()
            }
        })
    }

    /// The instance's setup with what `needed` (indexes into [`SETUP`]) looks up, or the next look-up to make for
    /// it. Each look-up is made once per instance, when a conversation first needs it: an invoice needs the
    /// accounts, journal, taxes and currencies, a payment only the payment methods.
    fn setup(
        &self,
        st: &mut Map<String, Value>,
        session: &Session,
        response: Option<&HttpResponseSpec>,
        needed: &[usize],
    ) -> Result<Result<Setup, HttpRequestSpec>, Stop> {
        let mut setup = self.live().setup.clone().unwrap_or_default();
        let missing: Vec<usize> = needed
            .iter()
            .copied()
            .filter(|i| !setup.looked_up.contains(&SETUP[*i].0))
            .collect();
        if missing.is_empty() {
            return Ok(Ok(setup));
        }
        let phase = st
            .get("phase")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut next = missing.first().copied();
        if let Some(at) = missing.iter().position(|i| SETUP[*i].0 == phase) {
            let i = missing[at];
            let Some(r) = response else {
                return Err(Stop::Retry("setup answer missing".into()));
            };
            let found = answer(r, &format!("looking up ({})", SETUP[i].1))?;
            st.insert(format!("found_{}", SETUP[i].0), found);
            next = missing.get(at + 1).copied();
        }
        if let Some((phase, method, domain, fields)) = next.map(|i| SETUP[i]) {
            st.insert("phase".into(), json!(phase));
            let domain: Value = serde_json::from_str(domain).unwrap_or_default();
            let fields: Value = serde_json::from_str(fields).unwrap_or_default();
            return Ok(Err(self.call(
                session,
                method,
                json!([domain, 0, null, null, fields, session.context]),
            )));
        }
        let found = |phase: &str| rows(st.get(&format!("found_{phase}")).unwrap_or(&Value::Null));
        let wanted = self.settings.payment_method.trim();
        for i in missing {
            let (phase, ..) = SETUP[i];
            let rows = found(phase);
            match phase {
                "setup_accounts" => {
                    setup.receivable = rows
                        .iter()
                        .find(|a| truthy(&a["type."]["receivable"]))
                        .and_then(|a| a["id"].as_i64());
                    setup.revenue = rows
                        .iter()
                        .find(|a| truthy(&a["type."]["revenue"]))
                        .and_then(|a| a["id"].as_i64());
                }
                "setup_journal" => setup.journal = rows.first().and_then(|j| j["id"].as_i64()),
                "setup_taxes" => {
                    setup.taxes = rows
                        .iter()
                        .filter_map(|t| {
                            Some((
                                rpc::to_decimal(&t["rate"])? * Decimal::ONE_HUNDRED,
                                t["id"].as_i64()?,
                                t["name"].as_str().unwrap_or_default().to_string(),
                            ))
                        })
                        .collect();
                }
                "setup_currencies" => {
                    setup.currencies = rows
                        .iter()
                        .filter_map(|c| Some((c["code"].as_str()?.to_string(), c["id"].as_i64()?)))
                        .collect();
                }
                _ => {
                    setup.payment_method = rows
                        .iter()
                        .find(|m| wanted.is_empty() || m["name"].as_str() == Some(wanted))
                        .and_then(|m| m["id"].as_i64());
                }
            }
            setup.looked_up.push(phase);
        }
        st.retain(|k, _| !k.starts_with("found_"));
        st.insert("phase".into(), json!("begin"));
        st.insert("setup_done".into(), json!(true));
        self.live().setup = Some(setup.clone());
        Ok(Ok(setup))
    }
}

/// The allocations of a `payment.recorded` that move money (not credit or write-offs), with a positive amount.
fn payment_allocations(data: &Value) -> Vec<Value> {
    data["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["kind"] == "payment")
        .filter(|a| amount(&a["amount"]) > Decimal::ZERO)
        .cloned()
        .collect()
}

struct Work<'a> {
    tryton: &'a Tryton,
    session: &'a Session,
    setup: &'a Setup,
    event: &'a Value,
}

type Next = Result<Option<HttpRequestSpec>, Stop>;

impl Work<'_> {
    fn call(&self, method: &str, params: Value) -> Option<HttpRequestSpec> {
        Some(self.tryton.call(self.session, method, params))
    }

    fn context(&self) -> &Value {
        &self.session.context
    }

    // ---- invoice.issued ----

    fn invoice(&self, st: &mut Map<String, Value>, response: Option<&HttpResponseSpec>) -> Next {
        let data = &self.event["data"];
        let number = data["number"].as_str().unwrap_or_default().to_string();
        let phase = st
            .get("phase")
            .and_then(Value::as_str)
            .unwrap_or("begin")
            .to_string();
        let Some(r) = response else {
            // Read before write: settled's number is the Tryton invoice's reference.
            set(st, "found");
            return Ok(self.call(
                "model.account.invoice.search_read",
                json!([
                    [["type", "=", "out"], ["reference", "=", number]],
                    0,
                    1,
                    null,
                    ["id", "state"],
                    self.context()
                ]),
            ));
        };
        match phase.as_str() {
            "found" => {
                let found = rows(&answer(r, &format!("looking for invoice {number}"))?);
                if let Some(inv) = found.first() {
                    let id = inv["id"].as_i64().unwrap_or_default();
                    return match inv["state"].as_str().unwrap_or_default() {
                        "posted" | "paid" => Ok(None),
                        "draft" | "validated" => {
                            st.insert("invoice".into(), json!(id));
                            Ok(self.compute_taxes(st, id))
                        }
                        other => Err(Stop::Failed(format!(
                            "Tryton has invoice {number} (id {id}) as {other}: settled will not create it again; \
                             post or recreate it in Tryton by hand"
                        ))),
                    };
                }
                set(st, "party");
                let customer = data["customer"].as_str().unwrap_or_default();
                Ok(self.call(
                    "model.party.party.search_read",
                    json!([
                        [["name", "=", customer]],
                        0,
                        1,
                        null,
                        ["id", "addresses"],
                        self.context()
                    ]),
                ))
            }
            "party" | "party_read" => {
                let customer = data["customer"].as_str().unwrap_or_default();
                let found = rows(&answer(r, &format!("looking up party `{customer}`"))?);
                match found.first() {
                    Some(party) => {
                        let Some(address) = party["addresses"]
                            .as_array()
                            .and_then(|a| a.first())
                            .and_then(Value::as_i64)
                        else {
                            return Err(Stop::Failed(format!(
                                "party `{customer}` in Tryton has no address, which an invoice needs: add one in \
                                 Tryton (Party > Parties), then `settled outbox retry` this event"
                            )));
                        };
                        let party = party["id"].as_i64().unwrap_or_default();
                        set(st, "created");
                        self.create_invoice(party, address)
                    }
                    None if phase == "party" && self.tryton.settings.create_parties => {
                        set(st, "party_created");
                        Ok(self.call(
                            "model.party.party.create",
                            json!([[{"name": customer, "addresses": [["create", [{}]]]}], self.context()]),
                        ))
                    }
                    None => Err(Stop::Failed(format!(
                        "party `{customer}` is missing in Tryton (and `create_parties` is off): create it in Tryton \
                         (Party > Parties) with an address, then `settled outbox retry` this event"
                    ))),
                }
            }
            "party_created" => {
                let customer = data["customer"].as_str().unwrap_or_default();
                let ids = answer(r, &format!("creating party `{customer}`"))?;
                set(st, "party_read");
                Ok(self.call(
                    "model.party.party.read",
                    json!([ids, ["id", "addresses"], self.context()]),
                ))
            }
            "created" => {
                let ids = answer(r, &format!("creating invoice {number}"))?;
                let id = ids.get(0).and_then(Value::as_i64).unwrap_or_default();
                st.insert("invoice".into(), json!(id));
                Ok(self.compute_taxes(st, id))
            }
            "taxed" => {
                answer(r, &format!("computing the taxes of invoice {number}"))?;
                let id = st
                    .get("invoice")
                    .and_then(Value::as_i64)
                    .unwrap_or_default();
                set(st, "check");
                Ok(self.call(
                    "model.account.invoice.read",
                    json!([[id], ["total_amount"], self.context()]),
                ))
            }
            "check" => {
                let read = rows(&answer(r, &format!("reading invoice {number}"))?);
                let theirs = read.first().map(|i| amount(&i["total_amount"]));
                let ours = amount(&data["total"]);
                let id = st
                    .get("invoice")
                    .and_then(Value::as_i64)
                    .unwrap_or_default();
                if theirs != Some(ours) {
                    return Err(Stop::Failed(format!(
                        "Tryton computes a total of {} for invoice {number} (draft id {id}) where settled has {ours}: \
                         check the taxes in Tryton (their rates and rounding), fix or delete the draft, then \
                         `settled outbox retry` this event",
                        theirs.map_or("nothing".to_string(), |t| t.to_string())
                    )));
                }
                st.insert("phase".into(), json!("posted"));
                Ok(self.call("model.account.invoice.post", json!([[id], self.context()])))
            }
            "posted" => {
                answer(r, &format!("posting invoice {number}"))?;
                Ok(None)
            }
            other => Err(Stop::Failed(format!("unknown step `{other}`"))),
        }
    }

    /// Tryton computes a draft's taxes when it is written (not when it is created): write its description again.
    fn compute_taxes(&self, st: &mut Map<String, Value>, id: i64) -> Option<HttpRequestSpec> {
        set(st, "taxed");
        let description = format!(
            "settled {}",
            self.event["entity_id"].as_str().unwrap_or_default()
        );
        self.call(
            "model.account.invoice.write",
            json!([[id], {"description": description}, self.context()]),
        )
    }

    fn create_invoice(&self, party: i64, address: i64) -> Next {
        let data = &self.event["data"];
        let number = data["number"].as_str().unwrap_or_default();
        let currency_code = data["currency"].as_str().unwrap_or_default();
        let setup = self.setup;
        let missing = |what: &str, where_: &str| {
            Stop::Failed(format!(
                "Tryton has no {what}, which invoice {number} needs: create it in Tryton ({where_}), then \
                 `settled outbox retry` this event"
            ))
        };
        let receivable = setup
            .receivable
            .ok_or_else(|| missing("receivable account", "Financial > Accounts"))?;
        let revenue = setup
            .revenue
            .ok_or_else(|| missing("revenue account", "Financial > Accounts"))?;
        let journal = setup
            .journal
            .ok_or_else(|| missing("revenue journal", "Financial > Journals"))?;
        let currency = setup
            .currencies
            .iter()
            .find(|(code, _)| code == currency_code)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                missing(
                    &format!("currency {currency_code}"),
                    "Currency > Currencies",
                )
            })?;
        // One Tryton line per settled line (its net as the price, quantity 1, so the amounts agree to the cent);
        // with a document discount, one line per VAT rate holding that rate's discounted base.
        let discounted = amount(&data["document_discount"]) != Decimal::ZERO;
        let parts: Vec<(String, Decimal, Decimal)> = if discounted {
            data["taxes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let rate = amount(&t["rate"]);
                    (
                        format!("invoice {number}, VAT {rate}% (after discount)"),
                        amount(&t["base"]),
                        rate,
                    )
                })
                .collect()
        } else {
            data["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    (
                        format!(
                            "{} ({} x {})",
                            l["description"].as_str().unwrap_or_default(),
                            l["quantity"].as_str().unwrap_or("1"),
                            l["unit_price"].as_str().unwrap_or("?")
                        ),
                        amount(&l["net"]),
                        amount(&l["tax_rate"]),
                    )
                })
                .collect()
        };
        let mut lines = Vec::new();
        for (description, net, rate) in parts {
            let taxes = if rate == Decimal::ZERO {
                json!([])
            } else {
                let tax = setup
                    .taxes
                    .iter()
                    .find(|(r, ..)| r.normalize() == rate.normalize())
                    .map(|(_, id, _)| *id)
                    .ok_or_else(|| {
                        missing(
                            &format!("customer tax of {}%", rate.normalize()),
                            "Financial > Taxes, a percentage tax",
                        )
                    })?;
                json!([["add", [tax]]])
            };
            lines.push(
                json!({"type": "line", "description": description, "quantity": 1.0,
                "unit_price": rpc::decimal(net), "account": revenue, "taxes": taxes}),
            );
        }
        let issue_date = data["issue_date"]
            .as_str()
            .and_then(|d| d.parse::<NaiveDate>().ok());
        let mut invoice = json!({"type": "out", "party": party, "invoice_address": address,
            "journal": journal, "account": receivable, "currency": currency,
            "reference": number, "description": format!("settled {}", self.event["entity_id"].as_str().unwrap_or("")),
            "lines": [["create", lines]]});
        if let Some(day) = issue_date {
            invoice["invoice_date"] = rpc::date(day);
        }
        Ok(self.call(
            "model.account.invoice.create",
            json!([[invoice], self.context()]),
        ))
    }

    // ---- payment.recorded ----

    fn payment(&self, st: &mut Map<String, Value>, response: Option<&HttpResponseSpec>) -> Next {
        let data = &self.event["data"];
        let allocations = payment_allocations(data);
        let payment_id = self.event["entity_id"].as_str().unwrap_or_default();
        {
            let i = st.get("i").and_then(Value::as_u64).unwrap_or(0) as usize;
            let Some(alloc) = allocations.get(i) else {
                return Ok(None);
            };
            let phase = st
                .get("phase")
                .and_then(Value::as_str)
                .unwrap_or("begin")
                .to_string();
            let number = alloc["invoice_number"].as_str().unwrap_or_default();
            let key = format!(
                "settled {payment_id} {}",
                alloc["id"].as_str().unwrap_or_default()
            );
            let Some(r) = response.filter(|_| phase != "begin") else {
                let used = st.get("requests").and_then(Value::as_u64).unwrap_or(0);
                if i > 0 && used + REQUESTS_PER_PAYMENT > MAX_REQUESTS {
                    return Err(Stop::Retry(format!(
                        "allocation {} of {} continues in the next attempt (one conversation carries at most {MAX_REQUESTS} requests)",
                        i + 1,
                        allocations.len()
                    )));
                }
                st.insert("phase".into(), json!("invoice"));
                let fields = json!(["id", "state", "amount_to_pay", "number"]);
                let known = alloc["invoice_external_refs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["system"] == "tryton")
                    .and_then(|r| r["id"].as_str()?.parse::<i64>().ok());
                return Ok(match known {
                    Some(id) => self.call(
                        "model.account.invoice.search_read",
                        json!([[["id", "=", id]], 0, 1, null, fields, self.context()]),
                    ),
                    None => self.call(
                        "model.account.invoice.search_read",
                        json!([
                            [["type", "=", "out"], ["reference", "=", number]],
                            0,
                            1,
                            null,
                            fields,
                            self.context()
                        ]),
                    ),
                });
            };
            match phase.as_str() {
                "invoice" => {
                    let found = rows(&answer(r, &format!("looking for invoice {number}"))?);
                    let Some(inv) = found.first() else {
                        return Err(Stop::Retry(format!(
                            "invoice {number} is not in Tryton yet (its invoice.issued is not delivered)"
                        )));
                    };
                    let due = amount(&inv["amount_to_pay"]);
                    if inv["state"] == "paid" || due <= Decimal::ZERO {
                        tracing::info!(invoice = number, "already paid in Tryton; not paid again");
                        advance(st, i);
                        return self.payment_next(st);
                    }
                    if inv["state"] != "posted" {
                        return Err(Stop::Retry(format!(
                            "invoice {number} is {} in Tryton, not posted yet",
                            inv["state"].as_str().unwrap_or("?")
                        )));
                    }
                    st.insert("invoice".into(), inv["id"].clone());
                    st.insert("due".into(), json!(due.to_string()));
                    st.insert("phase".into(), json!("paid_before"));
                    Ok(self.call(
                        "model.account.move.line.search_read",
                        json!([
                            [["description", "=", key]],
                            0,
                            1,
                            null,
                            ["id"],
                            self.context()
                        ]),
                    ))
                }
                "paid_before" => {
                    let found = rows(&answer(r, &format!("looking for the payment of {number}"))?);
                    if !found.is_empty() {
                        advance(st, i);
                        return self.payment_next(st);
                    }
                    st.insert("phase".into(), json!("wizard"));
                    Ok(self.call("wizard.account.invoice.pay.create", json!([self.context()])))
                }
                "wizard" => {
                    let created = answer(r, "opening the pay wizard")?;
                    st.insert("wizard".into(), created.get(0).cloned().unwrap_or_default());
                    st.insert("phase".into(), json!("start"));
                    Ok(self.wizard(st, json!({}), "start"))
                }
                "start" => {
                    let shown = answer(r, &format!("starting to pay {number}"))?;
                    let mut form = defaults(&shown);
                    let due = st.get("due").map(amount).unwrap_or_default();
                    let pay = amount(&alloc["amount"]).min(due);
                    let method = self.setup.payment_method.ok_or_else(|| {
                        Stop::Failed(
                            "Tryton has no invoice payment method: create one (Financial > Configuration > \
                             Invoice Payment Methods), then `settled outbox retry` this event"
                                .into(),
                        )
                    })?;
                    form.insert("amount".into(), rpc::decimal(pay));
                    form.insert("payment_method".into(), json!(method));
                    form.insert("description".into(), json!(key));
                    if let Some(day) = data["received_on"]
                        .as_str()
                        .and_then(|d| d.parse::<NaiveDate>().ok())
                    {
                        form.insert("date".into(), rpc::date(day));
                    }
                    st.insert("form".into(), Value::Object(form.clone()));
                    st.insert("phase".into(), json!("choice"));
                    Ok(self.wizard(st, json!({"start": form}), "choice"))
                }
                "choice" => {
                    let shown = answer(r, &format!("paying {number}"))?;
                    if shown.get("view").is_some_and(|v| !v.is_null()) {
                        // Less than what is due: Tryton asks how; a partial payment leaves the rest to pay.
                        let mut ask = defaults(&shown);
                        ask.insert("type".into(), json!("partial"));
                        let form = st.get("form").cloned().unwrap_or_default();
                        st.insert("phase".into(), json!("pay"));
                        return Ok(self.wizard(st, json!({"start": form, "ask": ask}), "pay"));
                    }
                    st.insert("phase".into(), json!("close"));
                    Ok(self.close_wizard(st))
                }
                "pay" => {
                    answer(r, &format!("paying {number} in part"))?;
                    st.insert("phase".into(), json!("close"));
                    Ok(self.close_wizard(st))
                }
                "close" => {
                    // The payment is in; a wizard that could not be closed only leaves a session row behind.
                    if let Err(Stop::Retry(e) | Stop::Failed(e)) =
                        answer(r, "closing the pay wizard")
                    {
                        tracing::warn!(error = %e, "pay wizard not closed");
                    }
                    advance(st, i);
                    self.payment_next(st)
                }
                other => Err(Stop::Failed(format!("unknown step `{other}`"))),
            }
        }
    }

    /// The first call for the next allocation (or done).
    fn payment_next(&self, st: &mut Map<String, Value>) -> Next {
        self.payment(st, None)
    }

    fn wizard(&self, st: &Map<String, Value>, data: Value, state: &str) -> Option<HttpRequestSpec> {
        let invoice = st.get("invoice").cloned().unwrap_or_default();
        let context = rpc::with(
            self.context(),
            json!({"active_id": invoice, "active_ids": [invoice], "active_model": "account.invoice"}),
        );
        self.call(
            "wizard.account.invoice.pay.execute",
            json!([
                st.get("wizard").cloned().unwrap_or_default(),
                data,
                state,
                context
            ]),
        )
    }

    fn close_wizard(&self, st: &Map<String, Value>) -> Option<HttpRequestSpec> {
        self.call(
            "wizard.account.invoice.pay.delete",
            json!([
                st.get("wizard").cloned().unwrap_or_default(),
                self.context()
            ]),
        )
    }
}

/// A request to make, counting it in the state.
fn request_step(mut st: Map<String, Value>, request: HttpRequestSpec) -> SinkStep {
    let used = st.get("requests").and_then(Value::as_u64).unwrap_or(0);
    st.insert("requests".into(), json!(used + 1));
    SinkStep::Request {
        request,
        state: Value::Object(st),
    }
}

fn set(st: &mut Map<String, Value>, phase: &str) {
    st.insert("phase".into(), json!(phase));
}

/// Move on to the next allocation.
fn advance(st: &mut Map<String, Value>, i: usize) {
    st.insert("i".into(), json!(i + 1));
    st.insert("phase".into(), json!("begin"));
    for key in ["invoice", "due", "wizard", "form"] {
        st.remove(key);
    }
}

/// A wizard view's default values, without the `field.` entries (record names) Tryton adds for display.
fn defaults(shown: &Value) -> Map<String, Value> {
    shown["view"]["defaults"]
        .as_object()
        .map(|d| {
            d.iter()
                .filter(|(k, _)| !k.contains('.'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}
