use super::*;
use serde_json::json;

// The example of the Standard Webhooks specification (and the svix libraries' tests).
const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SPEC_TIMESTAMP: i64 = 1614265330;
const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn webhook(settings: serde_json::Value) -> Result<Webhook, PluginError> {
    Webhook::configure(settings)
}

fn input(response: Option<HttpResponseSpec>) -> SinkInput {
    SinkInput {
        event: json!({"id": 42, "type": "invoice.issued", "at": "2026-12-06T10:00:00Z", "entity": "invoice",
            "entity_id": "inv_00000001", "data": {"number": "INV-2026-001", "total": "100.00", "currency": "EUR"}}),
        attempt: 1,
        now: SPEC_TIMESTAMP,
        state: serde_json::Value::Null,
        response,
    }
}

fn answer(status: u16, headers: &[(&str, &str)]) -> HttpResponseSpec {
    HttpResponseSpec {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: Vec::new(),
    }
}

#[test]
fn the_signature_matches_the_specification_example() {
    let hook = webhook(json!({"url": "http://127.0.0.1:1/", "secret": SPEC_SECRET})).unwrap();
    assert_eq!(
        hook.signature(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes()),
        SPEC_SIGNATURE
    );
}

#[test]
fn every_secret_of_a_rotation_signs() {
    let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let hook =
        webhook(json!({"url": "http://127.0.0.1:1/", "secrets": [other, SPEC_SECRET]})).unwrap();
    let header = hook.signature(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes());
    let parts: Vec<&str> = header.split(' ').collect();
    assert_eq!(parts.len(), 2, "{header}");
    assert_eq!(parts[1], SPEC_SIGNATURE);
    assert_ne!(parts[0], SPEC_SIGNATURE);
}

#[test]
fn the_request_carries_id_timestamp_signature_and_the_invoice_fields() {
    let hook = webhook(json!({"url": "http://127.0.0.1:1/hook", "secret": SPEC_SECRET})).unwrap();
    let SinkStep::Request { request, .. } = hook.step(&input(None)).unwrap() else {
        panic!("expected a request");
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(request.method, "POST");
    assert_eq!(header("webhook-id"), "evt_42");
    assert_eq!(header("webhook-timestamp"), SPEC_TIMESTAMP.to_string());
    assert_eq!(
        header("webhook-signature"),
        hook.signature("evt_42", SPEC_TIMESTAMP, &request.body)
    );
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["type"], "invoice.issued");
    assert_eq!(body["data"]["number"], "INV-2026-001");
    assert_eq!(body["data"]["total"], "100.00");
    assert_eq!(body["data"]["event_id"], 42);
    assert_eq!(body["data"]["entity_id"], "inv_00000001");
}

#[test]
fn answers_map_to_done_retry_or_failed() {
    let hook = webhook(json!({"url": "http://127.0.0.1:1/", "secret": SPEC_SECRET})).unwrap();
    let step = |status, headers: &[(&str, &str)]| {
        hook.step(&input(Some(answer(status, headers)))).unwrap()
    };
    assert_eq!(step(204, &[]), SinkStep::Done);
    assert!(matches!(
        step(429, &[("retry-after", "7")]),
        SinkStep::RetryLater { after_secs: 7, .. }
    ));
    assert!(matches!(
        step(503, &[]),
        SinkStep::RetryLater { after_secs: 0, .. }
    ));
    assert!(matches!(
        step(500, &[]),
        SinkStep::RetryLater { after_secs: 0, .. }
    ));
    assert!(matches!(step(401, &[]), SinkStep::Failed { reason } if reason.contains("401")));
    assert!(matches!(step(400, &[]), SinkStep::Failed { .. }));
}

#[test]
fn bad_settings_name_their_key() {
    let err = webhook(json!({"secret": SPEC_SECRET})).unwrap_err();
    assert_eq!(err.location.as_deref(), Some("url"));
    let err = webhook(json!({"url": "http://x/"})).unwrap_err();
    assert_eq!(err.location.as_deref(), Some("secret"));
    let err =
        webhook(json!({"url": "http://x/", "secrets": [SPEC_SECRET, "whsec_%%%"]})).unwrap_err();
    assert_eq!(err.location.as_deref(), Some("secrets[1]"));
    let err = webhook(json!({"url": "http://x/", "secret": "whsec_c2hvcnQ="})).unwrap_err();
    assert!(err.message.contains("24 to 64 bytes"), "{err}");
}
