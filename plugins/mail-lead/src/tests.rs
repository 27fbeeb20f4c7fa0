use super::*;

fn check(raw: &str) -> Result<Option<LeadRecord>, PluginError> {
    let raw = raw.replace('\n', "\r\n");
    match mail(&Settings::default(), raw.as_bytes())? {
        MailOutcome::NotMine => Ok(None),
        MailOutcome::Records { mut records, .. } => match records.pop() {
            Some(Record::Lead(lead)) => Ok(Some(lead)),
            other => panic!("expected one lead, got {other:?}"),
        },
    }
}

fn lead(raw: &str) -> LeadRecord {
    match check(raw) {
        Ok(Some(lead)) => lead,
        other => panic!("expected a lead, got {other:?}"),
    }
}

#[test]
fn a_plain_enquiry_becomes_a_lead_with_sender_subject_and_body() {
    let l = lead("From: Anna Berg <anna@berg-bau.de>\nTo: sales@example.com\nSubject: Quote for 40 chairs\nMessage-ID: <q1@berg-bau.de>\n\nHello,\nplease send a quote.\n\nAnna\nPhone: +49 30 1234567\nCompany: Berg Bau GmbH\n");
    assert_eq!(l.name, "Anna Berg");
    assert_eq!(l.email.as_deref(), Some("anna@berg-bau.de"));
    assert_eq!(l.source, "email");
    assert_eq!(l.external_id.as_deref(), Some("q1@berg-bau.de"));
    assert_eq!(l.phone.as_deref(), Some("+49 30 1234567"));
    assert_eq!(l.company.as_deref(), Some("Berg Bau GmbH"));
    let message = l.message.unwrap_or_default();
    assert!(
        message.starts_with("Quote for 40 chairs\n\nHello,"),
        "{message}"
    );
}

#[test]
fn rfc2047_headers_and_quoted_printable_latin1_bodies_are_decoded() {
    let l = lead("From: =?ISO-8859-1?Q?J=FCrgen_M=FCller?= <jm@example.de>\nSubject: =?UTF-8?B?QW5mcmFnZSBmw7xyIELDvHJvc3TDvGhsZQ==?=\nMIME-Version: 1.0\nContent-Type: text/plain; charset=ISO-8859-1\nContent-Transfer-Encoding: quoted-printable\n\nGr=FC=DFe aus K=F6ln\n");
    assert_eq!(l.name, "Jürgen Müller");
    let message = l.message.unwrap_or_default();
    assert!(message.starts_with("Anfrage für Bürostühle"), "{message}");
    assert!(message.contains("Grüße aus Köln"), "{message}");
}

#[test]
fn base64_windows_1252_bodies_are_decoded() {
    // "Preis: 100 € – bitte" in Windows-1252, base64.
    let l = lead("From: a@example.org\nSubject: price\nContent-Type: text/plain; charset=windows-1252\nContent-Transfer-Encoding: base64\n\nUHJlaXM6IDEwMCCAIJYgYml0dGU=\n");
    let message = l.message.unwrap_or_default();
    assert!(message.contains("Preis: 100 € – bitte"), "{message}");
}

#[test]
fn html_only_mail_is_turned_into_text() {
    let l = lead("From: b@example.org\nSubject: hi\nContent-Type: text/html; charset=utf-8\n\n<html><body><p>We need <b>12 desks</b>.</p></body></html>\n");
    let message = l.message.unwrap_or_default();
    assert!(message.contains("We need 12 desks"), "{message}");
    assert!(!message.contains("<b>"), "{message}");
}

#[test]
fn auto_replies_bounces_reports_and_lists_make_nothing() {
    for raw in [
        "From: a@example.org\nAuto-Submitted: auto-replied\nSubject: Out of office\n\naway\n",
        "From: a@example.org\nX-Autoreply: yes\nSubject: Away\n\naway\n",
        "From: MAILER-DAEMON@example.org\nSubject: Undelivered Mail\n\nbounced\n",
        "From: a@example.org\nSubject: report\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: text/plain\n\nfailed\n--b--\n",
        "From: a@example.org\nList-Id: <dev.lists.example.org>\nSubject: list\n\nhello\n",
    ] {
        assert_eq!(check(raw).map_err(|e| e.to_string()), Ok(None), "{raw}");
    }
    let person = lead("From: a@example.org\nAuto-Submitted: no\nSubject: hello\n\nhi\n");
    assert_eq!(person.email.as_deref(), Some("a@example.org"));
}

#[test]
fn a_message_without_a_sender_is_refused_naming_the_from_header() {
    let err = match check("To: sales@example.com\nSubject: who am i\n\nhello\n") {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(err.location.as_deref(), Some("From"));
    assert!(err.message.contains("no sender"), "{err}");
}

#[test]
fn a_reply_names_the_message_it_answers() {
    let l = lead("From: a@example.org\nSubject: Re: quote\nIn-Reply-To: <q1@example.com>\nReferences: <q0@example.com> <q1@example.com>\n\nyes please\n");
    assert_eq!(
        l.extra.get("in_reply_to").map(String::as_str),
        Some("q1@example.com")
    );
}
