//! German bank exports end with balance rows (`Saldo`, `Endsaldo`, `Kontostand`) and open with an account
//! block; the `de-sepa` profile skips both, and errors in CRLF files name the line an editor shows.

use serde_json::Value;

use crate::harness::{issue_invoice, one_line, run, settled, Daemon, Run, Setup, TOKEN};

fn setup() -> Setup {
    Setup {
        plugins: vec!["bank-csv"],
        config: "[[connector]]\nname = \"sparkasse\"\nplugin = \"bank-csv\"\nsettings = { profile = \"de-sepa\" }\n"
            .into(),
    }
}

/// The text as Windows-1252 bytes with CRLF line ends, as German online banking writes it.
fn windows_1252_crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).expect("a latin-1 character"))
        .collect()
}

fn import(d: &Daemon, name: &str, bytes: &[u8]) -> Run {
    let path = d.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let mut cmd = settled(d.dir.path());
    cmd.args([
        "import",
        "--json",
        "--plugin",
        "sparkasse",
        "--url",
        &d.url(""),
    ])
    .arg(&path)
    .env("SETTLED_API_TOKEN", TOKEN);
    run(cmd)
}

#[test]
fn a_german_export_with_an_account_block_and_a_saldo_footer_imports() {
    let d = Daemon::start(setup());
    let inv = issue_invoice(&d, "Müller GmbH", one_line("1250.00"));
    let number = inv["number"].as_str().unwrap();
    let export = format!(
        "\"Umsätze Girokonto\";\"Zeitraum: 01.03.2026 - 31.03.2026\"\n\
         \"Kontonummer:\";\"DE02 1001 0010 0006 8201 01\"\n\
         \"Kontostand vom 01.03.2026:\";\"1.000,00 EUR\"\n\
         \n\
         \"Buchungstag\";\"Valutadatum\";\"Begünstigter/Zahlungspflichtiger\";\"Verwendungszweck\";\"Betrag\";\"Währung\"\n\
         \"05.03.2026\";\"05.03.2026\";\"Müller GmbH\";\"Rechnung {number} Grüße\";\"1.250,00\";\"EUR\"\n\
         \"06.03.2026\";\"06.03.2026\";\"Bäckerei Schön\";\"Miete März\";\"-800,00\";\"EUR\"\n\
         \n\
         \"Saldo\";;;;\"1.450,00\";\"EUR\"\n\
         \"Kontostand vom 31.03.2026:\";;;;\"1.450,00 EUR\";\n"
    );
    let r = import(&d, "umsaetze.csv", &windows_1252_crlf(&export));
    assert!(r.status.success(), "{r}");
    let summary: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let summary = if summary.is_array() {
        summary[0].clone()
    } else {
        summary
    };
    // the two bookings and nothing of the account block or the balance rows; the rent is outgoing
    assert_eq!(summary["records_read"], 2, "{summary}");
    assert_eq!(
        (summary["new"].as_u64(), summary["ignored"].as_u64()),
        (Some(1), Some(1)),
        "{summary}"
    );
    let after = d.ok(
        "GET",
        &format!("/v1/invoices/{}", inv["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(after["payment_status"], "paid", "{after}");
    let payments = d.ok("GET", "/v1/payments?limit=10", None);
    let text = payments.to_string();
    assert!(
        text.contains("Müller GmbH") && text.contains("Grüße"),
        "decoded as windows-1252: {text}"
    );
}

#[test]
fn an_error_in_a_crlf_export_names_the_line_an_editor_shows() {
    let d = Daemon::start(setup());
    // line 6 holds the bad amount
    let export = "\"Kontonummer:\";\"DE02 1001 0010 0006 8201 01\"\n\
                  \n\
                  \"Buchungstag\";\"Verwendungszweck\";\"Betrag\"\n\
                  \"05.03.2026\";\"eins\";\"1,00\"\n\
                  \"06.03.2026\";\"zwei\";\"2,00\"\n\
                  \"07.03.2026\";\"drei\";\"drei Euro\"\n";
    let r = import(&d, "kaputt.csv", &windows_1252_crlf(export));
    assert!(!r.status.success(), "{r}");
    assert!(r.stderr.contains("line 6"), "{r}");
    assert!(!r.stderr.contains("line 5"), "{r}");
}
