//! Tryton's JSON-RPC over HTTP: requests (`POST /<db>/` with `{"id", "method", "params"}`), the session header, typed
//! values (`Decimal`, `date`, `datetime` travel as `{"__class__": ...}` objects) and answers.

use base64::Engine as _;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use settled_plugin_api::chrono::{NaiveDate, NaiveDateTime};
use settled_plugin_api::{HttpRequestSpec, HttpResponseSpec};

/// A logged-in session: the `Authorization` header value and the user's preferences, sent as every call's context.
#[derive(Debug, Clone)]
pub struct Session {
    /// `Session base64(login:uid:key)`.
    pub auth: String,
    /// `model.res.user.get_preferences` of the user.
    pub context: Value,
}

impl Session {
    /// The header value for a login answer `[uid, key]`.
    pub fn header(login: &str, answer: &Value) -> Option<String> {
        let uid = answer.get(0)?.as_i64()?;
        let key = answer.get(1)?.as_str()?;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{login}:{uid}:{key}"));
        Some(format!("Session {token}"))
    }
}

/// A JSON-RPC call to `url` (the database's URL, ending in `/`).
pub fn request(url: &str, auth: Option<&str>, method: &str, params: Value) -> HttpRequestSpec {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(auth) = auth {
        headers.push(("authorization".to_string(), auth.to_string()));
    }
    HttpRequestSpec {
        method: "POST".into(),
        url: url.to_string(),
        headers,
        body: serde_json::to_vec(&json!({"id": 1, "method": method, "params": params}))
            .unwrap_or_default(),
    }
}

/// Why a call gave no result.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// 401: the session expired or was never valid (on `common.db.login`: bad credentials).
    Unauthorized,
    /// Any other HTTP status, with the start of the body: 5xx and 429 are worth a retry.
    Http(u16, String),
    /// Tryton answered with an error (a user error, a missing access right, a bad domain).
    Tryton(String),
    /// Not a JSON-RPC answer.
    Garbled(String),
}

impl Failure {
    /// For a log line or a dead letter.
    pub fn describe(&self, doing: &str) -> String {
        match self {
            Failure::Unauthorized => format!("Tryton refused the credentials {doing}"),
            Failure::Http(status, text) => format!("Tryton answered {status} {doing}: {text}"),
            Failure::Tryton(message) => format!("Tryton refused {doing}: {message}"),
            Failure::Garbled(e) => format!("Tryton's answer {doing} is not JSON-RPC: {e}"),
        }
    }

    /// Whether trying again later may work (the server is down or busy).
    pub fn transient(&self) -> bool {
        matches!(self, Failure::Http(status, _) if *status == 408 || *status == 429 || *status >= 500)
    }
}

/// The `result` of an answer.
pub fn result(response: &HttpResponseSpec) -> Result<Value, Failure> {
    if response.status == 401 {
        return Err(Failure::Unauthorized);
    }
    if !(200..300).contains(&response.status) {
        let text = String::from_utf8_lossy(&response.body);
        return Err(Failure::Http(
            response.status,
            text.trim().chars().take(200).collect(),
        ));
    }
    let answer: Value =
        serde_json::from_slice(&response.body).map_err(|e| Failure::Garbled(e.to_string()))?;
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        // `["UserError", ["message", "description", ...]]` or `["Exception text", "traceback"]`.
        let message = match error {
            Value::Array(parts) => match parts.get(1) {
                Some(Value::Array(args)) => args
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => parts
                    .first()
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            },
            other => other.to_string(),
        };
        return Err(Failure::Tryton(message));
    }
    answer
        .get("result")
        .cloned()
        .ok_or_else(|| Failure::Garbled("no `result`".into()))
}

/// A Decimal as Tryton's JSON-RPC carries it.
pub fn decimal(d: Decimal) -> Value {
    json!({"__class__": "Decimal", "decimal": d.to_string()})
}

/// A date as Tryton's JSON-RPC carries it.
pub fn date(d: NaiveDate) -> Value {
    use settled_plugin_api::chrono::Datelike;
    json!({"__class__": "date", "year": d.year(), "month": d.month(), "day": d.day()})
}

/// A typed Decimal (or a plain number or string) back to a Decimal.
pub fn to_decimal(v: &Value) -> Option<Decimal> {
    match v {
        Value::Object(o) => o.get("decimal")?.as_str()?.parse().ok(),
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// A typed date back to a date.
pub fn to_date(v: &Value) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(
        i32::try_from(v.get("year")?.as_i64()?).ok()?,
        u32::try_from(v.get("month")?.as_i64()?).ok()?,
        u32::try_from(v.get("day")?.as_i64()?).ok()?,
    )
}

/// A typed datetime back to a datetime.
pub fn to_datetime(v: &Value) -> Option<NaiveDateTime> {
    let day = to_date(v)?;
    day.and_hms_micro_opt(
        u32::try_from(v.get("hour")?.as_i64()?).ok()?,
        u32::try_from(v.get("minute")?.as_i64()?).ok()?,
        u32::try_from(v.get("second")?.as_i64()?).ok()?,
        u32::try_from(v.get("microsecond").and_then(Value::as_i64).unwrap_or(0)).ok()?,
    )
}

/// A datetime as Tryton's JSON-RPC carries it.
pub fn datetime(t: NaiveDateTime) -> Value {
    use settled_plugin_api::chrono::{Datelike, Timelike};
    json!({"__class__": "datetime", "year": t.year(), "month": t.month(), "day": t.day(),
        "hour": t.hour(), "minute": t.minute(), "second": t.second(), "microsecond": t.nanosecond() / 1000})
}

/// Context plus extra keys.
pub fn with(context: &Value, extra: Value) -> Value {
    let mut out = context.clone();
    if let (Some(out), Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
    out
}
