//! `settled sync check <connector>`: compares settled's invoices with the accounting package a poll connector reads
//! (`GET /v1/sync/<connector>/check`), prints every difference and fails (exit 1) when there is any.

use std::io::Write;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{encode, print_raw, write_out, ApiRequest, Client};
use crate::cli::table::{Align, Table};

/// `settled sync ...`
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  settled sync check tryton")]
pub struct SyncArgs {
    #[command(subcommand)]
    pub command: SyncCommand,
}

/// `settled sync ...`
#[derive(Debug, Clone, Subcommand)]
pub enum SyncCommand {
    /// Compare total, balance and payment status of every invoice shared with the system a connector reads (e.g.
    /// Tryton), list where they differ, and exit 1 when they do
    Check {
        /// The connector instance (its `[[connector]]` name, e.g. `tryton`)
        connector: String,
    },
}

pub(super) fn request(args: &SyncArgs) -> ApiRequest {
    match &args.command {
        SyncCommand::Check { connector } => {
            ApiRequest::get(format!("/v1/sync/{}/check", encode(connector)))
        }
    }
}

/// Print the comparison; an error when anything differs, so the command exits 1.
pub(super) async fn check(
    client: &Client,
    request: &ApiRequest,
    json: bool,
    out: &mut (dyn Write + Send),
    width: Option<usize>,
) -> anyhow::Result<()> {
    let answer = client.send(request).await?;
    match json {
        true => print_raw(out, &answer.raw)?,
        false => write_out(out, &render(&answer.value, width))?,
    }
    let differences = answer.value["differences"].as_array().map_or(0, Vec::len);
    match differences {
        0 => Ok(()),
        n => Err(anyhow!(
            "{n} difference(s) between settled and `{}`",
            answer.value["connector"].as_str().unwrap_or("?")
        )),
    }
}

fn render(value: &Value, width: Option<usize>) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let connector = text(&value["connector"]);
    let differences = value["differences"].as_array().cloned().unwrap_or_default();
    let header = format!(
        "{connector}: {} invoice(s) in settled linked to it, {} there\n",
        text(&value["settled_invoices"]),
        text(&value["other_invoices"])
    );
    if differences.is_empty() {
        return format!("{header}no differences: totals, balances and statuses agree\n");
    }
    let mut table = Table::new(&[
        ("INVOICE", Align::Left),
        ("SETTLED ID", Align::Left),
        ("THEIR ID", Align::Left),
        ("FIELD", Align::Left),
        ("SETTLED", Align::Right),
        ("THEIRS", Align::Right),
    ]);
    for d in &differences {
        table.push(vec![
            text(&d["invoice"]),
            text(&d["invoice_id"]),
            text(&d["external_id"]),
            text(&d["field"]),
            text(&d["settled"]),
            text(&d["other"]),
        ]);
    }
    format!("{header}{}", table.render(width))
}
