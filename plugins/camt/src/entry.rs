//! From a statement's `Ntry`/`TxDtls` elements to payment records.

use std::collections::HashMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use settled_plugin_api::money;
use settled_plugin_api::{EntryStatus, PaymentKind, PaymentRecord, PluginError};
use sha2::{Digest, Sha256};

use crate::tree::Element;

/// Maximum length of one `Ustrd` element: a part this long was cut at the width, maybe mid-word.
const USTRD_WIDTH: usize = 140;

/// Bank transaction sub-family codes that mean money came back (payment return, cancellation).
const RETURN_SUB_FAMILIES: [&str; 3] = ["RRTN", "ARET", "RPCR"];
/// Bank transaction sub-family codes for charges, fees and commissions.
const FEE_SUB_FAMILIES: [&str; 3] = ["CHRG", "FEES", "COMM"];

/// What an entry needs to know about its enclosing `Stmt`/`Ntfctn`/`Rpt`.
pub struct Statement<'a> {
    /// The account's IBAN or other id (`""` when the statement names none).
    pub account: &'a str,
    /// The account currency (`Acct/Ccy`), for amounts without a `Ccy` attribute.
    pub currency: Option<&'a str>,
}

impl<'a> Statement<'a> {
    /// Reads the account facts of a statement element.
    pub fn of(statement: &'a Element) -> Self {
        Statement {
            account: statement
                .text_at("Acct/Id/IBAN")
                .or_else(|| statement.text_at("Acct/Id/Othr/Id"))
                .unwrap_or(""),
            currency: statement.text_at("Acct/Ccy"),
        }
    }
}

/// Appends the records of one `Ntry` element (at `entry_path`, e.g. `Stmt[1]/Ntry[3]`) to `out`.
///
/// `occurrences` counts identical content hashes across the file, for ids of entries the bank gave no reference.
pub fn read_entry(
    statement: &Statement<'_>,
    ntry: &Element,
    entry_path: &str,
    file_name: &str,
    occurrences: &mut HashMap<String, usize>,
    out: &mut Vec<PaymentRecord>,
) -> Result<(), PluginError> {
    let entry = Entry::read(ntry, entry_path, statement.currency)?;
    let transactions: Vec<&Element> = ntry
        .children_named("NtryDtls")
        .flat_map(|details| details.children_named("TxDtls"))
        .collect();
    let amounts = split_amounts(&entry, &transactions, entry_path)?;
    let ids = transaction_refs(&entry, &transactions);
    let parts: Vec<Option<&Element>> = if transactions.is_empty() {
        vec![None]
    } else {
        transactions.iter().copied().map(Some).collect()
    };
    for (i, (tx, (amount, id))) in parts
        .into_iter()
        .zip(amounts.into_iter().zip(ids))
        .enumerate()
    {
        let position = match tx {
            Some(_) => format!("{entry_path}/TxDtls[{}]", i + 1),
            None => entry_path.to_string(),
        };
        let mut record = build(&entry, tx, amount, &position)?;
        record.external_id = match id {
            Some(id) => id,
            None => content_id(statement.account, &record, occurrences),
        };
        record.source_position = Some(format!("{file_name}#{position}"));
        record.own_account = Some(statement.account.to_string()).filter(|a| !a.is_empty());
        out.push(record);
    }
    Ok(())
}

/// The entry-level facts every transaction of an entry shares.
struct Entry<'a> {
    amount: SignedAmount,
    reversal: bool,
    status: EntryStatus,
    booked_on: Option<NaiveDate>,
    value_date: Option<NaiveDate>,
    acct_svcr_ref: Option<&'a str>,
    ntry_ref: Option<&'a str>,
    element: &'a Element,
}

/// An amount with its currency and direction.
#[derive(Debug, Clone, PartialEq)]
struct SignedAmount {
    magnitude: Decimal,
    currency: String,
    credit: bool,
}

impl SignedAmount {
    fn signed(&self) -> Decimal {
        if self.credit {
            self.magnitude
        } else {
            -self.magnitude
        }
    }
}

impl<'a> Entry<'a> {
    fn read(
        ntry: &'a Element,
        path: &str,
        account_currency: Option<&str>,
    ) -> Result<Self, PluginError> {
        let amount_element = ntry
            .child("Amt")
            .ok_or_else(|| PluginError::bad_input(format!("{path}/Amt"), "missing entry amount"))?;
        let credit = credit_debit(ntry, path)?.ok_or_else(|| {
            PluginError::bad_input(
                format!("{path}/CdtDbtInd"),
                "missing credit/debit indicator",
            )
        })?;
        let amount = read_amount(
            amount_element,
            &format!("{path}/Amt"),
            account_currency,
            credit,
        )?;
        let reversal = match ntry.text_at("RvslInd") {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(PluginError::bad_input(
                    format!("{path}/RvslInd"),
                    format!("reversal indicator `{other}` is not true or false"),
                ))
            }
        };
        let status_element = ntry
            .child("Sts")
            .ok_or_else(|| PluginError::bad_input(format!("{path}/Sts"), "missing entry status"))?;
        // Up to version 7 the code is the element's text; from version 8 it sits in `Sts/Cd` (or `Sts/Prtry`).
        let status_code = status_element
            .text_at("Cd")
            .or_else(|| status_element.text_at("Prtry"))
            .unwrap_or(status_element.text.trim());
        let status = match status_code {
            "BOOK" => EntryStatus::Booked,
            "PDNG" | "INFO" | "FUTR" => EntryStatus::Pending,
            other => {
                return Err(PluginError::bad_input(
                    format!("{path}/Sts"),
                    format!("unknown entry status `{other}`: expected BOOK, PDNG, INFO or FUTR"),
                ))
            }
        };
        Ok(Entry {
            amount,
            reversal,
            status,
            booked_on: date_of(ntry, "BookgDt", path)?,
            value_date: date_of(ntry, "ValDt", path)?,
            acct_svcr_ref: ntry.text_at("AcctSvcrRef"),
            ntry_ref: ntry.text_at("NtryRef"),
            element: ntry,
        })
    }
}

/// `Some(true)` for CRDT, `Some(false)` for DBIT, `None` when the element is absent.
fn credit_debit(element: &Element, path: &str) -> Result<Option<bool>, PluginError> {
    match element.text_at("CdtDbtInd") {
        None => Ok(None),
        Some("CRDT") => Ok(Some(true)),
        Some("DBIT") => Ok(Some(false)),
        Some(other) => Err(PluginError::bad_input(
            format!("{path}/CdtDbtInd"),
            format!("credit/debit indicator `{other}` is not CRDT or DBIT"),
        )),
    }
}

fn read_amount(
    element: &Element,
    path: &str,
    fallback_currency: Option<&str>,
    credit: bool,
) -> Result<SignedAmount, PluginError> {
    let currency = element
        .attr("Ccy")
        .or(fallback_currency)
        .map(str::trim)
        .ok_or_else(|| {
            PluginError::bad_input(
                path,
                "amount without currency (no Ccy attribute, no Acct/Ccy)",
            )
        })?;
    if !money::is_currency_code(currency) {
        return Err(PluginError::bad_input(
            path,
            format!("currency `{currency}` is not an iso 4217 code"),
        ));
    }
    let magnitude = money::parse_amount(&element.text, '.', currency)
        .map_err(|message| PluginError::bad_input(path, message))?;
    Ok(SignedAmount {
        magnitude,
        currency: currency.to_string(),
        credit,
    })
}

/// `BookgDt`/`ValDt` hold either `Dt` (a date) or `DtTm` (a date-time whose date, as the bank wrote it, is kept).
fn date_of(ntry: &Element, name: &str, path: &str) -> Result<Option<NaiveDate>, PluginError> {
    let Some(holder) = ntry.child(name) else {
        return Ok(None);
    };
    let (text, field) = match (holder.text_at("Dt"), holder.text_at("DtTm")) {
        (Some(dt), _) => (dt, "Dt"),
        (None, Some(dt_tm)) => (dt_tm, "DtTm"),
        (None, None) => {
            return Err(PluginError::bad_input(
                format!("{path}/{name}"),
                "date element without Dt or DtTm",
            ))
        }
    };
    text.get(..10)
        .and_then(|day| NaiveDate::parse_from_str(day, "%Y-%m-%d").ok())
        .map(Some)
        .ok_or_else(|| {
            PluginError::bad_input(
                format!("{path}/{name}/{field}"),
                format!("`{text}` is not a date (YYYY-MM-DD)"),
            )
        })
}

/// The amount of each record of an entry: the entry's own for zero or one `TxDtls`, else each transaction's.
fn split_amounts(
    entry: &Entry<'_>,
    transactions: &[&Element],
    path: &str,
) -> Result<Vec<SignedAmount>, PluginError> {
    if transactions.len() <= 1 {
        return Ok(vec![entry.amount.clone()]);
    }
    let mut amounts = Vec::with_capacity(transactions.len());
    for (i, tx) in transactions.iter().enumerate() {
        let tx_path = format!("{path}/TxDtls[{}]", i + 1);
        let credit = credit_debit(tx, &tx_path)?.unwrap_or(entry.amount.credit);
        let element = [
            ("Amt", tx.child("Amt")),
            ("AmtDtls/TxAmt/Amt", tx.at("AmtDtls/TxAmt/Amt")),
        ]
        .into_iter()
        .find_map(|(name, element)| element.map(|e| (name, e)));
        let amount = match element {
            Some((name, element)) => Some(read_amount(
                element,
                &format!("{tx_path}/{name}"),
                Some(&entry.amount.currency),
                credit,
            )?),
            None => None,
        };
        amounts.push((amount, credit, tx_path));
    }
    let missing: Vec<usize> = (0..amounts.len())
        .filter(|&i| amounts[i].0.is_none())
        .collect();
    match missing.as_slice() {
        [] => {}
        [only] => {
            // One transaction without an amount takes what the others leave of the entry amount.
            let mut rest = entry.amount.signed();
            for (amount, _, tx_path) in amounts.iter() {
                let Some(amount) = amount else { continue };
                if amount.currency != entry.amount.currency {
                    return Err(PluginError::bad_input(
                        tx_path.clone(),
                        "cannot split the entry amount: transactions are in another currency",
                    ));
                }
                rest = rest.checked_sub(amount.signed()).ok_or_else(|| {
                    PluginError::bad_input(tx_path.clone(), "amounts out of range")
                })?;
            }
            amounts[*only].0 = Some(SignedAmount {
                magnitude: rest.abs(),
                currency: entry.amount.currency.clone(),
                credit: rest >= Decimal::ZERO,
            });
        }
        [_, second, ..] => {
            return Err(PluginError::bad_input(
                amounts[*second].2.clone(),
                "batch entry with several transactions without an amount: cannot split the entry amount",
            ))
        }
    }
    Ok(amounts
        .into_iter()
        .filter_map(|(amount, _, _)| amount)
        .collect())
}

/// The bank's id for each record, or `None` where only a content hash can identify it.
fn transaction_refs(entry: &Entry<'_>, transactions: &[&Element]) -> Vec<Option<String>> {
    let entry_ref = entry.acct_svcr_ref.or(entry.ntry_ref);
    // A single payment keeps the bare entry reference whether or not the bank added its `TxDtls`,
    // so a camt.053 entry without details and the camt.054 notice with them get the same id.
    let single = transactions.len() <= 1;
    let tx_ref = transactions
        .first()
        .and_then(|tx| tx.text_at("Refs/AcctSvcrRef"));
    if single {
        return vec![tx_ref.or(entry_ref).map(str::to_string)];
    }
    let tx_refs: Vec<Option<&str>> = transactions
        .iter()
        .map(|tx| tx.text_at("Refs/AcctSvcrRef"))
        .collect();
    tx_refs
        .iter()
        .enumerate()
        .map(|(i, tx_ref)| {
            // Some banks copy the entry reference into every transaction of a batch; such a ref
            // would merge the batch into one record, so it only counts when it is unique.
            let usable = tx_ref.filter(|r| {
                tx_refs.iter().filter(|other| **other == Some(*r)).count() == 1
                    && Some(*r) != entry.acct_svcr_ref
            });
            match (usable, entry_ref) {
                (Some(r), _) => Some(r.to_string()),
                (None, Some(r)) => Some(format!("{r}:{}", i + 1)),
                (None, None) => None,
            }
        })
        .collect()
}

fn build(
    entry: &Entry<'_>,
    tx: Option<&Element>,
    amount: SignedAmount,
    path: &str,
) -> Result<PaymentRecord, PluginError> {
    let mut record = PaymentRecord::new(String::new(), amount.signed(), amount.currency.clone());
    record.booked_on = entry.booked_on;
    record.value_date = entry.value_date;
    record.status = entry.status;
    record.reversal = entry.reversal;
    record.kind = kind_of(entry.element, tx);
    let entry_info = entry.element.text_at("AddtlNtryInf");
    let Some(tx) = tx else {
        record.remittance = entry_info.map(str::to_string);
        return Ok(record);
    };
    if let Some(parties) = tx.child("RltdPties") {
        // A reversal or return names the parties of the payment it undoes: the debtor of a returned credit is the
        // payer it goes back to.
        let undoes_credit =
            !amount.credit && (record.reversal || record.kind == PaymentKind::Refund);
        let (party, ultimate, account) =
            if amount.credit || (undoes_credit && parties.child("Dbtr").is_some()) {
                ("Dbtr", "UltmtDbtr", "DbtrAcct")
            } else {
                ("Cdtr", "UltmtCdtr", "CdtrAcct")
            };
        record.counterparty_name = party_name(parties, party)
            .or_else(|| party_name(parties, ultimate))
            .map(str::to_string);
        record.counterparty_account = parties
            .child(account)
            .and_then(|a| a.text_at("Id/IBAN").or_else(|| a.text_at("Id/Othr/Id")))
            .map(str::to_string);
    }
    record.end_to_end_id = tx
        .text_at("Refs/EndToEndId")
        .filter(|id| *id != "NOTPROVIDED")
        .map(str::to_string);
    let mut texts = Vec::new();
    if let Some(remittance) = tx.child("RmtInf") {
        let unstructured: Vec<&str> = remittance
            .children_named("Ustrd")
            .map(|u| u.text.as_str())
            .collect();
        texts.push(join_fixed_width(&unstructured, USTRD_WIDTH));
        for structured in remittance.children_named("Strd") {
            if record.structured_reference.is_none() {
                record.structured_reference =
                    structured.text_at("CdtrRefInf/Ref").map(str::to_string);
            }
            for document in structured.children_named("RfrdDocInf") {
                if let Some(number) = document.text_at("Nb") {
                    record.invoice_refs.push(number.to_string());
                }
            }
            texts.extend(
                structured
                    .children_named("AddtlRmtInf")
                    .map(|a| a.text.trim().to_string()),
            );
        }
    }
    if texts.iter().all(|t| t.trim().is_empty()) {
        // Some banks put the payer's text only in the free-form additional information.
        texts = tx
            .text_at("AddtlTxInf")
            .or(entry_info)
            .map(str::to_string)
            .into_iter()
            .collect();
    }
    if let Some(reason) = tx.child("RtrInf").map(return_reason) {
        texts.insert(0, reason);
    }
    let text = texts
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    record.remittance = Some(text).filter(|t| !t.is_empty());
    if amount.credit {
        if let Some(fee) = deducted_charges(tx, &amount.currency, path)? {
            let net = amount.magnitude;
            let gross = net.checked_add(fee).ok_or_else(|| {
                PluginError::bad_input(format!("{path}/Chrgs"), "charges out of range")
            })?;
            record.gross = Some(gross);
            record.fee = Some(fee);
            record.net = Some(net);
        }
    }
    Ok(record)
}

/// Charges the bank says it took out of this credit (`Chrgs/Rcrd` with `ChrgInclInd` true, version 3 and
/// later), in the record's currency. Charges without that indicator may have been booked elsewhere, so
/// they are not treated as deducted.
fn deducted_charges(
    tx: &Element,
    currency: &str,
    path: &str,
) -> Result<Option<Decimal>, PluginError> {
    let mut total: Option<Decimal> = None;
    for (c, charges) in tx.children_named("Chrgs").enumerate() {
        for (r, charge) in charges.children_named("Rcrd").enumerate() {
            if charge.text_at("ChrgInclInd") != Some("true") {
                continue;
            }
            let at = format!("{path}/Chrgs[{}]/Rcrd[{}]/Amt", c + 1, r + 1);
            let Some(element) = charge.child("Amt") else {
                continue;
            };
            let fee = read_amount(element, &at, Some(currency), true)?;
            if fee.currency != currency {
                return Ok(None);
            }
            let sum = total.unwrap_or_default().checked_add(fee.magnitude);
            total = Some(sum.ok_or_else(|| PluginError::bad_input(at, "charges out of range"))?);
        }
    }
    Ok(total.filter(|fee| !fee.is_zero()))
}

fn party_name<'a>(parties: &'a Element, role: &str) -> Option<&'a str> {
    let party = parties.child(role)?;
    // Up to version 7 the name is `Dbtr/Nm`; from version 8 a party is `Pty` or `Agt`.
    party
        .text_at("Nm")
        .or_else(|| party.text_at("Pty/Nm"))
        .or_else(|| party.text_at("Agt/FinInstnId/Nm"))
}

fn kind_of(ntry: &Element, tx: Option<&Element>) -> PaymentKind {
    if tx.is_some_and(|t| t.child("RtrInf").is_some()) {
        return PaymentKind::Refund;
    }
    let sub_family = tx
        .and_then(|t| t.text_at("BkTxCd/Domn/Fmly/SubFmlyCd"))
        .or_else(|| ntry.text_at("BkTxCd/Domn/Fmly/SubFmlyCd"));
    match sub_family {
        Some(code) if RETURN_SUB_FAMILIES.contains(&code) => PaymentKind::Refund,
        Some(code) if FEE_SUB_FAMILIES.contains(&code) => PaymentKind::Fee,
        _ => PaymentKind::Transfer,
    }
}

/// `return reason AC04: account closed` from `RtrInf`.
fn return_reason(info: &Element) -> String {
    let code = info
        .text_at("Rsn/Cd")
        .or_else(|| info.text_at("Rsn/Prtry"))
        .unwrap_or("unspecified");
    let details: Vec<&str> = info
        .children_named("AddtlInf")
        .map(|a| a.text.trim())
        .filter(|t| !t.is_empty())
        .collect();
    if details.is_empty() {
        format!("return reason {code}")
    } else {
        format!("return reason {code}: {}", details.join(" "))
    }
}

/// Joins parts with a space, except after a part that fills the whole `width`: that one was cut at the
/// width, possibly mid-word or mid-number, so a line break keeps the cut visible to the matcher, which
/// reads a number across it only where the joined number names an invoice.
fn join_fixed_width(parts: &[&str], width: usize) -> String {
    let mut out = String::new();
    let mut continues = false;
    for part in parts {
        if continues {
            out.push('\n');
            out.push_str(part);
        } else {
            let trimmed_len = out.trim_end().len();
            out.truncate(trimmed_len);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(part.trim_start());
        }
        continues = part.chars().count() >= width;
    }
    out.trim().to_string()
}

/// `sha256(account, the record's normalised fields):occurrence`, for entries without any bank reference.
///
/// The fields are listed explicitly (not serialised) so that ids stay the same when the record type grows.
fn content_id(
    account: &str,
    record: &PaymentRecord,
    occurrences: &mut HashMap<String, usize>,
) -> String {
    let date = |d: Option<NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
    let text = |t: &Option<String>| t.clone().unwrap_or_default();
    let fields = [
        account.to_string(),
        date(record.booked_on),
        date(record.value_date),
        record.amount.to_string(),
        record.currency.clone(),
        // Wire names (`booked`, `refund`) are part of the versioned record contract, so they are stable.
        serde_json::to_string(&record.status).unwrap_or_default(),
        record.reversal.to_string(),
        serde_json::to_string(&record.kind).unwrap_or_default(),
        text(&record.counterparty_name),
        text(&record.counterparty_account),
        text(&record.remittance),
        text(&record.structured_reference),
        text(&record.end_to_end_id),
        record.invoice_refs.join("\u{1f}"),
    ];
    let mut hasher = Sha256::new();
    for field in &fields {
        hasher.update(field.as_bytes());
        // A separator no bank text contains, so fields cannot run into each other.
        hasher.update([0x1e]);
    }
    let hash = hex::encode(hasher.finalize());
    let seen = occurrences.entry(hash.clone()).or_insert(0);
    let id = format!("{hash}:{seen}");
    *seen += 1;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_parts_join_with_a_line_break_others_with_a_space() {
        let full = "x".repeat(139) + "a";
        let joined = join_fixed_width(&[&full, "bc de", "fg"], 140);
        assert_eq!(joined, format!("{}a\nbc de fg", "x".repeat(139)));
        assert_eq!(join_fixed_width(&[" a ", " b"], 140), "a b");
        assert_eq!(join_fixed_width(&[], 140), "");
    }
}
