//! End-to-end tests of [`intake`](crate::intake) with real-looking requests.

use serde_json::json;
use settled_plugin_api::{HttpReply, IntakeOutcome, IntakeRequest, LeadRecord, Plugin, Record};

use crate::body::tests::{CHROME_CONTENT_TYPE, CHROME_MULTIPART};
use crate::settings::Config;
use crate::signature::sign;
use crate::{intake, Webform};

const NOW: i64 = 1_795_000_000;

fn config(settings: serde_json::Value) -> Config {
    let env = |name: &str| (name == "TYPEFORM_SECRET").then(|| "tf-secret-from-env".to_owned());
    Config::from_json(settings, env).unwrap_or_else(|error| panic!("{error}"))
}

fn request(content_type: &str, body: &[u8], headers: &[(&str, &str)]) -> IntakeRequest {
    let mut all = vec![("content-type".to_owned(), content_type.to_owned())];
    all.extend(
        headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    IntakeRequest {
        method: "POST".to_owned(),
        path: "/".to_owned(),
        query: String::new(),
        headers: all,
        body: body.to_vec(),
        remote_addr: "203.0.113.9:51234".to_owned(),
        received_at: NOW,
    }
}

/// The single lead of an accepted request, and its reply.
fn accepted(outcome: IntakeOutcome) -> (LeadRecord, Option<HttpReply>) {
    match outcome {
        IntakeOutcome::Accept { mut records, reply } => match (records.pop(), records.is_empty()) {
            (Some(Record::Lead(lead)), true) => (lead, reply),
            (other, _) => panic!("expected exactly one lead, got {other:?} and {records:?}"),
        },
        IntakeOutcome::Reject { status, reason } => panic!("rejected {status}: {reason}"),
    }
}

fn check_reject(outcome: IntakeOutcome, status: u16, words: &str) {
    match outcome {
        IntakeOutcome::Reject {
            status: got,
            reason,
        } => {
            assert_eq!(got, status, "{reason}");
            assert!(reason.contains(words), "`{reason}` lacks `{words}`");
        }
        accepted => panic!("expected a {status} rejection, got {accepted:?}"),
    }
}

fn extra(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

const CONTACT_FORM: &str = "your-name=Ada+Lovelace&your-email=ada%40analytical.example&tel=%2B44+20+7946+0958\
&company=Analytical+Engines+Ltd&your-message=Please+send+a+quote+for+12+seats.%0D%0AThanks%21&utm_source=google&website=";

#[test]
fn an_urlencoded_contact_form_becomes_a_lead() {
    let outcome = intake(
        &config(json!({})),
        &request(
            "application/x-www-form-urlencoded",
            CONTACT_FORM.as_bytes(),
            &[],
        ),
    );
    let (lead, reply) = accepted(outcome);
    assert_eq!(
        lead,
        LeadRecord {
            name: "Ada Lovelace".to_owned(),
            email: Some("ada@analytical.example".to_owned()),
            phone: Some("+44 20 7946 0958".to_owned()),
            company: Some("Analytical Engines Ltd".to_owned()),
            source: "web".to_owned(),
            external_id: None,
            message: Some("Please send a quote for 12 seats.\r\nThanks!".to_owned()),
            assigned_to: None,
            extra: extra(&[("utm_source", "google")]),
        }
    );
    assert_eq!(reply, None);
}

#[test]
fn a_browser_multipart_post_becomes_a_lead_and_notes_the_ignored_upload() {
    let outcome = intake(
        &config(json!({"source": "website-contact"})),
        &request(CHROME_CONTENT_TYPE, CHROME_MULTIPART.as_bytes(), &[]),
    );
    let (lead, _) = accepted(outcome);
    assert_eq!(lead.name, "Grace Hopper");
    assert_eq!(lead.email.as_deref(), Some("grace@navy.example"));
    assert_eq!(lead.message.as_deref(), Some("Line one\r\nLine two"));
    assert_eq!(lead.source, "website-contact");
    assert_eq!(
        lead.extra,
        extra(&[
            ("interest", "cobol, compilers"),
            (
                "file:attachment",
                "ignored upload brief.pdf (application/pdf, 16 bytes)"
            ),
        ])
    );
}

#[test]
fn redirect_answers_html_forms_with_303_but_not_json_webhooks() {
    let config = config(json!({"redirect": "https://example.com/thanks"}));
    let (_, reply) = accepted(intake(
        &config,
        &request(
            "application/x-www-form-urlencoded",
            CONTACT_FORM.as_bytes(),
            &[],
        ),
    ));
    assert_eq!(
        reply,
        Some(HttpReply {
            status: 303,
            headers: vec![(
                "location".to_owned(),
                "https://example.com/thanks".to_owned()
            )],
            body: String::new(),
        })
    );
    let (_, reply) = accepted(intake(
        &config,
        &request("application/json", br#"{"email":"a@b.example"}"#, &[]),
    ));
    assert_eq!(reply, None);
}

#[test]
fn a_filled_honeypot_is_answered_with_success_and_records_nothing() {
    let bot = CONTACT_FORM.replace("website=", "website=http%3A%2F%2Fspam.example");
    let outcome = intake(
        &config(json!({"honeypot": "website"})),
        &request("application/x-www-form-urlencoded", bot.as_bytes(), &[]),
    );
    match outcome {
        IntakeOutcome::Accept { records, reply } => {
            assert!(records.is_empty());
            assert_eq!(reply.map(|reply| reply.status), Some(200));
        }
        rejected => panic!("bot was told {rejected:?}"),
    }
}

#[test]
fn a_honeypot_hit_gets_the_same_redirect_a_person_gets() {
    let bot = CONTACT_FORM.replace("website=", "website=x");
    let outcome = intake(
        &config(json!({"honeypot": "website", "redirect": "/thanks"})),
        &request("application/x-www-form-urlencoded", bot.as_bytes(), &[]),
    );
    let IntakeOutcome::Accept { records, reply } = outcome else {
        panic!("bot was rejected");
    };
    assert!(records.is_empty());
    assert_eq!(
        reply.map(|reply| (reply.status, reply.headers)),
        Some((303, vec![("location".to_owned(), "/thanks".to_owned())]))
    );
}

#[test]
fn an_empty_honeypot_lets_the_lead_through_without_the_trap_field() {
    let (lead, _) = accepted(intake(
        &config(json!({"honeypot": "website"})),
        &request(
            "application/x-www-form-urlencoded",
            CONTACT_FORM.as_bytes(),
            &[],
        ),
    ));
    assert_eq!(lead.name, "Ada Lovelace");
    assert!(!lead.extra.contains_key("website"));
}

/// The shape Typeform posts (https://www.typeform.com/developers/webhooks/example-payload/), trimmed to a demo-request form.
const TYPEFORM: &str = r#"{
  "event_id": "01JD4Q8Z6M2V7T3K5W9X1Y0B8C",
  "event_type": "form_response",
  "form_response": {
    "form_id": "lT4Z3j",
    "token": "a3a12ec67a1365927098a606107fac15",
    "landed_at": "2026-11-20T09:12:31Z",
    "submitted_at": "2026-11-20T09:14:02Z",
    "hidden": {"utm_campaign": "autumn"},
    "definition": {
      "id": "lT4Z3j",
      "title": "Request a demo",
      "fields": [
        {"id": "Kq1fXo3d8uJ7", "title": "What's your name?", "type": "short_text", "ref": "full_name", "properties": {}},
        {"id": "SMEUb7VJz92Q", "title": "Thanks, {{field:full_name}}! What's your work email?", "type": "email", "ref": "work_email", "properties": {}}
      ]
    },
    "answers": [
      {"type": "text", "text": "Katherine Johnson", "field": {"id": "Kq1fXo3d8uJ7", "type": "short_text", "ref": "full_name"}},
      {"type": "email", "email": "kjohnson@orbit.example", "field": {"id": "SMEUb7VJz92Q", "type": "email", "ref": "work_email"}},
      {"type": "phone_number", "phone_number": "+15555550123", "field": {"id": "pH0n3aB1c2d3", "type": "phone_number", "ref": "phone"}},
      {"type": "text", "text": "Orbit Analytics", "field": {"id": "c0mpAnY12345", "type": "short_text", "ref": "company"}},
      {"type": "choice", "choice": {"label": "50-200"}, "field": {"id": "t3amS1z3xyz0", "type": "multiple_choice", "ref": "team_size"}},
      {"type": "choices", "choices": {"labels": ["Invoicing", "Reconciliation"]}, "field": {"id": "int3r3sts000", "type": "multiple_choice", "ref": "interests"}},
      {"type": "number", "number": 12, "field": {"id": "s3ats0000000", "type": "number", "ref": "seats"}},
      {"type": "boolean", "boolean": true, "field": {"id": "c0ns3nt00000", "type": "yes_no", "ref": "consent"}},
      {"type": "text", "text": "We reconcile 3,000 Stripe payouts a month by hand.", "field": {"id": "m3ssag300000", "type": "long_text", "ref": "message"}}
    ]
  }
}"#;

fn typeform_config() -> Config {
    config(json!({
        "source": "typeform",
        "fields": {"email": ["work_email"]},
        "signature": {"style": "typeform", "secret_env": "TYPEFORM_SECRET"}
    }))
}

#[test]
fn a_signed_typeform_webhook_becomes_a_lead_keyed_by_its_event_id() {
    let signature = sign::typeform("tf-secret-from-env", TYPEFORM.as_bytes());
    let (lead, reply) = accepted(intake(
        &typeform_config(),
        &request(
            "application/json",
            TYPEFORM.as_bytes(),
            &[("typeform-signature", &signature)],
        ),
    ));
    assert_eq!(
        lead,
        LeadRecord {
            name: "Katherine Johnson".to_owned(),
            email: Some("kjohnson@orbit.example".to_owned()),
            phone: Some("+15555550123".to_owned()),
            company: Some("Orbit Analytics".to_owned()),
            source: "typeform".to_owned(),
            external_id: Some("01JD4Q8Z6M2V7T3K5W9X1Y0B8C".to_owned()),
            message: Some("We reconcile 3,000 Stripe payouts a month by hand.".to_owned()),
            assigned_to: None,
            extra: extra(&[
                ("consent", "true"),
                ("interests", "Invoicing, Reconciliation"),
                ("seats", "12"),
                ("submitted_at", "2026-11-20T09:14:02Z"),
                ("team_size", "50-200"),
                ("typeform_form_id", "lT4Z3j"),
                ("typeform_token", "a3a12ec67a1365927098a606107fac15"),
                ("utm_campaign", "autumn"),
            ]),
        }
    );
    assert_eq!(reply, None);
}

#[test]
fn typeform_signatures_that_do_not_match_are_rejected_with_401() {
    let config = typeform_config();
    let good = sign::typeform("tf-secret-from-env", TYPEFORM.as_bytes());
    let tampered = TYPEFORM.replace("kjohnson@", "mallory@");
    let wrong_secret = sign::typeform("guess", TYPEFORM.as_bytes());
    let cases: [(&[u8], Option<&str>, &str); 5] = [
        (tampered.as_bytes(), Some(&good), "does not match"),
        (TYPEFORM.as_bytes(), Some(&wrong_secret), "does not match"),
        (TYPEFORM.as_bytes(), None, "missing typeform-signature"),
        (
            TYPEFORM.as_bytes(),
            Some("sha1=abc"),
            "does not start with `sha256=`",
        ),
        (TYPEFORM.as_bytes(), Some("sha256=***"), "not base64"),
    ];
    for (body, signature, words) in cases {
        let headers: Vec<(&str, &str)> = signature
            .map(|signature| ("Typeform-Signature", signature))
            .into_iter()
            .collect();
        check_reject(
            intake(&config, &request("application/json", body, &headers)),
            401,
            words,
        );
    }
}

#[test]
fn typeform_answers_without_readable_refs_map_by_type_and_pointer() {
    let body = json!({
        "event_id": "evt-2",
        "event_type": "form_response",
        "form_response": {
            "form_id": "ab12CD",
            "answers": [
                {"type": "text", "text": "Mary", "field": {"id": "f1", "type": "short_text", "ref": "5d8f2c1e-9b7a-4c3d-8e6f-1a2b3c4d5e6f"}},
                {"type": "text", "text": "Jackson", "field": {"id": "f2", "type": "short_text", "ref": "7e9a1b2c-3d4e-4f5a-8b6c-7d8e9f0a1b2c"}},
                {"type": "email", "email": "mary@wind-tunnel.example", "field": {"id": "f3", "type": "email", "ref": "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"}}
            ]
        }
    })
    .to_string();
    let config = config(json!({"fields": {
        "first_name": ["/form_response/answers/0/text"],
        "last_name": ["/form_response/answers/1/text"]
    }}));
    let (lead, _) = accepted(intake(
        &config,
        &request("application/json", body.as_bytes(), &[]),
    ));
    assert_eq!(lead.name, "Mary Jackson");
    assert_eq!(lead.email.as_deref(), Some("mary@wind-tunnel.example"));
    assert_eq!(lead.external_id.as_deref(), Some("evt-2"));
    assert!(!lead
        .extra
        .contains_key("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"));
}

#[test]
fn flat_json_with_a_custom_mapping_joins_first_and_last_name() {
    let body = br#"{"data":{"id":"sub_981"},"given":"Alan","family":"Turing","contact_email":"alan@bletchley.example","org":"GC&CS"}"#;
    let config = config(json!({"fields": {
        "first_name": ["given"], "last_name": ["family"],
        "email": ["contact_email"], "company": ["org"]
    }}));
    let (lead, _) = accepted(intake(&config, &request("application/json", body, &[])));
    assert_eq!(lead.name, "Alan Turing");
    assert_eq!(lead.email.as_deref(), Some("alan@bletchley.example"));
    assert_eq!(lead.company.as_deref(), Some("GC&CS"));
    assert_eq!(lead.external_id, None);
    assert!(lead.extra.is_empty(), "{:?}", lead.extra);
}

#[test]
fn the_event_id_comes_from_the_pointer_then_event_id_then_the_webhook_id_header() {
    let body = br#"{"event_id":"top-level","data":{"id":"sub_981"},"email":"a@b.example"}"#;
    let header = [("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")];
    let external_id = |settings: serde_json::Value, body: &[u8]| {
        accepted(intake(
            &config(settings),
            &request("application/json", body, &header),
        ))
        .0
        .external_id
    };
    assert_eq!(
        external_id(json!({"event_id": "/data/id"}), body),
        Some("sub_981".to_owned())
    );
    assert_eq!(external_id(json!({}), body), Some("top-level".to_owned()));
    assert_eq!(
        external_id(json!({"event_id": "/nope"}), br#"{"email":"a@b.example"}"#),
        Some("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W".to_owned())
    );
}

const HEX_SECRET: &str = "whsec_generic_0123456789";

fn hex_config(tolerance: u32) -> Config {
    config(
        json!({"signature": {"style": "hex", "secret": HEX_SECRET, "tolerance_secs": tolerance}}),
    )
}

fn hex_request(body: &[u8], signature: &str, timestamp: &str) -> IntakeRequest {
    request(
        "application/json",
        body,
        &[("x-signature", signature), ("x-timestamp", timestamp)],
    )
}

#[test]
fn hex_signatures_within_the_window_are_accepted() {
    let body = br#"{"email":"signed@example.com"}"#;
    for offset in [0, -300, 300] {
        let timestamp = (NOW + offset).to_string();
        let signature = sign::hex(HEX_SECRET, &timestamp, body);
        let (lead, _) = accepted(intake(
            &hex_config(300),
            &hex_request(body, &signature, &timestamp),
        ));
        assert_eq!(lead.email.as_deref(), Some("signed@example.com"));
        let prefixed = format!("sha256={}", signature.to_uppercase());
        accepted(intake(
            &hex_config(300),
            &hex_request(body, &prefixed, &timestamp),
        ));
    }
}

#[test]
fn hex_signatures_reject_replays_tampering_and_garbage_with_401() {
    let body = br#"{"email":"signed@example.com"}"#;
    let now = NOW.to_string();
    let good = sign::hex(HEX_SECRET, &now, body);
    let stale = (NOW - 301).to_string();
    let stale_signature = sign::hex(HEX_SECRET, &stale, body);
    let future = (NOW + 301).to_string();
    let future_signature = sign::hex(HEX_SECRET, &future, body);
    let config = hex_config(300);
    let check =
        |request: IntakeRequest, words: &str| check_reject(intake(&config, &request), 401, words);
    check(
        hex_request(body, &stale_signature, &stale),
        "outside the 300 s replay window",
    );
    check(
        hex_request(body, &future_signature, &future),
        "outside the 300 s replay window",
    );
    check(
        hex_request(br#"{"email":"evil@example.com"}"#, &good, &now),
        "x-signature does not match",
    );
    check(
        hex_request(body, &good, &(NOW + 1).to_string()),
        "x-signature does not match",
    );
    check(hex_request(body, "zz", &now), "not a hex signature");
    check(hex_request(body, &good, "yesterday"), "not a unix time");
    check(
        request("application/json", body, &[("x-timestamp", &now)]),
        "missing x-signature",
    );
    check(
        request("application/json", body, &[("x-signature", &good)]),
        "missing x-timestamp",
    );
}

#[test]
fn hex_signatures_without_a_timestamp_header_sign_the_body_alone() {
    let body = b"email=a%40b.example";
    let config = config(json!({"signature": {
        "style": "hex", "header": "X-Hub-Signature-256", "timestamp_header": null, "secret": "s3cr3t"
    }}));
    let signature = {
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cr3t").unwrap_or_else(|e| panic!("{e}"));
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let headers = [("x-hub-signature-256", signature.as_str())];
    let (lead, _) = accepted(intake(
        &config,
        &request("application/x-www-form-urlencoded", body, &headers),
    ));
    assert_eq!(lead.email.as_deref(), Some("a@b.example"));
}

#[test]
fn a_signature_check_runs_before_the_honeypot() {
    let config =
        config(json!({"honeypot": "website", "signature": {"style": "typeform", "secret": "x"}}));
    let outcome = intake(
        &config,
        &request("application/x-www-form-urlencoded", b"website=spam", &[]),
    );
    check_reject(outcome, 401, "missing typeform-signature");
}

#[test]
fn a_lead_without_email_and_phone_is_rejected_naming_the_fields() {
    let outcome = intake(
        &config(json!({})),
        &request(
            "application/x-www-form-urlencoded",
            b"name=Nobody&message=hi&email=+",
            &[],
        ),
    );
    check_reject(
        outcome,
        422,
        "missing email and phone: none of the fields email, e-mail",
    );
    let outcome = intake(
        &config(json!({"fields": {"email": ["mail_addr"], "phone": ["cell"]}})),
        &request(
            "application/json",
            br#"{"email":"ignored@example.com"}"#,
            &[],
        ),
    );
    check_reject(
        outcome,
        422,
        "none of the fields mail_addr or cell is filled",
    );
}

#[test]
fn a_malformed_email_is_rejected_with_422() {
    for email in ["not-an-email", "a@", "@b", "a@b@c", "a b@c.example"] {
        let body = json!({"email": email}).to_string();
        let outcome = intake(
            &config(json!({})),
            &request("application/json", body.as_bytes(), &[]),
        );
        check_reject(outcome, 422, "is not an e-mail address");
    }
}

#[test]
fn a_lead_with_only_a_phone_is_named_after_it() {
    let (lead, _) = accepted(intake(
        &config(json!({})),
        &request(
            "application/x-www-form-urlencoded",
            b"phone=%2B49+30+1234567",
            &[],
        ),
    ));
    assert_eq!(lead.name, "+49 30 1234567");
    assert_eq!(lead.email, None);
}

#[test]
fn other_methods_and_bodies_are_refused() {
    let mut get = request("application/x-www-form-urlencoded", b"", &[]);
    get.method = "GET".to_owned();
    check_reject(
        intake(&config(json!({})), &get),
        405,
        "method GET is not allowed",
    );
    check_reject(
        intake(&config(json!({})), &request("text/csv", b"a,b", &[])),
        415,
        "unsupported content type `text/csv`",
    );
    check_reject(
        intake(
            &config(json!({})),
            &request("application/json", b"\x00\xff", &[]),
        ),
        400,
        "body is not valid json",
    );
}

#[test]
fn the_plugin_trait_configures_and_answers_intake() {
    let manifest = Webform::manifest();
    assert_eq!(manifest.name, "webform");
    assert_eq!(manifest.roles, vec![settled_plugin_api::Role::Intake]);
    let error = Webform::configure(json!({"honeypot": 3})).err();
    assert_eq!(
        error.and_then(|error| error.location),
        Some("honeypot".to_owned())
    );
    let plugin = Webform::configure(json!({"source": "landing"})).unwrap_or_else(|e| panic!("{e}"));
    let outcome = plugin.intake(request(
        "application/x-www-form-urlencoded",
        CONTACT_FORM.as_bytes(),
        &[],
    ));
    let (lead, _) = accepted(outcome.unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(lead.source, "landing");
}
