//! `Stripe-Signature` verification: `t=<unix>,v1=<hex>[,v1=<hex>...][,v0=...]`, HMAC-SHA256 over `"{t}.{raw body}"`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Check a `Stripe-Signature` header against the raw body. Any `v1` signature that matches accepts
/// (Stripe sends several while a secret is being rolled); `v0` (test-mode legacy) is never trusted.
/// The error is the reason for a 401 answer.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &[u8],
    received_at: i64,
    tolerance_secs: i64,
) -> Result<(), String> {
    let header = header.ok_or("stripe signature header missing")?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("stripe signature header has no timestamp `t=`")?;
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| format!("stripe signature timestamp `{timestamp}` is not a unix time"))?;
    if signatures.is_empty() {
        return Err("stripe signature header has no `v1=` signature".to_owned());
    }
    if received_at.abs_diff(seconds) > tolerance_secs.unsigned_abs() {
        return Err(format!(
            "stripe signature timestamp is outside the {tolerance_secs} s tolerance"
        ));
    }
    let mut mac = new_mac(secret);
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    // Every candidate is checked, so the time taken does not depend on which one matched.
    let mut matched = false;
    for signature in signatures {
        if let Ok(bytes) = hex::decode(signature) {
            matched |= mac.clone().verify_slice(&bytes).is_ok();
        }
    }
    if matched {
        Ok(())
    } else {
        Err("stripe signature does not match the body".to_owned())
    }
}

fn new_mac(secret: &[u8]) -> HmacSha256 {
    // An HMAC key may have any length, so this cannot fail; the fallback only satisfies the type.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| HmacSha256::new(&Default::default()))
}

/// The hex `v1` signature Stripe would send for this timestamp and body.
#[cfg(test)]
pub(crate) fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = new_mac(secret.as_bytes());
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_8x3Yb0Qe2rT9";
    const NOW: i64 = 1_795_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"ping"}"#;

    fn check(header: Option<&str>, expected: Result<(), &str>) {
        let got = verify(header, BODY, SECRET.as_bytes(), NOW, 300);
        assert_eq!(got, expected.map_err(str::to_owned), "header {header:?}");
    }

    #[test]
    fn signing_matches_an_independent_implementation() {
        // Computed with Python's hmac module over "1795000000." + BODY.
        let expected = "0731b3733982502b2a6750c98d01d9e91e1f431373fc92a115e9571505f1f71b";
        assert_eq!(sign(SECRET, NOW, BODY), expected);
        check(Some(&format!("t={NOW},v1={expected}")), Ok(()));
    }

    #[test]
    fn a_matching_v1_signature_is_accepted() {
        let good = sign(SECRET, NOW, BODY);
        check(Some(&format!("t={NOW},v1={good}")), Ok(()));
        check(
            Some(&format!(
                "t={NOW},v1={},v0=6ffbb59b2300aae63f2",
                good.to_uppercase()
            )),
            Ok(()),
        );
        check(
            Some(&format!(
                "t={},v1={}",
                NOW - 300,
                sign(SECRET, NOW - 300, BODY)
            )),
            Ok(()),
        );
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let good = sign(SECRET, NOW, BODY);
        let old_secret = sign("whsec_rolled_away", NOW, BODY);
        check(Some(&format!("t={NOW},v1={old_secret},v1={good}")), Ok(()));
        check(Some(&format!("t={NOW}, v1=nothex, v1={good}")), Ok(()));
    }

    #[test]
    fn bad_or_stale_signatures_are_refused() {
        let good = sign(SECRET, NOW, BODY);
        let stale = NOW - 301;
        check(None, Err("stripe signature header missing"));
        check(
            Some(""),
            Err("stripe signature header has no timestamp `t=`"),
        );
        check(
            Some(&format!("v1={good}")),
            Err("stripe signature header has no timestamp `t=`"),
        );
        check(
            Some("t=soon,v1=00"),
            Err("stripe signature timestamp `soon` is not a unix time"),
        );
        check(
            Some(&format!("t={NOW}")),
            Err("stripe signature header has no `v1=` signature"),
        );
        check(
            Some(&format!("t={NOW},v0={good}")),
            Err("stripe signature header has no `v1=` signature"),
        );
        check(
            Some(&format!("t={stale},v1={}", sign(SECRET, stale, BODY))),
            Err("stripe signature timestamp is outside the 300 s tolerance"),
        );
        let future = NOW + 301;
        check(
            Some(&format!("t={future},v1={}", sign(SECRET, future, BODY))),
            Err("stripe signature timestamp is outside the 300 s tolerance"),
        );
        check(
            Some(&format!("t={},v1={good}", NOW + 1)),
            Err("stripe signature does not match the body"),
        );
        check(
            Some(&format!("t={NOW},v1={}", sign("whsec_other", NOW, BODY))),
            Err("stripe signature does not match the body"),
        );
        check(
            Some(&format!("t={NOW},v1=zz")),
            Err("stripe signature does not match the body"),
        );
    }
}
