//! Accounting-package exports (`tests/fixtures/exports/`) dropped into the inbox of a `bank-csv` instance that
//! names no profile: each is recognised by its first lines, read with its built-in profile (`datev`, `xero`,
//! `quickbooks`) and settles the invoices it names; the same file with one broken row is set aside naming the
//! line and the column, and records nothing.

use std::path::Path;

use serde_json::Value;

use crate::harness::{fixture, invoice, issue_invoice, one_line, wait_for_file, Daemon, Setup};

/// A bank-csv instance with no profile: with `settings` (a currency for exports that carry none), or else
/// the default instance.
fn setup(settings: &str) -> Setup {
    let config = if settings.is_empty() {
        String::new()
    } else {
        format!(
            "[[connector]]\nname = \"books\"\nplugin = \"bank-csv\"\nsettings = {{ {settings} }}\n"
        )
    };
    Setup {
        plugins: vec!["bank-csv"],
        config,
    }
}

/// `bytes` with every `from` replaced by `to` (the samples may be Windows-1252, so not as text).
fn replace(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Writes `bytes` into the inbox under a temporary name and renames it into place, as a careful sender does.
fn drop_into(inbox: &Path, name: &str, bytes: &[u8]) {
    let part = inbox.join(format!(".{name}.part"));
    std::fs::write(&part, bytes).unwrap();
    std::fs::rename(&part, inbox.join(name)).unwrap();
}

fn payment_count(d: &Daemon) -> usize {
    d.ok("GET", "/v1/payments?limit=1000", None)["items"]
        .as_array()
        .unwrap()
        .len()
}

/// Issues the three invoices the samples pay (`INV-<year>-001` 1190.00, `-002` 250.00, `-003` 99.90), drops
/// the sample `file` into the inbox and checks what it settled, and that a second copy changes nothing; then
/// drops it with `broken` applied
/// (one row's field spoiled) and checks it is set aside with an error naming `line` and `column`.
fn settles_the_invoices_it_names(
    settings: &str,
    file: &str,
    (new, ignored): (u64, u64),
    broken: (&str, &str),
    (line, column): (&str, &str),
) {
    let d = Daemon::start(setup(settings));
    let invoices = [
        issue_invoice(&d, "Müller GmbH", one_line("1190.00")),
        issue_invoice(&d, "Schön & Söhne", one_line("250.00")),
        issue_invoice(&d, "Gamma Ltd", one_line("99.90")),
    ];
    let number = invoices[0]["number"].as_str().unwrap();
    assert!(number.ends_with("-001"), "{number}");
    let year = &number[4..8];
    let sample = std::fs::read(fixture(&format!("exports/{file}"))).unwrap();
    let sample = replace(&sample, "INV-2026-", &format!("INV-{year}-"));

    let inbox = d.data_dir().join("inbox");
    d.eventually("the inbox folder", || inbox.exists().then_some(()));
    drop_into(&inbox, file, &sample);
    let done = wait_for_file(&d, &inbox.join("done"), file);
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.summary.json", done.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (summary["new"].as_u64(), summary["ignored"].as_u64()),
        (Some(new), Some(ignored)),
        "{summary}"
    );
    let statuses: Vec<String> = invoices
        .iter()
        .map(|inv| {
            invoice(&d, inv)["payment_status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(statuses, ["paid", "paid", "partially_paid"], "{summary}");
    assert_eq!(invoice(&d, &invoices[2])["balance"], "49.90");

    // the same export again (the rows have no ids of their own: recognised by their content)
    let again = format!("again-{file}");
    drop_into(&inbox, &again, &sample);
    let done = wait_for_file(&d, &inbox.join("done"), &again);
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.summary.json", done.display())).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (summary["new"].as_u64(), summary["duplicates"].as_u64()),
        (Some(0), Some(new + ignored)),
        "{summary}"
    );

    let before = payment_count(&d);
    let name = format!("broken-{file}");
    drop_into(&inbox, &name, &replace(&sample, broken.0, broken.1));
    let failed = wait_for_file(&d, &inbox.join("failed"), &name);
    let why = std::fs::read_to_string(format!("{}.error", failed.display())).unwrap();
    assert!(
        why.contains(&format!("line {line}, column \"{column}\"")),
        "{why}"
    );
    assert_eq!(payment_count(&d), before, "a broken file records nothing");
}

#[test]
fn a_datev_booking_batch_settles_the_invoices_it_names_and_a_bad_date_is_refused() {
    // the default instance reads it: no profile and no currency (the DATEV header says EUR)
    settles_the_invoices_it_names(
        "",
        "EXTF_Buchungsstapel.csv",
        (3, 0),
        (";1502;", ";3004;"),
        ("4", "Belegdatum"),
    );
}

#[test]
fn a_xero_statement_settles_the_invoices_it_names_and_a_bad_amount_is_refused() {
    settles_the_invoices_it_names(
        "currency = \"EUR\"",
        "xero-statement.csv",
        (3, 1),
        (",250.00,", ",25O.00,"),
        ("4", "*Amount"),
    );
}

#[test]
fn a_quickbooks_file_settles_the_invoices_it_names_and_a_bad_date_is_refused() {
    settles_the_invoices_it_names(
        "currency = \"EUR\"",
        "quickbooks-4-column.csv",
        (3, 1),
        ("02/10/2026,", "2026-02-10,"),
        ("4", "Date"),
    );
}
