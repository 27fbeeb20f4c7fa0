//! The notice patterns on a sample PayPal notice and on patterns from the settings.

use settled_plugin_api::chrono::NaiveDate;
use settled_plugin_api::rust_decimal::Decimal;
use settled_plugin_api::{MailOutcome, PaymentRecord, Plugin, Record};

use super::*;

/// The configured instance for `settings`, or a panic naming the error.
pub(crate) fn config(settings: serde_json::Value) -> Config {
    settings_from_json(settings)
        .and_then(Config::new)
        .unwrap_or_else(|e| panic!("{e:?}"))
}

fn payments(config: &Config, raw: &[u8]) -> Vec<PaymentRecord> {
    match mail(config, raw) {
        Ok(MailOutcome::Records { records, .. }) => records
            .into_iter()
            .map(|r| match r {
                Record::Payment(p) => p,
                other => panic!("not a payment: {other:?}"),
            })
            .collect(),
        other => panic!("expected records, got {other:?}"),
    }
}

const PAYPAL: &[u8] = include_bytes!("../../../tests/fixtures/mail/paypal-payment-received.eml");

fn amount(text: &str) -> Decimal {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn a_paypal_notice_becomes_a_payment_with_payer_note_and_transaction_id() {
    let got = payments(&config(serde_json::json!({})), PAYPAL);
    assert_eq!(got.len(), 1, "{got:?}");
    let p = &got[0];
    assert_eq!(p.external_id, "paypal:7LK63455XR1234567");
    assert_eq!(p.amount, amount("238.00"));
    assert_eq!(p.currency, "EUR");
    assert_eq!(p.counterparty_name.as_deref(), Some("Anna Berg"));
    assert_eq!(
        p.remittance.as_deref(),
        Some("Invoice INV-2026-001, thank you!")
    );
    assert_eq!(p.booked_on, NaiveDate::from_ymd_opt(2026, 12, 6));
    assert_eq!(
        p.source_position.as_deref(),
        Some("Message-ID <1796550066.1a2b3c4d5e6f7@slcnotifevt-1.paypal.com>")
    );
}

#[test]
fn an_html_only_paypal_notice_and_the_older_layout_are_read_too() {
    let html = "From: PayPal <service@paypal.com>\r\nSubject: You received a payment\r\nMessage-ID: <h1@paypal.com>\r\n\
                Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hello,</p><h1>Jo Lee sent you $1,234.50 USD</h1>\
                <p>Transaction ID: 1AB23456CD7890123</p></body></html>\r\n";
    let p = &payments(&config(serde_json::json!({})), html.as_bytes())[0];
    assert_eq!(
        (p.external_id.as_str(), p.amount, p.currency.as_str()),
        ("paypal:1AB23456CD7890123", amount("1234.50"), "USD")
    );
    assert_eq!(p.counterparty_name.as_deref(), Some("Jo Lee"));
    let older = "From: service@paypal.co.uk\r\nSubject: Notification of payment received\r\nMessage-ID: <o1@paypal.co.uk>\r\n\r\n\
                 Dear Shop,\r\n\r\nThis email confirms that you have received a payment for \u{a3}25.00 GBP from Max Roe (max@example.org).\r\n\r\n\
                 Transaction ID: 9ZY87654XW3210987\r\n";
    let p = &payments(&config(serde_json::json!({})), older.as_bytes())[0];
    assert_eq!(
        (p.external_id.as_str(), p.amount, p.currency.as_str()),
        ("paypal:9ZY87654XW3210987", amount("25.00"), "GBP")
    );
    assert_eq!(p.counterparty_name.as_deref(), Some("Max Roe"));
}

#[test]
fn a_lookalike_sender_or_a_turned_off_pattern_set_is_not_read() {
    let spoofed = String::from_utf8_lossy(PAYPAL).replace(
        "From: \"service@paypal.de\" <service@paypal.de>",
        "From: \"service@paypal.de\" <service@paypal.de.payments-check.example>",
    );
    assert_eq!(
        mail(&config(serde_json::json!({})), spoofed.as_bytes()),
        Ok(MailOutcome::NotMine)
    );
    assert_eq!(
        mail(&config(serde_json::json!({"builtin_notices": []})), PAYPAL),
        Ok(MailOutcome::NotMine)
    );
}

#[test]
fn notice_patterns_from_the_settings_read_a_bank_notice_with_a_decimal_comma() {
    let settings = serde_json::json!({"builtin_notices": [], "notices": [{
        "name": "nordbank",
        "from": "@nordbank\\.example$",
        "subject": "^Zahlungseingang",
        "body": [
            "Betrag:\\s*(?P<amount>[\\d.]+,\\d{2})",
            "Auftraggeber:\\s*(?P<payer>[^\\n]+)",
            "Verwendungszweck:\\s*(?P<reference>[^\\n]+)",
            "Buchungsreferenz:\\s*(?P<id>\\S+)"
        ],
        "currency": "eur",
        "decimal_mark": ","
    }]});
    let raw = "From: Nordbank <avis@nordbank.example>\r\nSubject: Zahlungseingang auf Konto 1234\r\n\
               Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
               Betrag: 1.190,00\r\nAuftraggeber: M=FCller GmbH\r\nVerwendungszweck: RE INV-2026-007\r\nBuchungsreferenz: NB-77-1\r\n";
    let p = &payments(&config(settings), raw.as_bytes())[0];
    assert_eq!(p.external_id, "nordbank:NB-77-1");
    assert_eq!((p.amount, p.currency.as_str()), (amount("1190.00"), "EUR"));
    assert_eq!(p.counterparty_name.as_deref(), Some("Müller GmbH"));
    assert_eq!(p.remittance.as_deref(), Some("RE INV-2026-007"));
}

#[test]
fn a_claimed_notice_without_an_amount_is_an_error_naming_the_pattern() {
    let raw = "From: service@paypal.com\r\nSubject: You've got money\r\nMessage-ID: <x@paypal.com>\r\n\r\nSomething changed.\r\n";
    let err = mail(&config(serde_json::json!({})), raw.as_bytes())
        .err()
        .unwrap_or_else(|| panic!("accepted a notice without an amount"));
    assert_eq!(err.code, "bad_input");
    assert_eq!(err.location.as_deref(), Some("notice paypal body"));
    assert!(
        err.message.contains("no body pattern found an amount"),
        "{err:?}"
    );
}

#[test]
fn bad_notice_settings_are_refused_naming_the_key() {
    let check = |settings: serde_json::Value, key: &str, fragment: &str| {
        let err = PaymentMail::configure(settings.clone())
            .err()
            .unwrap_or_else(|| panic!("{settings} was accepted"));
        assert_eq!(err.code, "bad_config", "{settings}");
        assert_eq!(err.location.as_deref(), Some(key), "{settings}: {err:?}");
        assert!(err.message.contains(fragment), "{settings}: {err:?}");
    };
    let notice = |extra: serde_json::Value| {
        let mut n =
            serde_json::json!({"name": "p", "from": "@p\\.example$", "body": ["(?P<amount>\\d+)"]});
        if let (Some(n), Some(extra)) = (n.as_object_mut(), extra.as_object()) {
            n.extend(extra.clone());
        }
        serde_json::json!({ "notices": [n] })
    };
    check(
        serde_json::json!({"builtin_notices": ["stripe"]}),
        "builtin_notices[0]",
        "there are: paypal",
    );
    check(
        notice(serde_json::json!({"body": ["(?P<amount>\\d+"]})),
        "notices[0].body[0]",
        "not a valid regular expression",
    );
    check(
        notice(serde_json::json!({"body": ["(?P<sum>\\d+)"]})),
        "notices[0].body[0]",
        "unknown group `sum`",
    );
    check(
        notice(serde_json::json!({"body": ["(?P<payer>\\w+)"]})),
        "notices[0].body",
        "no pattern has an `amount` group",
    );
    check(
        notice(serde_json::json!({"from": null})),
        "notices[0]",
        "give `from`, `subject` or both",
    );
    check(
        notice(serde_json::json!({"currency": "euro"})),
        "notices[0].currency",
        "not an ISO 4217 code",
    );
    check(
        notice(serde_json::json!({"colour": "red"})),
        "notices[0].colour",
        "unknown field `colour`",
    );
}
