//! Turning the daemon's JSON into text for people: tables for lists, key/value blocks for single resources,
//! and summaries for imports, plugins and status.
//!
//! Fields are looked up by name with fallbacks (`total` or `totals.total`), and a missing field prints as `-`,
//! so a field the daemon adds or moves degrades one cell instead of failing the command.

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::cli::table::{Align, Table};

/// What a list holds, which decides its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Lead,
    Account,
    Contact,
    Opportunity,
    Quote,
    Order,
    Invoice,
    Payment,
    Event,
    Review,
    Import,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Lead => "leads",
            Kind::Account => "accounts",
            Kind::Contact => "contacts",
            Kind::Opportunity => "opportunities",
            Kind::Quote => "quotes",
            Kind::Order => "orders",
            Kind::Invoice => "invoices",
            Kind::Payment => "payments",
            Kind::Event => "events",
            Kind::Review => "payments waiting for review",
            Kind::Import => "imports",
        }
    }
}

/// How one column gets its cell from a resource.
enum Cell {
    /// The first of these fields that is present.
    Text(&'static [&'static str]),
    /// An amount field followed by the resource's currency.
    Money(&'static [&'static str], &'static [&'static str]),
    /// Anything else.
    With(fn(&Value) -> String),
}

struct Column {
    header: &'static str,
    align: Align,
    cell: Cell,
}

const fn text(header: &'static str, fields: &'static [&'static str]) -> Column {
    Column {
        header,
        align: Align::Left,
        cell: Cell::Text(fields),
    }
}

const fn number(header: &'static str, fields: &'static [&'static str]) -> Column {
    Column {
        header,
        align: Align::Right,
        cell: Cell::Text(fields),
    }
}

const fn money(header: &'static str, amount: &'static [&'static str]) -> Column {
    Column {
        header,
        align: Align::Right,
        cell: Cell::Money(amount, &["currency"]),
    }
}

const TOTAL: &[&str] = &["total", "totals.total"];

fn columns(kind: Kind) -> Vec<Column> {
    match kind {
        Kind::Lead => vec![
            text("ID", &["id"]),
            text("NAME", &["name"]),
            text("EMAIL", &["email"]),
            text("COMPANY", &["company"]),
            text("SOURCE", &["source"]),
            text("STATUS", &["status"]),
            number("SCORE", &["score"]),
            text("ASSIGNED", &["assigned_to"]),
        ],
        Kind::Account => vec![
            text("ID", &["id"]),
            text("NAME", &["name"]),
            text("DOMAIN", &["domain"]),
            Column {
                header: "CREDIT BALANCE",
                align: Align::Right,
                cell: Cell::With(credit_balance),
            },
        ],
        Kind::Contact => vec![
            text("ID", &["id"]),
            text("NAME", &["name"]),
            text("EMAIL", &["email"]),
            text("PHONE", &["phone"]),
            text("ACCOUNT", &["account_id"]),
        ],
        Kind::Opportunity => vec![
            text("ID", &["id"]),
            text("NAME", &["name"]),
            text("ACCOUNT", &["account_id"]),
            text("STAGE", &["stage"]),
            Column {
                header: "PROB",
                align: Align::Right,
                cell: Cell::With(probability),
            },
            text("CLOSE", &["expected_close"]),
            money("VALUE", &["value"]),
        ],
        Kind::Quote => vec![
            text("ID", &["id"]),
            text("NUMBER", &["number"]),
            number("REV", &["revision"]),
            text("STATUS", &["status"]),
            text("OPPORTUNITY", &["opportunity_id"]),
            text("VALID UNTIL", &["valid_until"]),
            money("TOTAL", TOTAL),
        ],
        Kind::Order => vec![
            text("ID", &["id"]),
            text("NUMBER", &["number"]),
            text("QUOTE", &["quote_id"]),
            text("DATE", &["order_date"]),
            text("PROVISIONING", &["provisioning", "provisioning_status"]),
            money("TOTAL", TOTAL),
        ],
        Kind::Invoice => vec![
            text("ID", &["id"]),
            Column {
                header: "NUMBER",
                align: Align::Left,
                cell: Cell::With(invoice_number),
            },
            text("ACCOUNT", &["account_name", "account_id"]),
            text("STATUS", &["payment_status", "state"]),
            text("ISSUED", &["issue_date"]),
            text("DUE", &["due_date"]),
            money("TOTAL", TOTAL),
            money("PAID", &["amount_paid"]),
            money("BALANCE", &["balance"]),
        ],
        Kind::Payment => vec![
            text("ID", &["id"]),
            text("RECEIVED", &["received_on"]),
            text("PAYER", &["payer"]),
            text("REFERENCE", &["reference"]),
            text("STATE", &["state", "status"]),
            money("AMOUNT", &["amount"]),
            money("UNALLOCATED", &["unallocated"]),
        ],
        Kind::Event => vec![
            number("ID", &["id"]),
            text("AT", &["at"]),
            text("TYPE", &["type", "kind"]),
            text("ACTOR", &["actor"]),
            Column {
                header: "ENTITY",
                align: Align::Left,
                cell: Cell::With(event_entity),
            },
            Column {
                header: "CHANGE",
                align: Align::Left,
                cell: Cell::With(event_change),
            },
        ],
        Kind::Review => vec![
            text("ID", &["id"]),
            text("STATUS", &["status"]),
            text("DATE", &["record.booked_on", "record.value_date"]),
            text(
                "COUNTERPARTY",
                &["record.counterparty_name", "record.counterparty_account"],
            ),
            text("REASON", &["reason"]),
            Column {
                header: "AMOUNT",
                align: Align::Right,
                cell: Cell::With(review_amount),
            },
            Column {
                header: "BEST SUGGESTION",
                align: Align::Left,
                cell: Cell::With(best_suggestion),
            },
        ],
        Kind::Import => vec![
            text("ID", &["id"]),
            text("STATUS", &["status"]),
            text("FILE", &["file"]),
            text("CONNECTOR", &["connector"]),
            number("RECORDS", &["counts.records_read"]),
            number("NEW", &["counts.new"]),
            number("DUPLICATES", &["counts.duplicates"]),
            number("REVIEW", &["counts.review"]),
            number("REFUSED", &["counts.failed"]),
            number("RESUMED", &["resumed"]),
            text("STARTED", &["created_at"]),
            text("ERROR", &["error"]),
        ],
    }
}

/// The items of a list answer: `{"items": [...]}`, or a bare array.
pub(super) fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        Value::Object(obj) => match obj.get("items") {
            Some(Value::Array(items)) => items,
            _ => &[],
        },
        _ => &[],
    }
}

/// A list answer as a table with the columns for `kind`, fitted to `width` when given.
pub(super) fn list(kind: Kind, value: &Value, width: Option<usize>) -> String {
    let rows = items(value);
    if rows.is_empty() {
        return format!("no {}\n", kind.plural());
    }
    table(&columns(kind), rows, true, width)
}

/// Events as table rows, with the header only when asked (following prints it once).
pub(super) fn event_rows(events: &[Value], header: bool, width: Option<usize>) -> String {
    table(&columns(Kind::Event), events, header, width)
}

fn table(columns: &[Column], rows: &[Value], header: bool, width: Option<usize>) -> String {
    let spec: Vec<(&str, Align)> = columns.iter().map(|c| (c.header, c.align)).collect();
    let mut table = Table::new(&spec);
    for row in rows {
        table.push(columns.iter().map(|c| cell(&c.cell, row)).collect());
    }
    let rendered = table.render(width);
    if header {
        rendered
    } else {
        rendered
            .split_once('\n')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default()
    }
}

fn cell(cell: &Cell, row: &Value) -> String {
    match cell {
        Cell::Text(fields) => first(row, fields).map(scalar).unwrap_or_else(|| "-".into()),
        Cell::Money(amount, currency) => money_cell(row, amount, currency),
        Cell::With(f) => f(row),
    }
}

fn money_cell(row: &Value, amount: &[&str], currency: &[&str]) -> String {
    match first(row, amount) {
        Some(a) => join_money(&scalar(a), first(row, currency).map(scalar).as_deref()),
        None => "-".into(),
    }
}

fn join_money(amount: &str, currency: Option<&str>) -> String {
    match currency {
        Some(c) if !c.is_empty() && c != "-" => format!("{amount} {c}"),
        _ => amount.to_string(),
    }
}

fn credit_balance(row: &Value) -> String {
    match get(row, "credit_balance") {
        Some(Value::Object(balances)) => {
            let parts: Vec<String> = balances
                .iter()
                .filter(|(_, amount)| !is_zero(amount))
                .map(|(currency, amount)| format!("{} {currency}", scalar(amount)))
                .collect();
            if parts.is_empty() {
                "0".into()
            } else {
                parts.join(", ")
            }
        }
        Some(other) => scalar(other),
        None => "-".into(),
    }
}

fn is_zero(amount: &Value) -> bool {
    scalar(amount).parse::<Decimal>().is_ok_and(|d| d.is_zero())
}

fn probability(row: &Value) -> String {
    match get(row, "probability") {
        Some(p) => format!("{}%", scalar(p)),
        None => "-".into(),
    }
}

fn invoice_number(row: &Value) -> String {
    match get(row, "number") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => "(draft)".into(),
    }
}

fn review_amount(row: &Value) -> String {
    money_cell(row, &["record.amount"], &["record.currency"])
}

/// `invoice inv_01`: the kind of entity and its id.
fn event_entity(row: &Value) -> String {
    let entity = text_or_dash(row, "entity");
    match get(row, "entity_id") {
        Some(id) => format!("{entity} {}", scalar(id)),
        None => entity,
    }
}

/// The event's data as compact JSON; tables cut it to the terminal's width.
fn event_change(row: &Value) -> String {
    match get(row, "data") {
        Some(Value::Object(obj)) if obj.is_empty() => "-".into(),
        Some(data) => scalar(data),
        None => "-".into(),
    }
}

fn best_suggestion(row: &Value) -> String {
    let Some(Value::Array(suggestions)) = get(row, "suggestions") else {
        return "-".into();
    };
    let Some(best) = suggestions.first() else {
        return "none".into();
    };
    let name = first(best, &["number", "invoice_id"])
        .map(scalar)
        .unwrap_or_else(|| "?".into());
    match get(best, "score") {
        Some(score) => format!("{name} (score {})", scalar(score)),
        None => name,
    }
}

/// A single resource as aligned `key  value` lines, nested objects as dotted keys, and lists of objects
/// (lines, taxes, allocations, suggestions, ...) as tables after it.
pub(super) fn detail(value: &Value, width: Option<usize>) -> String {
    let Value::Object(obj) = value else {
        return format!("{}\n", scalar(value));
    };
    let mut pairs = Vec::new();
    let mut sections = Vec::new();
    flatten(obj, "", &mut pairs, &mut sections);
    let key_width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in &pairs {
        let pad = key_width.saturating_sub(key.chars().count());
        out.push_str(&format!("{key}{}  {value}\n", " ".repeat(pad)));
    }
    for (key, rows) in sections {
        out.push_str(&format!("\n{key}:\n"));
        out.push_str(&sub_table(rows, width));
    }
    out
}

/// Identifying fields come first in detail views.
const FIRST_KEYS: &[&str] = &[
    "id",
    "line_no",
    "number",
    "kind",
    "name",
    "description",
    "status",
    "state",
    "payment_status",
    "stage",
    "currency",
    "total",
    "amount",
    "amount_paid",
    "balance",
    "issue_date",
    "due_date",
];

fn key_rank(key: &str) -> usize {
    FIRST_KEYS
        .iter()
        .position(|k| *k == key)
        .unwrap_or(FIRST_KEYS.len())
}

/// The entries of `obj` with [`FIRST_KEYS`] first, then by name, whatever order the JSON map keeps.
fn ordered(obj: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = obj.iter().collect();
    entries.sort_by(|(a, _), (b, _)| key_rank(a).cmp(&key_rank(b)).then_with(|| a.cmp(b)));
    entries
}

fn flatten<'a>(
    obj: &'a Map<String, Value>,
    prefix: &str,
    pairs: &mut Vec<(String, String)>,
    sections: &mut Vec<(String, &'a [Value])>,
) {
    for (key, value) in ordered(obj) {
        let key = format!("{prefix}{key}");
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                flatten(inner, &format!("{key}."), pairs, sections)
            }
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                sections.push((key, items));
            }
            other => pairs.push((key, scalar(other))),
        }
    }
}

/// Rows of objects as a table whose columns are every key seen, numbers right-aligned.
fn sub_table(rows: &[Value], width: Option<usize>) -> String {
    let mut keys: Vec<String> = Vec::new();
    let flat: Vec<Vec<(String, String)>> = rows
        .iter()
        .map(|row| {
            let mut pairs = Vec::new();
            if let Value::Object(obj) = row {
                flatten_row(obj, "", &mut pairs);
            }
            for (k, _) in &pairs {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
            pairs
        })
        .collect();
    let cells: Vec<Vec<String>> = flat
        .iter()
        .map(|pairs| {
            keys.iter()
                .map(|k| {
                    pairs
                        .iter()
                        .find(|(pk, _)| pk == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();
    let headers: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
    let spec: Vec<(&str, Align)> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let numeric = cells
                .iter()
                .all(|row| row[i].is_empty() || row[i].parse::<Decimal>().is_ok());
            (h.as_str(), if numeric { Align::Right } else { Align::Left })
        })
        .collect();
    let mut table = Table::new(&spec);
    for row in cells {
        table.push(row);
    }
    indent(&table.render(width.map(|w| w.saturating_sub(2))))
}

fn flatten_row(obj: &Map<String, Value>, prefix: &str, pairs: &mut Vec<(String, String)>) {
    for (key, value) in ordered(obj) {
        let key = format!("{prefix}{key}");
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                flatten_row(inner, &format!("{key}."), pairs)
            }
            // An empty cell says "not set" in a table; a column of dashes would only add noise.
            Value::Null => {}
            other => pairs.push((key, scalar(other))),
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// A captured lead, saying so when the capture was merged into an existing lead.
pub(super) fn lead_capture(value: &Value, width: Option<usize>) -> String {
    let merged = get(value, "deduplicated")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let body = detail(value, width);
    if merged {
        let id = get(value, "id").map(scalar).unwrap_or_else(|| "-".into());
        format!("merged into existing lead {id}\n{body}")
    } else {
        body
    }
}

/// `GET /v1/plugins` as one row per plugin instance, then why plugin files were refused.
/// `settled outbox`: one row per sink, then each retrying event and dead letter with its last error.
pub(super) fn outbox(value: &Value, width: Option<usize>) -> String {
    let sinks: &[Value] = match get(value, "items") {
        Some(Value::Array(list)) => list,
        _ => &[],
    };
    if sinks.is_empty() {
        return "no sink connectors (add a [[connector]] with a sink plugin such as `webhook`)\n"
            .into();
    }
    let mut table = Table::new(&[
        ("SINK", Align::Left),
        ("PLUGIN", Align::Left),
        ("STATE", Align::Left),
        ("PENDING", Align::Right),
        ("LAG", Align::Right),
        ("RETRYING", Align::Right),
        ("DEAD", Align::Right),
        ("DELIVERED", Align::Right),
        ("LAST ERROR", Align::Left),
    ]);
    let count = |sink: &Value, key: &str| match get(sink, key) {
        Some(Value::Array(list)) => list.len().to_string(),
        _ => "0".into(),
    };
    let mut details = String::new();
    for sink in sinks {
        let name = text_or_dash(sink, "name");
        table.push(vec![
            name.clone(),
            text_or_dash(sink, "plugin"),
            text_or_dash(sink, "state"),
            text_or_dash(sink, "pending"),
            format!("{}s", text_or_dash(sink, "lag_seconds")),
            count(sink, "retrying"),
            count(sink, "dead_letters"),
            text_or_dash(sink, "delivered_total"),
            text_or_dash(sink, "last_error"),
        ]);
        for retry in get(sink, "retrying")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            details.push_str(&format!(
                "{name}: event {} ({}) retrying, {} attempts, next at {}: {}\n",
                text_or_dash(retry, "event_id"),
                text_or_dash(retry, "type"),
                text_or_dash(retry, "attempts"),
                text_or_dash(retry, "next_attempt_at"),
                text_or_dash(retry, "last_error"),
            ));
        }
        for dead in get(sink, "dead_letters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let attempts = get(dead, "attempts").and_then(Value::as_array);
            let last = attempts.and_then(|a| a.last());
            details.push_str(&format!(
                "{name}: event {} ({}) dead after {} attempts: {}; `settled outbox retry {name} {}` sends it again\n",
                text_or_dash(dead, "event_id"),
                text_or_dash(dead, "type"),
                attempts.map_or(0, Vec::len),
                last.map_or_else(|| "-".into(), |a| text_or_dash(a, "error")),
                text_or_dash(dead, "event_id"),
            ));
        }
    }
    let mut out = table.render(width);
    if !details.is_empty() {
        out.push('\n');
        out.push_str(&details);
    }
    out
}

pub(super) fn plugins(value: &Value, width: Option<usize>) -> String {
    let plugins = plugin_list(value);
    let mut table = Table::new(&[
        ("PLUGIN", Align::Left),
        ("VERSION", Align::Left),
        ("ABI", Align::Left),
        ("INSTANCE", Align::Left),
        ("ISOLATION", Align::Left),
        ("STATE", Align::Left),
        ("CALLS", Align::Right),
        ("ERRORS", Align::Right),
        ("REFUSED", Align::Right),
        ("P50/P99", Align::Right),
    ]);
    let mut refusals = String::new();
    let mut sandboxes = String::new();
    let mut sandbox_kinds = std::collections::BTreeSet::new();
    let mut sandbox_incomplete = false;
    for plugin in plugins {
        let name = plugin_name(plugin);
        if let Some(Value::String(sandbox)) = get(plugin, "sandbox") {
            sandbox_incomplete |= !sandbox.starts_with("enforced");
            sandbox_kinds.insert(sandbox.clone());
            sandboxes.push_str(&format!("{name}: {sandbox}\n"));
        }
        let version = text_or_dash(plugin, "version");
        let abi = text_or_dash(plugin, "abi");
        let load_errors: Vec<String> = match get(plugin, "load_errors") {
            Some(Value::Array(errors)) => errors.iter().map(scalar).collect(),
            _ => Vec::new(),
        };
        for error in &load_errors {
            refusals.push_str(&format!("{name}: {error}\n"));
        }
        let instances: &[Value] = match get(plugin, "instances") {
            Some(Value::Array(list)) => list,
            _ => &[],
        };
        if instances.is_empty() {
            let state = match (get(plugin, "version"), load_errors.is_empty()) {
                (None, false) => "failed to load".to_string(),
                _ => "no instances".to_string(),
            };
            let dash = || "-".to_string();
            table.push(vec![
                name,
                version,
                abi,
                dash(),
                dash(),
                state,
                dash(),
                dash(),
                dash(),
                dash(),
            ]);
            continue;
        }
        for inst in instances {
            let state = text_or_dash(inst, "state");
            let state = match get(inst, "reason") {
                Some(reason) if state != "running" => format!("{state}: {}", scalar(reason)),
                _ => state,
            };
            let latency = format!(
                "{}/{}",
                micros(get(inst, "p50_us")),
                micros(get(inst, "p99_us"))
            );
            table.push(vec![
                name.clone(),
                version.clone(),
                abi.clone(),
                text_or_dash(inst, "name"),
                text_or_dash(inst, "isolation"),
                state,
                text_or_dash(inst, "calls"),
                text_or_dash(inst, "errors"),
                text_or_dash(inst, "refused"),
                latency,
            ]);
        }
    }
    let mut out = match table.is_empty() {
        true => "no plugins\n".to_string(),
        false => table.render(width),
    };
    if !refusals.is_empty() {
        out.push_str("\nrefused plugin files:\n");
        out.push_str(&indent(&refusals));
    }
    if sandbox_incomplete {
        out.push_str(
            "\nWARNING: the plugin sandbox is not complete on this system; process-isolated plugins can do more \
             than the plugin guide allows ([plugins] require_sandbox = true refuses them):\n",
        );
        out.push_str(&indent(&sandboxes));
    } else if let (Some(only), 1) = (sandbox_kinds.first(), sandbox_kinds.len()) {
        out.push_str(&format!("\nplugin sandbox: {only}\n"));
    } else if !sandboxes.is_empty() {
        out.push_str("\nplugin sandbox:\n");
        out.push_str(&indent(&sandboxes));
    }
    out.push_str(&mailboxes(value));
    out.push_str(&pollers(value));
    out.push_str(&config_reload(value));
    out
}

/// The `config_reload` of a `GET /v1/plugins` answer: the last reload of the config file, what it changed or why it was refused.
fn config_reload(value: &Value) -> String {
    let Some(reload) = get(value, "config_reload").filter(|r| r.is_object()) else {
        return String::new();
    };
    let mut lines = String::new();
    if let Some(Value::String(error)) = get(reload, "error") {
        lines.push_str(&format!("{error}\n"));
    }
    for (key, prefix) in [("changes", ""), ("restart_needed", "restart needed: ")] {
        for item in get(reload, key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            lines.push_str(&format!("{prefix}{}\n", item.as_str().unwrap_or_default()));
        }
    }
    format!(
        "\nconfig reload ({}, {}): {}\n{}",
        text_or_dash(reload, "trigger"),
        text_or_dash(reload, "at"),
        text_or_dash(reload, "outcome"),
        indent(&lines)
    )
}

/// The `pollers` of a `GET /v1/plugins` answer, one line each: state (with the last error), cursor, last poll, counters.
fn pollers(value: &Value) -> String {
    let Some(Value::Array(all)) = get(value, "pollers") else {
        return String::new();
    };
    let mut lines = String::new();
    for p in all {
        let state = match get(p, "last_error") {
            Some(Value::String(e)) => format!("{}: {e}", text_or_dash(p, "state")),
            _ => text_or_dash(p, "state"),
        };
        lines.push_str(&format!(
            "{} every {}s  {}  cursor {}  last poll {}  pages {}, records {}, duplicates {}, failures {}\n",
            text_or_dash(p, "connector"),
            text_or_dash(p, "every_secs"),
            state,
            text_or_dash(p, "cursor"),
            text_or_dash(p, "last_poll_at"),
            text_or_dash(p, "pages"),
            text_or_dash(p, "records"),
            text_or_dash(p, "duplicates"),
            text_or_dash(p, "failures"),
        ));
    }
    if lines.is_empty() {
        return lines;
    }
    format!("\npollers:\n{}", indent(&lines))
}

/// The `mailboxes` of a `GET /v1/plugins` answer, one line each: state (with the last error), folders, counters.
fn mailboxes(value: &Value) -> String {
    let Some(Value::Array(all)) = get(value, "mailboxes") else {
        return String::new();
    };
    let mut lines = String::new();
    for m in all {
        let state = match get(m, "last_error") {
            Some(Value::String(e)) => format!("{}: {e}", text_or_dash(m, "state")),
            _ => text_or_dash(m, "state"),
        };
        let folders: Vec<String> = match get(m, "folders") {
            Some(Value::Object(f)) => f
                .iter()
                .map(|(name, c)| format!("{name} uid {}", text_or_dash(c, "last_uid")))
                .collect(),
            _ => Vec::new(),
        };
        lines.push_str(&format!(
            "{} {} {}  {}{}  seen {}, duplicates {}, not mine {}, failed {}\n",
            text_or_dash(m, "connector"),
            text_or_dash(m, "kind"),
            text_or_dash(m, "target"),
            state,
            if folders.is_empty() {
                String::new()
            } else {
                format!("  [{}]", folders.join(", "))
            },
            text_or_dash(m, "seen"),
            text_or_dash(m, "duplicates"),
            text_or_dash(m, "not_mine"),
            text_or_dash(m, "failed"),
        ));
    }
    if lines.is_empty() {
        return lines;
    }
    format!("\nmailboxes:\n{}", indent(&lines))
}

/// The plugins of a `GET /v1/plugins` answer: `{"items": [...]}` or a bare array.
fn plugin_list(value: &Value) -> &[Value] {
    items(value)
}

/// The manifest name, else the file name, of a plugin status.
fn plugin_name(plugin: &Value) -> String {
    if let Some(name) = get(plugin, "plugin") {
        return scalar(name);
    }
    match get(plugin, "file").and_then(Value::as_str) {
        Some(file) => file.rsplit('/').next().unwrap_or(file).to_string(),
        None => "-".into(),
    }
}

/// Microseconds as people read latency: `850µs`, `12.4ms`, `3.2s`.
fn micros(value: Option<&Value>) -> String {
    let Some(us) = value.and_then(Value::as_u64) else {
        return "-".into();
    };
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{}.{}ms", us / 1_000, us % 1_000 / 100),
        _ => format!("{}.{}s", us / 1_000_000, us % 1_000_000 / 100_000),
    }
}

/// The summary `POST /v1/imports` answers, as a readable block headed by the file.
pub(super) fn import_summary(file: &str, value: &Value) -> String {
    let name = first(value, &["file"])
        .map(scalar)
        .unwrap_or_else(|| file.to_string());
    let mut out = match first(value, &["plugin"]) {
        Some(plugin) => format!("{name} (plugin {})\n", scalar(plugin)),
        None => format!("{name}\n"),
    };
    let count = |key: &str| match get(value, key) {
        Some(v) => scalar(v),
        None => "0".into(),
    };
    let matched = match get(value, "matched") {
        Some(Value::Object(rules)) => {
            let total: u64 = rules.values().filter_map(Value::as_u64).sum();
            let by_rule: Vec<String> = rules
                .iter()
                .map(|(rule, n)| format!("{rule} {}", scalar(n)))
                .collect();
            if by_rule.is_empty() {
                total.to_string()
            } else {
                format!("{total}  ({})", by_rule.join(", "))
            }
        }
        Some(other) => scalar(other),
        None => "0".into(),
    };
    let failures: &[Value] = match get(value, "failed") {
        Some(Value::Array(list)) => list,
        _ => &[],
    };
    let rows = [
        ("records read", count("records_read")),
        ("new", count("new")),
        ("duplicates", count("duplicates")),
        ("matched", matched),
        ("partially matched", count("partially_matched")),
        ("sent to review", count("review")),
        ("ignored", count("ignored")),
        ("reversed", count("reversed")),
        ("failed", failures.len().to_string()),
    ];
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    for (label, value) in rows {
        out.push_str(&format!("  {label:<width$}  {value}\n"));
    }
    for failure in failures {
        let record = get(failure, "record").map(|r| format!("record {}", scalar(r)));
        let location = get(failure, "location").map(scalar);
        let position = match (record, location) {
            (Some(record), Some(location)) => format!("{record} ({location})"),
            (record, location) => record.or(location).unwrap_or_else(|| "-".into()),
        };
        let reason = first(failure, &["reason"])
            .map(scalar)
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!("    {position}: {reason}\n"));
    }
    out
}

/// What `settled status` found: health, then each count or why it could not be had.
pub(super) struct StatusReport<'a> {
    pub url: &'a str,
    pub health: &'a Value,
    /// Open review items.
    pub review: Result<usize, String>,
    /// Overdue invoices.
    pub overdue: Result<usize, String>,
    /// The `GET /v1/plugins` answer.
    pub plugins: Result<Value, String>,
}

impl StatusReport<'_> {
    /// (instances, instances not running)
    fn plugin_counts(&self) -> Result<(usize, usize), String> {
        let value = self.plugins.as_ref().map_err(Clone::clone)?;
        let instances: Vec<&Value> = plugin_list(value)
            .iter()
            .filter_map(|p| match get(p, "instances") {
                Some(Value::Array(list)) => Some(list.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        let down = instances
            .iter()
            .filter(|i| text_or_dash(i, "state") != "running")
            .count();
        Ok((instances.len(), down))
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("settled at {} is up\n", self.url);
        match self.health {
            Value::Object(_) => out.push_str(&indent(&detail(self.health, None))),
            Value::String(s) if !s.is_empty() => out.push_str(&format!("  {s}\n")),
            _ => {}
        }
        let line = |label: &str, result: Result<String, String>| match result {
            Ok(text) => format!("{label:<17} {text}\n"),
            Err(e) => format!("{label:<17} unknown ({e})\n"),
        };
        out.push_str(&line(
            "review queue",
            self.review.clone().map(|n| format!("{n} waiting")),
        ));
        out.push_str(&line(
            "overdue invoices",
            self.overdue.clone().map(|n| n.to_string()),
        ));
        out.push_str(&line(
            "plugin instances",
            self.plugin_counts().map(|(n, down)| match down {
                0 => format!("{n} running"),
                _ => format!("{n} ({down} not running)"),
            }),
        ));
        out
    }

    pub fn to_json(&self) -> Value {
        let count = |r: &Result<usize, String>| r.as_ref().map_or(Value::Null, |n| json!(n));
        let plugins = self.plugin_counts().ok();
        json!({
            "url": self.url,
            "health": self.health,
            "review_waiting": count(&self.review),
            "overdue_invoices": count(&self.overdue),
            "plugin_instances": plugins.map_or(Value::Null, |(n, _)| json!(n)),
            "plugin_instances_not_running": plugins.map_or(Value::Null, |(_, d)| json!(d)),
        })
    }
}

fn text_or_dash(value: &Value, key: &str) -> String {
    get(value, key).map(scalar).unwrap_or_else(|| "-".into())
}

/// A field by dotted path (`totals.total`); `null` counts as missing.
fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = value;
    for part in path.split('.') {
        current = current.get(part)?;
    }
    (!current.is_null()).then_some(current)
}

fn first<'a>(value: &'a Value, paths: &[&str]) -> Option<&'a Value> {
    paths.iter().find_map(|p| get(value, p))
}

/// A value as one cell of text: strings bare, lists joined, objects as compact JSON.
pub(super) fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) if items.iter().all(Value::is_object) => {
            format!("{} items", items.len())
        }
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(", "),
        Value::Object(obj) if obj.is_empty() => "-".into(),
        Value::Object(_) => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(actual: String, expected: &str) {
        assert_eq!(
            actual, expected,
            "\n--- actual ---\n{actual}\n--- expected ---\n{expected}"
        );
    }

    #[test]
    fn invoice_list_shows_money_with_currency_right_aligned_and_drafts_unnumbered() {
        let value = json!({"items": [
            {"id": "inv1", "number": "INV-2026-001", "account_id": "acc1", "payment_status": "overdue",
             "issue_date": "2026-01-10", "due_date": "2026-02-09", "currency": "EUR",
             "totals": {"total": "1440.00"}, "amount_paid": "0.00", "balance": "1440.00"},
            {"id": "inv2", "number": null, "account_id": "acc2", "payment_status": "draft",
             "currency": "EUR", "total": "99.50", "amount_paid": "0.00", "balance": "99.50"}
        ]});
        check(
            list(Kind::Invoice, &value, None),
            "ID    NUMBER        ACCOUNT  STATUS   ISSUED      DUE               TOTAL      PAID      BALANCE\n\
             inv1  INV-2026-001  acc1     overdue  2026-01-10  2026-02-09  1440.00 EUR  0.00 EUR  1440.00 EUR\n\
             inv2  (draft)       acc2     draft    -           -             99.50 EUR  0.00 EUR    99.50 EUR\n",
        );
    }

    #[test]
    fn empty_list_says_so() {
        check(list(Kind::Lead, &json!({"items": []}), None), "no leads\n");
        check(
            list(Kind::Review, &json!([]), None),
            "no payments waiting for review\n",
        );
    }

    #[test]
    fn accounts_show_nonzero_credit_per_currency() {
        let value = json!({"items": [
            {"id": "a1", "name": "Acme", "domain": "acme.test", "credit_balance": {"EUR": "12.50", "USD": "0"}},
            {"id": "a2", "name": "Bob", "credit_balance": {}}
        ]});
        check(
            list(Kind::Account, &value, None),
            "ID  NAME  DOMAIN     CREDIT BALANCE\n\
             a1  Acme  acme.test       12.50 EUR\n\
             a2  Bob   -                       0\n",
        );
    }

    #[test]
    fn review_list_shows_payment_and_best_suggestion() {
        let value = json!({"items": [{
            "id": "r1", "status": "open", "reason": "ambiguous", "payment_id": "p1",
            "record": {"booked_on": "2026-03-02", "amount": "200.00", "currency": "EUR", "counterparty_name": "Acme"},
            "suggestions": [{"invoice_id": "i1", "number": "INV-2026-004", "score": 70}, {"invoice_id": "i2", "score": 69}]
        }]});
        check(
            list(Kind::Review, &value, None),
            "ID  STATUS  DATE        COUNTERPARTY  REASON         AMOUNT  BEST SUGGESTION\n\
             r1  open    2026-03-02  Acme          ambiguous  200.00 EUR  INV-2026-004 (score 70)\n",
        );
    }

    #[test]
    fn events_show_entity_and_change() {
        let value = json!({"items": [
            {"id": 7, "at": "2026-03-01T09:00:00Z", "actor": "api", "type": "invoice.issued", "entity": "invoice",
             "entity_id": "inv_01", "data": {"number": "INV-2026-007"}},
            {"id": 12, "at": "2026-03-02T10:00:00Z", "actor": "scheduler", "type": "quote.expired", "entity": "quote",
             "entity_id": "q_9", "data": {}}
        ], "last_event_id": 12});
        check(
            list(Kind::Event, &value, None),
            "ID  AT                    TYPE            ACTOR      ENTITY          CHANGE\n\
             \x207  2026-03-01T09:00:00Z  invoice.issued  api        invoice inv_01  {\"number\":\"INV-2026-007\"}\n\
             12  2026-03-02T10:00:00Z  quote.expired   scheduler  quote q_9       -\n",
        );
    }

    #[test]
    fn detail_flattens_objects_and_tables_lists_of_objects() {
        let value = json!({
            "id": "q1", "number": "Q-2026-001", "status": "sent", "currency": "EUR",
            "totals": {"subtotal": "100.00", "total": "120.00"},
            "lines": [
                {"line_no": 1, "description": "Day", "quantity": "1", "net": "100.00", "discount": {"percent": "10"}},
                {"line_no": 2, "description": "Travel", "quantity": "2", "net": "0.00", "discount": null}
            ],
            "tags": ["a", "b"], "supersedes": null
        });
        check(
            detail(&value, None),
            "id               q1\n\
             number           Q-2026-001\n\
             status           sent\n\
             currency         EUR\n\
             supersedes       -\n\
             tags             a, b\n\
             totals.total     120.00\n\
             totals.subtotal  100.00\n\
             \n\
             lines:\n\
             \x20 LINE_NO  DESCRIPTION  DISCOUNT.PERCENT     NET  QUANTITY\n\
             \x20       1  Day                        10  100.00         1\n\
             \x20       2  Travel                           0.00         2\n",
        );
    }

    #[test]
    fn detail_of_plain_text_is_the_text() {
        check(detail(&json!("ok"), None), "ok\n");
    }

    #[test]
    fn lead_capture_says_when_it_merged() {
        let merged = lead_capture(&json!({"id": "l1", "deduplicated": true}), None);
        assert!(
            merged.starts_with("merged into existing lead l1\n"),
            "{merged}"
        );
        let fresh = lead_capture(&json!({"id": "l2", "deduplicated": false}), None);
        assert!(!fresh.contains("merged"), "{fresh}");
    }

    #[test]
    fn plugins_table_has_one_row_per_instance_and_lists_load_failures() {
        let value = json!({"items": [
            {"plugin": "camt", "file": "/p/libcamt.so", "version": "0.1.0", "abi": "1.0", "loads": 1, "load_errors": [],
             "instances": [
                {"name": "bank", "isolation": "process", "state": "running", "reason": null,
                 "calls": 12, "errors": 0, "refused": 3, "p50_us": 850, "p99_us": 12400},
                {"name": "bank2", "isolation": "in-process", "state": "quarantined", "reason": "5 failures",
                 "calls": 5, "errors": 5, "refused": 0, "p50_us": null, "p99_us": 3200000}
            ]},
            {"plugin": null, "file": "/p/libbroken.so", "version": null, "abi": null, "loads": 0, "instances": [],
             "load_errors": ["abi major 2, host speaks 1"]}
        ]});
        check(
            plugins(&value, None),
            "PLUGIN        VERSION  ABI  INSTANCE  ISOLATION   STATE                    CALLS  ERRORS  REFUSED       P50/P99\n\
             camt          0.1.0    1.0  bank      process     running                     12       0        3  850µs/12.4ms\n\
             camt          0.1.0    1.0  bank2     in-process  quarantined: 5 failures      5       5        0        -/3.2s\n\
             libbroken.so  -        -    -         -           failed to load               -       -        -             -\n\
             \n\
             refused plugin files:\n\
             \x20 libbroken.so: abi major 2, host speaks 1\n",
        );
        check(plugins(&json!({"items": []}), None), "no plugins\n");
    }

    #[test]
    fn plugins_output_says_loudly_when_the_sandbox_is_incomplete() {
        let plugin = |name: &str, sandbox: &str| {
            json!({"plugin": name, "file": format!("/p/{name}.so"), "version": "1", "abi": "1.2", "loads": 1,
                   "load_errors": [], "instances": [], "sandbox": sandbox})
        };
        let enforced = "enforced: empty environment, landlock, seccomp";
        let all = plugins(
            &json!({"items": [plugin("camt", enforced), plugin("ofx", enforced)]}),
            None,
        );
        assert!(
            all.ends_with(&format!("\nplugin sandbox: {enforced}\n")),
            "{all}"
        );
        let partial = "INCOMPLETE: landlock: not supported by this kernel; enforced: seccomp";
        let some = plugins(
            &json!({"items": [plugin("camt", enforced), plugin("ofx", partial)]}),
            None,
        );
        assert!(
            some.contains("WARNING: the plugin sandbox is not complete on this system")
                && some.contains(&format!("  camt: {enforced}\n"))
                && some.contains(&format!("  ofx: {partial}\n")),
            "{some}"
        );
    }

    #[test]
    fn plugins_show_the_last_config_reload() {
        let value = json!({"items": [], "config_reload": {
            "file": "/etc/settled.toml", "at": "2026-12-06T23:00:00Z", "trigger": "SIGHUP", "outcome": "applied",
            "error": null, "changes": ["added connector `site` (plugin webform)"],
            "restart_needed": ["`listen` changed: takes effect at the next restart"]}});
        check(
            plugins(&value, None),
            "no plugins\n\
             \nconfig reload (SIGHUP, 2026-12-06T23:00:00Z): applied\n\
             \x20 added connector `site` (plugin webform)\n\
             \x20 restart needed: `listen` changed: takes effect at the next restart\n",
        );
        let refused = json!({"items": [], "config_reload": {
            "at": "2026-12-06T23:00:00Z", "trigger": "file changed", "outcome": "refused",
            "error": "config settled.toml: unknown field `colour`", "changes": [], "restart_needed": []}});
        check(
            plugins(&refused, None),
            "no plugins\n\
             \nconfig reload (file changed, 2026-12-06T23:00:00Z): refused\n\
             \x20 config settled.toml: unknown field `colour`\n",
        );
        check(
            plugins(&json!({"items": [], "config_reload": null}), None),
            "no plugins\n",
        );
    }

    #[test]
    fn import_summary_is_a_readable_block() {
        let value = json!({
            "file": "march.xml", "plugin": "camt", "records_read": 120, "new": 100, "duplicates": 20,
            "matched": {"structured_reference": 50, "invoice_number_in_text": 30},
            "partially_matched": 5, "review": 10, "ignored": 5, "reversed": 1,
            "failed": [{"record": 13, "location": "line 14", "field": "amount", "reason": "amount has too many decimals"},
                {"record": 20, "reason": "invalid email: \"a@b\" does not have a valid domain"}]
        });
        check(
            import_summary("/tmp/march.xml", &value),
            "march.xml (plugin camt)\n\
             \x20 records read       120\n\
             \x20 new                100\n\
             \x20 duplicates         20\n\
             \x20 matched            80  (invoice_number_in_text 30, structured_reference 50)\n\
             \x20 partially matched  5\n\
             \x20 sent to review     10\n\
             \x20 ignored            5\n\
             \x20 reversed           1\n\
             \x20 failed             2\n\
             \x20   record 13 (line 14): amount has too many decimals\n\
             \x20   record 20: invalid email: \"a@b\" does not have a valid domain\n",
        );
    }

    #[test]
    fn status_counts_attention_items_and_reports_what_it_could_not_ask() {
        let health = json!({"status": "ok", "last_event_id": 41});
        let report = StatusReport {
            url: "http://x",
            health: &health,
            review: Ok(2),
            overdue: Err("forbidden".to_string()),
            plugins: Ok(
                json!({"items": [{"plugin": "camt", "instances": [{"state": "running"}, {"state": "failed"}]}]}),
            ),
        };
        check(
            report.to_text(),
            "settled at http://x is up\n\
             \x20 status         ok\n\
             \x20 last_event_id  41\n\
             review queue      2 waiting\n\
             overdue invoices  unknown (forbidden)\n\
             plugin instances  2 (1 not running)\n",
        );
        assert_eq!(
            report.to_json(),
            json!({"url": "http://x", "health": {"status": "ok", "last_event_id": 41}, "review_waiting": 2,
                   "overdue_invoices": null, "plugin_instances": 2, "plugin_instances_not_running": 1})
        );
    }

    #[test]
    fn latency_units_scale() {
        let check = |us: u64, expected: &str| assert_eq!(micros(Some(&json!(us))), expected);
        check(0, "0µs");
        check(999, "999µs");
        check(1_000, "1.0ms");
        check(12_450, "12.4ms");
        check(3_250_000, "3.2s");
        assert_eq!(micros(None), "-");
    }
}
