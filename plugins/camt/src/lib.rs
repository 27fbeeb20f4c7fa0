//! settled connector plugin `camt`: ISO 20022 bank-to-customer cash management messages
//! (camt.052 account report, camt.053 statement, camt.054 debit/credit notification, any version)
//! into `payment@1` records.
//!
//! Elements are matched by local name, so namespaces, prefixes and schema versions do not matter;
//! only the message family is checked. Decisions worth knowing:
//! - One record per `TxDtls`. An entry with a single `TxDtls` (or none) keeps the entry's own amount and
//!   currency, which is what was booked on the account; a batch entry with several `TxDtls` takes each
//!   transaction's `Amt` (else `AmtDtls/TxAmt/Amt`) and its own `CdtDbtInd`.
//! - Counterparty: for a credit the `Dbtr` (else `UltmtDbtr`) name and `DbtrAcct` IBAN or other id; for a
//!   debit the `Cdtr` side, except that a returned or reversed credit names its original payer (`Dbtr`) when
//!   it lists one. `own_account` is the statement's `Acct/Id`. `Sts` BOOK is booked; PDNG, INFO and FUTR are pending.
//! - Kind: `Refund` for `RtrInf` or a return sub-family (RRTN, ARET, RPCR), `Fee` for CHRG, FEES, COMM.
//! - `RvslInd=true` sets `reversal` and keeps kind `Transfer`: the sign (`CdtDbtInd` of the reversing entry)
//!   already says which way the money went back, and the engine reopens what the original paid.
//!   `RtrInf` (a returned payment) gives kind `Refund`, with the return reason at the start of the remittance.
//! - `external_id`: the transaction's `Refs/AcctSvcrRef`; else the entry's `AcctSvcrRef` (then `NtryRef`), bare for
//!   an entry holding one payment and with `:<TxDtls index>` for a batch; else `sha256(account + content):<occurrence>`.
//! - gross/fee/net are set for a credit only when the bank lists charges it deducted from it
//!   (`Chrgs/Rcrd` with `ChrgInclInd=true`); net is the booked amount.
//! - Remittance: `Ustrd` parts (joined without a space after a part filling all 140 characters), then
//!   `Strd/AddtlRmtInf`; without any, `AddtlTxInf` or the entry's `AddtlNtryInf`.
//! - `CpyDplctInd` (copy/duplicate) statements are parsed like originals: external ids never depend on the
//!   file, the statement or that flag, so a duplicate gets the ids of its original and dedupes.

mod entry;
mod tree;

use std::collections::HashMap;

use serde::Deserialize;
use settled_plugin_api::sdk::{payments, StreamParser};
use settled_plugin_api::settings::settings_from_json;
use settled_plugin_api::{
    FileRequest, Manifest, ParseReply, Plugin, PluginError, Record, Role, SniffReply, SniffRequest,
};

pub use settled_plugin_api::PaymentRecord;

/// Settings of a `camt` connector instance (`[connector.settings]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Emit pending and information-only entries (`Sts` PDNG/INFO/FUTR) as `pending` records.
    /// They never mark anything paid; set to false to leave them out entirely. Default true.
    pub include_pending: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            include_pending: true,
        }
    }
}

impl Settings {
    /// Reads settings from JSON (`null` means all defaults); a bad key is an error naming it.
    pub fn from_json(value: serde_json::Value) -> Result<Self, PluginError> {
        settings_from_json(value)
    }
}

/// The `camt` plugin: one instance per configured connector.
#[derive(Debug, Clone, Default)]
pub struct Camt {
    settings: Settings,
}

impl Plugin for Camt {
    fn manifest() -> Manifest {
        Manifest {
            name: "camt".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            roles: vec![Role::File],
            description: "ISO 20022 camt.052/053/054 bank statements and notifications".into(),
        }
    }

    fn configure(settings: serde_json::Value) -> Result<Self, PluginError> {
        Ok(Camt {
            settings: Settings::from_json(settings)?,
        })
    }

    fn sniff(&self, request: SniffRequest) -> SniffReply {
        SniffReply {
            confidence: sniff(&request.name, &request.head),
        }
    }

    fn parse(&self, request: FileRequest) -> Result<ParseReply, PluginError> {
        parse(&request.name, &request.content, &self.settings).map(payments)
    }

    fn stream_parser(&self, name: &str) -> Option<Box<dyn StreamParser>> {
        Some(Box::new(CamtStream::new(name, &self.settings)))
    }
}

/// The three message roots this plugin reads.
const ROOTS: [&str; 3] = ["BkToCstmrStmt", "BkToCstmrDbtCdtNtfctn", "BkToCstmrAcctRpt"];

/// How sure we are that a file is a camt message: 0 = not ours.
pub fn sniff(name: &str, head: &[u8]) -> u8 {
    let text = String::from_utf8_lossy(head);
    let claims = text.contains("camt.05") || ROOTS.iter().any(|root| text.contains(root));
    let is_xml_name = name.to_ascii_lowercase().ends_with(".xml");
    match (claims, is_xml_name) {
        (true, true) => 95,
        (true, false) if text.trim_start().starts_with('<') => 80,
        _ => 0,
    }
}

/// Parses a whole camt file into payment records, in file order. Any bad entry fails the whole file.
///
/// The same parser as [`CamtStream`], fed the file in one piece.
pub fn parse(
    name: &str,
    bytes: &[u8],
    settings: &Settings,
) -> Result<Vec<PaymentRecord>, PluginError> {
    let mut stream = CamtStream::new(name, settings);
    let mut records = stream.feed_payments(bytes)?;
    records.extend(stream.finish_payments()?);
    Ok(records)
}

/// A camt file parsed chunk by chunk (the `file` role's parse sessions): entries are read as they close, so
/// memory stays bounded by one entry (and the open elements above it) however long the statement, and the
/// records of all feeds equal what [`parse`] gives for the whole file.
pub struct CamtStream {
    tree: tree::TreeStream,
    entries: Entries,
}

/// What the entry reader keeps between feeds.
struct Entries {
    name: String,
    include_pending: bool,
    records: Vec<PaymentRecord>,
    occurrences: HashMap<String, usize>,
    checked_section: Option<&'static str>,
    /// (statement index, entry index within it), both 1-based.
    position: (usize, usize),
}

impl CamtStream {
    /// A parser for the file `name` with an instance's settings.
    pub fn new(name: &str, settings: &Settings) -> CamtStream {
        CamtStream {
            tree: tree::TreeStream::default(),
            entries: Entries {
                name: name.to_string(),
                include_pending: settings.include_pending,
                records: Vec::new(),
                occurrences: HashMap::new(),
                checked_section: None,
                position: (0, 0),
            },
        }
    }

    fn feed_payments(&mut self, chunk: &[u8]) -> Result<Vec<PaymentRecord>, PluginError> {
        let entries = &mut self.entries;
        self.tree
            .feed(chunk, &mut |open: &[tree::Element], element| {
                entries.on_close(open, element)
            })?;
        Ok(entries.take())
    }

    fn finish_payments(self) -> Result<Vec<PaymentRecord>, PluginError> {
        let CamtStream { tree, mut entries } = self;
        let root =
            tree.finish(&mut |open: &[tree::Element], element| entries.on_close(open, element))?;
        let message = match root.name.as_str() {
            "Document" => root.children.first().ok_or_else(|| {
                PluginError::bad_input("Document", "empty document: no camt message inside")
            })?,
            _ => &root,
        };
        check_message(&root, message)?;
        Ok(entries.take())
    }
}

impl StreamParser for CamtStream {
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Record>, PluginError> {
        Ok(payments(self.feed_payments(chunk)?).records)
    }

    fn finish(self: Box<Self>) -> Result<Vec<Record>, PluginError> {
        Ok(payments(self.finish_payments()?).records)
    }
}

impl Entries {
    /// The records read so far, without pending ones unless the settings include them.
    fn take(&mut self) -> Vec<PaymentRecord> {
        let mut records = std::mem::take(&mut self.records);
        if !self.include_pending {
            records.retain(|r| r.status == settled_plugin_api::EntryStatus::Booked);
        }
        records
    }

    /// Reads each `Ntry` of a statement when it closes and drops it; keeps every other element.
    fn on_close(
        &mut self,
        open: &[tree::Element],
        element: tree::Element,
    ) -> Result<Option<tree::Element>, PluginError> {
        let [.., message, statement] = open else {
            return Ok(Some(element));
        };
        let in_statement = element.name == "Ntry"
            && section_of(&message.name).is_some_and(|section| statement.name == section);
        if !in_statement {
            return Ok(Some(element));
        }
        let section = match self.checked_section {
            Some(section) => section,
            None => {
                let root = open.first().unwrap_or(message);
                *self.checked_section.insert(check_message(root, message)?)
            }
        };
        // Earlier statements are closed and attached to the message (without their entries).
        let statement_index = message.children_named(section).count() + 1;
        if self.position.0 != statement_index {
            self.position = (statement_index, 0);
        }
        self.position.1 += 1;
        let path = format!("{section}[{}]/Ntry[{}]", self.position.0, self.position.1);
        let context = entry::Statement::of(statement);
        entry::read_entry(
            &context,
            &element,
            &path,
            &self.name,
            &mut self.occurrences,
            &mut self.records,
        )?;
        Ok(None)
    }
}

/// The statement element of each message: `Stmt`, `Ntfctn` or `Rpt`.
fn section_of(message: &str) -> Option<&'static str> {
    match message {
        "BkToCstmrStmt" => Some("Stmt"),
        "BkToCstmrDbtCdtNtfctn" => Some("Ntfctn"),
        "BkToCstmrAcctRpt" => Some("Rpt"),
        _ => None,
    }
}

/// Checks the message root and the version its namespace declares; returns its statement element name.
fn check_message(
    root: &tree::Element,
    message: &tree::Element,
) -> Result<&'static str, PluginError> {
    let section = section_of(&message.name).ok_or_else(|| {
        PluginError::bad_input(
            message.name.clone(),
            format!(
                "unknown camt message <{}>: expected BkToCstmrStmt (camt.053), \
                 BkToCstmrDbtCdtNtfctn (camt.054) or BkToCstmrAcctRpt (camt.052)",
                message.name
            ),
        )
    })?;
    check_version(root, message)?;
    Ok(section)
}

/// The namespace names the message family (`camt.053.001.08`); any version is fine, another family is not.
fn check_version(root: &tree::Element, message: &tree::Element) -> Result<(), PluginError> {
    let declared = root
        .namespaces
        .iter()
        .chain(&message.namespaces)
        .find_map(|ns| ns.find("camt.").map(|at| &ns[at..]));
    let Some(declared) = declared else {
        return Ok(());
    };
    let family = declared.get(..8).unwrap_or(declared);
    let expected = match message.name.as_str() {
        "BkToCstmrStmt" => "camt.053",
        "BkToCstmrDbtCdtNtfctn" => "camt.054",
        _ => "camt.052",
    };
    match family {
        "camt.052" | "camt.053" | "camt.054" if family == expected => Ok(()),
        "camt.052" | "camt.053" | "camt.054" => Err(PluginError::bad_input(
            "Document",
            format!(
                "namespace says {declared} but the message is <{}> ({expected})",
                message.name
            ),
        )),
        _ => Err(PluginError::bad_input(
            "Document",
            format!(
                "unsupported camt message version {declared}: only camt.052, camt.053 and camt.054 are read"
            ),
        )),
    }
}

settled_plugin_api::export_plugin!(Camt);

#[cfg(test)]
mod tests;
