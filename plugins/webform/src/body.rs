//! Request bodies as a flat list of named values: urlencoded and multipart form posts, Typeform-like and flat JSON.

use serde_json::Value;

/// How the body was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`.
    UrlEncoded,
    /// `multipart/form-data`.
    Multipart,
    /// A JSON object (a webhook).
    Json,
}

impl BodyKind {
    /// True for bodies a browser sends from a plain HTML form.
    pub fn is_html_form(self) -> bool {
        matches!(self, BodyKind::UrlEncoded | BodyKind::Multipart)
    }
}

/// A decoded submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// How the body was encoded.
    pub kind: BodyKind,
    /// Named values, each name once (repeated names joined with `, `): form fields in body order,
    /// the top-level scalars of a flat JSON body (in key order), or a Typeform response's answers
    /// (by `field.ref`) and hidden fields.
    pub fields: Vec<(String, String)>,
    /// The parsed JSON body, for JSON pointers.
    pub json: Option<Value>,
    /// Uploaded files, ignored: (field name, `filename (content type, N bytes)`).
    pub files: Vec<(String, String)>,
    /// Typeform answers as (answer type such as `email` or `phone_number`, field key, value),
    /// for lead fields the mapping does not name.
    pub typed_answers: Vec<TypedAnswer>,
    /// Facts about the submission worth keeping in the lead's `extra` (Typeform form id, submission time).
    pub meta: Vec<(String, String)>,
}

/// A Typeform answer with its type: (answer type, field key, value).
pub type TypedAnswer = (String, String, String);

/// Why a body cannot be read: answered to the sender with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// HTTP status, 400 or 415.
    pub status: u16,
    /// A lowercase phrase.
    pub reason: String,
}

fn bad_request(reason: impl Into<String>) -> BodyError {
    BodyError {
        status: 400,
        reason: reason.into(),
    }
}

/// Decode `body` according to its `content-type` header (sniffed as JSON or urlencoded when there is none).
pub fn decode(content_type: Option<&str>, body: &[u8]) -> Result<Submission, BodyError> {
    let media_type = content_type
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match media_type.as_str() {
        "application/x-www-form-urlencoded" => Ok(form(
            BodyKind::UrlEncoded,
            parse_urlencoded(body)?,
            Vec::new(),
        )),
        "multipart/form-data" => {
            let boundary = content_type
                .and_then(|value| header_param(value, "boundary"))
                .filter(|boundary| !boundary.is_empty())
                .ok_or_else(|| bad_request("multipart/form-data content-type has no boundary"))?;
            let (fields, files) = parse_multipart(body, &boundary)?;
            Ok(form(BodyKind::Multipart, fields, files))
        }
        "application/json" => decode_json(body),
        other if other.starts_with("application/") && other.ends_with("+json") => decode_json(body),
        "" if body.trim_ascii_start().starts_with(b"{") => decode_json(body),
        "" => Ok(form(
            BodyKind::UrlEncoded,
            parse_urlencoded(body)?,
            Vec::new(),
        )),
        other => Err(BodyError {
            status: 415,
            reason: format!("unsupported content type `{other}`"),
        }),
    }
}

fn form(kind: BodyKind, fields: Vec<(String, String)>, files: Vec<(String, String)>) -> Submission {
    Submission {
        kind,
        fields: merge_repeated(fields),
        json: None,
        files,
        typed_answers: Vec::new(),
        meta: Vec::new(),
    }
}

/// Checkbox groups and multi-selects repeat a name; keep one entry per name, values joined.
fn merge_repeated(fields: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        match merged.iter_mut().find(|(seen, _)| *seen == name) {
            Some((_, joined)) => {
                if joined.is_empty() {
                    *joined = value;
                } else if !value.is_empty() {
                    joined.push_str(", ");
                    joined.push_str(&value);
                }
            }
            None => merged.push((name, value)),
        }
    }
    merged
}

/// `application/x-www-form-urlencoded` pairs, decoded as the WHATWG URL standard does
/// (`+` is a space, a `%` not followed by two hex digits stays literal).
pub fn parse_urlencoded(body: &[u8]) -> Result<Vec<(String, String)>, BodyError> {
    let mut fields = Vec::new();
    for pair in body
        .split(|byte| *byte == b'&')
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = match pair.iter().position(|byte| *byte == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        let name = percent_decode(name)
            .map_err(|_| bad_request("a form field name is not valid utf-8"))?;
        let value = percent_decode(value)
            .map_err(|_| bad_request(format!("form field `{name}` is not valid utf-8")))?;
        fields.push((name, value));
    }
    Ok(fields)
}

fn percent_decode(raw: &[u8]) -> Result<String, std::string::FromUtf8Error> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut at = 0;
    while at < raw.len() {
        match raw[at] {
            b'+' => bytes.push(b' '),
            b'%' => match (
                raw.get(at + 1).and_then(hex_digit),
                raw.get(at + 2).and_then(hex_digit),
            ) {
                (Some(high), Some(low)) => {
                    bytes.push(high << 4 | low);
                    at += 2;
                }
                _ => bytes.push(b'%'),
            },
            byte => bytes.push(byte),
        }
        at += 1;
    }
    String::from_utf8(bytes)
}

fn hex_digit(byte: &u8) -> Option<u8> {
    char::from(*byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

/// A parameter of a header value such as `multipart/form-data; boundary="x"` or
/// `form-data; name="a"; filename="b.pdf"`; the name is case-insensitive, quotes and backslash escapes are removed.
pub fn header_param(value: &str, wanted: &str) -> Option<String> {
    let mut rest = value.split_once(';')?.1;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return None;
        }
        let (name, after_name) = match rest.find(['=', ';']) {
            Some(at) if rest[at..].starts_with('=') => (rest[..at].trim(), &rest[at + 1..]),
            Some(at) => {
                rest = &rest[at..];
                continue;
            }
            None => return None,
        };
        let after_name = after_name.trim_start();
        let (param, after_value) = if let Some(quoted) = after_name.strip_prefix('"') {
            let mut param = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((at, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            param.push(escaped);
                        }
                    }
                    '"' => {
                        end = at + 1;
                        break;
                    }
                    c => param.push(c),
                }
            }
            (param, &quoted[end..])
        } else {
            let end = after_name.find(';').unwrap_or(after_name.len());
            (after_name[..end].trim().to_owned(), &after_name[end..])
        };
        if name.eq_ignore_ascii_case(wanted) {
            return Some(param);
        }
        rest = after_value;
    }
}

type Parts = (Vec<(String, String)>, Vec<(String, String)>);

/// `multipart/form-data` (RFC 7578): text parts become fields; parts with a `filename` are only described.
pub fn parse_multipart(body: &[u8], boundary: &str) -> Result<Parts, BodyError> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut fields = Vec::new();
    let mut files = Vec::new();
    // The first delimiter may follow a preamble; later ones always follow a CRLF.
    let mut at = if body.starts_with(delimiter) {
        delimiter.len()
    } else {
        let crlf_delimiter = [b"\r\n", delimiter].concat();
        find(body, &crlf_delimiter, 0)
            .map(|found| found + crlf_delimiter.len())
            .ok_or_else(|| bad_request("multipart body does not contain its boundary"))?
    };
    let next_delimiter = [b"\r\n", delimiter].concat();
    for number in 1.. {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok((fields, files));
        }
        // Transport padding (spaces, tabs) may sit between the delimiter and its CRLF.
        let padding = rest
            .iter()
            .take_while(|byte| matches!(byte, b' ' | b'\t'))
            .count();
        if !rest[padding..].starts_with(b"\r\n") {
            return Err(bad_request(format!(
                "multipart part {number}: boundary line is not followed by a line break"
            )));
        }
        let headers_start = at + padding + 2;
        let (headers, content_start) = if body[headers_start..].starts_with(b"\r\n") {
            (&body[headers_start..headers_start], headers_start + 2)
        } else {
            let end = find(body, b"\r\n\r\n", headers_start).ok_or_else(|| {
                bad_request(format!(
                    "multipart part {number}: headers are not terminated"
                ))
            })?;
            (&body[headers_start..end], end + 4)
        };
        let content_end = find(body, &next_delimiter, content_start).ok_or_else(|| {
            bad_request(format!(
                "multipart part {number}: body is truncated (no closing boundary)"
            ))
        })?;
        let content = &body[content_start..content_end];
        at = content_end + next_delimiter.len();

        let headers = std::str::from_utf8(headers).map_err(|_| {
            bad_request(format!(
                "multipart part {number}: headers are not valid utf-8"
            ))
        })?;
        let mut disposition = None;
        let mut content_type = None;
        for line in headers.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad_request(format!(
                    "multipart part {number}: malformed header line `{line}`"
                )));
            };
            if name.trim().eq_ignore_ascii_case("content-disposition") {
                disposition = Some(value.trim());
            } else if name.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim());
            }
        }
        let disposition = disposition.ok_or_else(|| {
            bad_request(format!(
                "multipart part {number}: no content-disposition header"
            ))
        })?;
        let name = header_param(disposition, "name").ok_or_else(|| {
            bad_request(format!(
                "multipart part {number}: content-disposition has no name"
            ))
        })?;
        match header_param(disposition, "filename") {
            // A file input left empty still sends a part, with an empty filename and no content.
            Some(filename) if filename.is_empty() && content.is_empty() => {}
            Some(filename) => files.push((
                name,
                format!(
                    "{filename} ({}, {} bytes)",
                    content_type.unwrap_or("application/octet-stream"),
                    content.len()
                ),
            )),
            None if name == "_charset_" => {}
            None => {
                let value = String::from_utf8(content.to_vec())
                    .map_err(|_| bad_request(format!("form field `{name}` is not valid utf-8")))?;
                fields.push((name, value));
            }
        }
    }
    Ok((fields, files))
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|found| found + from)
}

fn decode_json(body: &[u8]) -> Result<Submission, BodyError> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|error| bad_request(format!("body is not valid json: {error}")))?;
    let Value::Object(object) = &json else {
        return Err(bad_request("json body is not an object"));
    };
    let mut submission = Submission {
        kind: BodyKind::Json,
        fields: Vec::new(),
        json: None,
        files: Vec::new(),
        typed_answers: Vec::new(),
        meta: Vec::new(),
    };
    if let Some(Value::Array(answers)) = json.pointer("/form_response/answers") {
        typeform(&json, answers, &mut submission);
    } else {
        for (name, value) in object {
            if let Some(value) = scalar_text(value) {
                submission.fields.push((name.clone(), value));
            }
        }
    }
    submission.fields = merge_repeated(submission.fields);
    submission.json = Some(json);
    Ok(submission)
}

/// A Typeform `form_response`: answers keyed by their field's `ref` (or `id`), plus hidden fields.
fn typeform(json: &Value, answers: &[Value], submission: &mut Submission) {
    for answer in answers {
        let Some(kind) = answer.get("type").and_then(Value::as_str) else {
            continue;
        };
        let field = answer.get("field");
        let key = field
            .and_then(|field| field.get("ref").or_else(|| field.get("id")))
            .and_then(Value::as_str);
        let Some(value) = typeform_answer(kind, answer) else {
            continue;
        };
        let key = key.unwrap_or_default().to_owned();
        if !key.is_empty() {
            submission.fields.push((key.clone(), value.clone()));
        }
        submission.typed_answers.push((kind.to_owned(), key, value));
    }
    if let Some(Value::Object(hidden)) = json.pointer("/form_response/hidden") {
        for (name, value) in hidden {
            if let Some(value) = scalar_text(value) {
                submission.fields.push((name.clone(), value));
            }
        }
    }
    for (pointer, name) in [
        ("/form_response/form_id", "typeform_form_id"),
        ("/form_response/token", "typeform_token"),
        ("/form_response/submitted_at", "submitted_at"),
    ] {
        if let Some(value) = json.pointer(pointer).and_then(scalar_text) {
            submission.meta.push((name.to_owned(), value));
        }
    }
}

/// The value of one Typeform answer, which sits under the key named by its `type`.
fn typeform_answer(kind: &str, answer: &Value) -> Option<String> {
    let value = answer.get(kind)?;
    match kind {
        "choice" => value
            .get("label")
            .or_else(|| value.get("other"))
            .and_then(scalar_text),
        "choices" => {
            let mut labels: Vec<String> = value
                .get("labels")
                .and_then(Value::as_array)
                .map(|labels| labels.iter().filter_map(scalar_text).collect())
                .unwrap_or_default();
            labels.extend(value.get("other").and_then(scalar_text));
            (!labels.is_empty()).then(|| labels.join(", "))
        }
        _ => scalar_text(value),
    }
}

/// Strings, numbers and booleans as text; arrays of those joined with `, `; anything else is not a value.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Array(items) => {
            let texts: Vec<String> = items
                .iter()
                .filter(|item| !item.is_array())
                .filter_map(scalar_text)
                .collect();
            (!texts.is_empty()).then(|| texts.join(", "))
        }
        Value::Null | Value::Object(_) => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn check_urlencoded(body: &str, expected: &[(&str, &str)]) {
        assert_eq!(
            parse_urlencoded(body.as_bytes()),
            Ok(pairs(expected)),
            "{body}"
        );
    }

    #[test]
    fn urlencoded_bodies_decode_like_browsers_send_them() {
        check_urlencoded("", &[]);
        check_urlencoded(
            "name=Ada+Lovelace&email=ada%40example.com",
            &[("name", "Ada Lovelace"), ("email", "ada@example.com")],
        );
        check_urlencoded("a=1&&b=&c", &[("a", "1"), ("b", ""), ("c", "")]);
        check_urlencoded("msg=50%25+off%zz%4", &[("msg", "50% off%zz%4")]);
        check_urlencoded(
            "city=M%C3%BCnchen&x=a%3Db",
            &[("city", "München"), ("x", "a=b")],
        );
        check_urlencoded("your%2Dname=J", &[("your-name", "J")]);
    }

    #[test]
    fn urlencoded_invalid_utf8_names_the_field() {
        let error = parse_urlencoded(b"name=%FF%FE").err();
        assert_eq!(
            error,
            Some(bad_request("form field `name` is not valid utf-8"))
        );
    }

    #[test]
    fn header_params_handle_quotes_escapes_and_case() {
        let value = r#"form-data; name="a;b"; filename="say \"hi\".txt"; X=plain"#;
        assert_eq!(header_param(value, "name").as_deref(), Some("a;b"));
        assert_eq!(
            header_param(value, "filename").as_deref(),
            Some(r#"say "hi".txt"#)
        );
        assert_eq!(header_param(value, "x").as_deref(), Some("plain"));
        assert_eq!(header_param(value, "missing"), None);
        assert_eq!(
            header_param(
                "multipart/form-data; BOUNDARY=----WebKitFormBoundary7MA4YWxkTrZu0gW",
                "boundary"
            )
            .as_deref(),
            Some("----WebKitFormBoundary7MA4YWxkTrZu0gW")
        );
        assert_eq!(header_param("multipart/form-data", "boundary"), None);
    }

    /// A body as Chrome sends it for a form with two text fields, a checkbox group and a file input.
    pub(crate) const CHROME_MULTIPART: &str = concat!(
        "------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n",
        "Content-Disposition: form-data; name=\"your-name\"\r\n",
        "\r\n",
        "Grace Hopper\r\n",
        "------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n",
        "Content-Disposition: form-data; name=\"your-email\"\r\n",
        "\r\n",
        "grace@navy.example\r\n",
        "------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n",
        "Content-Disposition: form-data; name=\"interest\"\r\n",
        "\r\n",
        "cobol\r\n",
        "------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n",
        "Content-Disposition: form-data; name=\"interest\"\r\n",
        "\r\n",
        "compilers\r\n",
        "------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n",
        "Content-Disposition: form-data; name=\"your-message\"\r\n",
        "\r\n",
        "Line one\r\nLine two\r\n",
        "------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n",
        "Content-Disposition: form-data; name=\"attachment\"; filename=\"brief.pdf\"\r\n",
        "Content-Type: application/pdf\r\n",
        "\r\n",
        "%PDF-1.4\r\n--fake\r\n",
        "------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n",
        "Content-Disposition: form-data; name=\"empty-file\"; filename=\"\"\r\n",
        "Content-Type: application/octet-stream\r\n",
        "\r\n",
        "\r\n",
        "------WebKitFormBoundaryePkpFF7tjBAqx29L--\r\n",
    );

    pub(crate) const CHROME_CONTENT_TYPE: &str =
        "multipart/form-data; boundary=----WebKitFormBoundaryePkpFF7tjBAqx29L";

    #[test]
    fn multipart_from_a_browser_gives_fields_and_describes_files() {
        let submission = decode(Some(CHROME_CONTENT_TYPE), CHROME_MULTIPART.as_bytes());
        let submission = submission.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(submission.kind, BodyKind::Multipart);
        assert_eq!(
            submission.fields,
            pairs(&[
                ("your-name", "Grace Hopper"),
                ("your-email", "grace@navy.example"),
                ("interest", "cobol, compilers"),
                ("your-message", "Line one\r\nLine two"),
            ])
        );
        assert_eq!(
            submission.files,
            pairs(&[("attachment", "brief.pdf (application/pdf, 16 bytes)")])
        );
    }

    #[test]
    fn multipart_accepts_a_preamble_and_a_quoted_boundary() {
        let body = "preamble\r\n--xyz\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@b.example\r\n--xyz--";
        let submission = decode(
            Some("multipart/form-data; boundary=\"xyz\""),
            body.as_bytes(),
        );
        assert_eq!(
            submission.map(|s| s.fields),
            Ok(pairs(&[("email", "a@b.example")]))
        );
    }

    fn check_bad_multipart(body: &str, words: &str) {
        let error = decode(Some("multipart/form-data; boundary=b"), body.as_bytes()).err();
        let error = error.unwrap_or_else(|| panic!("accepted {body:?}"));
        assert_eq!(error.status, 400);
        assert!(error.reason.contains(words), "{}", error.reason);
    }

    #[test]
    fn broken_multipart_bodies_are_rejected_with_the_reason() {
        check_bad_multipart("", "does not contain its boundary");
        check_bad_multipart(
            "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx",
            "truncated",
        );
        check_bad_multipart(
            "--b\r\nContent-Disposition: form-data; name=\"a\"",
            "not terminated",
        );
        check_bad_multipart("--bX\r\n\r\n\r\n--b--", "not followed by a line break");
        check_bad_multipart(
            "--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--",
            "no content-disposition",
        );
        check_bad_multipart(
            "--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--",
            "has no name",
        );
        check_bad_multipart("--b\r\ngarbage\r\n\r\nx\r\n--b--", "malformed header line");
        assert_eq!(
            decode(Some("multipart/form-data"), b"--b--")
                .err()
                .map(|e| e.reason),
            Some("multipart/form-data content-type has no boundary".to_owned())
        );
    }

    #[test]
    fn content_types_are_dispatched_or_refused() {
        let kind = |content_type: Option<&str>, body: &str| {
            decode(content_type, body.as_bytes()).map(|s| s.kind)
        };
        assert_eq!(
            kind(Some("application/json; charset=utf-8"), "{}"),
            Ok(BodyKind::Json)
        );
        assert_eq!(
            kind(Some("application/vnd.api+json"), "{}"),
            Ok(BodyKind::Json)
        );
        assert_eq!(
            kind(Some("Application/X-WWW-Form-Urlencoded"), "a=b"),
            Ok(BodyKind::UrlEncoded)
        );
        assert_eq!(kind(None, " {\"a\":1}"), Ok(BodyKind::Json));
        assert_eq!(kind(None, "a=1"), Ok(BodyKind::UrlEncoded));
        assert_eq!(
            decode(Some("text/xml"), b"<a/>").err(),
            Some(BodyError {
                status: 415,
                reason: "unsupported content type `text/xml`".to_owned()
            })
        );
        assert_eq!(
            decode(Some("application/json"), b"[1]")
                .err()
                .map(|e| e.reason),
            Some("json body is not an object".to_owned())
        );
        let truncated = decode(Some("application/json"), b"{\"email\":").err();
        assert!(truncated
            .is_some_and(|e| e.status == 400 && e.reason.starts_with("body is not valid json")));
    }

    #[test]
    fn flat_json_keeps_top_level_scalars() {
        let body = r#"{"email":"a@b.example","age":42,"optin":true,"tags":["x","y"],"nested":{"k":"v"},"none":null}"#;
        let submission =
            decode(Some("application/json"), body.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            submission.fields,
            pairs(&[
                ("age", "42"),
                ("email", "a@b.example"),
                ("optin", "true"),
                ("tags", "x, y")
            ])
        );
        assert!(submission.json.is_some());
    }
}
