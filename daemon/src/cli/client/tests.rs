//! Tests of the client: argument parsing, the requests each command makes, and the HTTP paths end to end
//! against a one-shot local server.

use super::*;
use clap::Parser;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;

/// The shape the lead's `cli/mod.rs` gives these types: global client options plus the API subcommands.
#[derive(Debug, Parser)]
#[command(name = "settled")]
struct Cli {
    #[command(flatten)]
    client: ClientOpts,
    #[command(subcommand)]
    cmd: ApiCommand,
}

/// Splits a command line on spaces, keeping `'quoted text'` together, as a shell would.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    words.push(std::mem::take(&mut current));
                }
                started = false;
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(current);
    }
    words
}

fn parse(line: &str) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("settled".to_string()).chain(words(line)))
}

fn get(path: &str) -> ApiRequest {
    ApiRequest::get(path.to_string())
}

fn post(path: &str, body: Value) -> ApiRequest {
    ApiRequest::post(path.to_string(), body)
}

/// Parses the command line and checks the requests the command makes.
fn check(line: &str, expected: &[ApiRequest]) {
    let cli = match parse(line) {
        Ok(cli) => cli,
        Err(e) => panic!("`{line}` did not parse:\n{e}"),
    };
    assert_eq!(request_for(&cli.cmd), expected, "requests for `{line}`");
}

#[test]
fn words_split_like_a_shell() {
    assert_eq!(words("a  'b c' d''"), ["a", "b c", "d"]);
    assert_eq!(words("x ''"), ["x", ""]);
}

#[test]
fn lead_commands_build_their_requests() {
    check("leads", &[get("/v1/leads")]);
    check("leads --status new", &[get("/v1/leads?status=new")]);
    check(
        "leads list --status disqualified",
        &[get("/v1/leads?status=disqualified")],
    );
    check(
        "leads --status new --after 'l 9' --limit 5",
        &[get("/v1/leads?status=new&after=l%209&limit=5")],
    );
    check(
        "leads add --name 'Ada Lovelace' --email ada@example.com --phone '+44 20 1234' --company 'Analytical Ltd' \
         --source referral --assigned-to bob --external-id x-1 --message 'call me'",
        &[post(
            "/v1/leads",
            json!({"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 1234",
                   "company": "Analytical Ltd", "source": "referral", "assigned_to": "bob", "external_id": "x-1",
                   "message": "call me"}),
        )],
    );
    check(
        "leads add --email a@b.test",
        &[post("/v1/leads", json!({"email": "a@b.test"}))],
    );
    check("leads show 'l/1 x'", &[get("/v1/leads/l%2F1%20x")]);
    check(
        "leads status l1 qualified",
        &[post("/v1/leads/l1/status", json!({"status": "qualified"}))],
    );
    check(
        "leads convert l1 --opportunity-name Engines --value 25000.00 --currency eur --expected-close 2026-06-30",
        &[post(
            "/v1/leads/l1/convert",
            json!({"opportunity": {"name": "Engines", "value": "25000.00", "currency": "EUR",
                                   "expected_close": "2026-06-30"}}),
        )],
    );
    check(
        "leads convert l1 --opportunity-name E --value 1 --currency USD",
        &[post(
            "/v1/leads/l1/convert",
            json!({"opportunity": {"name": "E", "value": "1", "currency": "USD"}}),
        )],
    );
}

#[test]
fn list_commands_page_and_show_by_id() {
    check("accounts", &[get("/v1/accounts")]);
    check("accounts list", &[get("/v1/accounts")]);
    check("accounts --limit 2", &[get("/v1/accounts?limit=2")]);
    check("accounts show a1", &[get("/v1/accounts/a1")]);
    check("contacts", &[get("/v1/contacts")]);
    check("contacts list --after c9", &[get("/v1/contacts?after=c9")]);
    check("contacts show c1", &[get("/v1/contacts/c1")]);
    check("imports", &[get("/v1/imports")]);
    check("imports --after imp_1", &[get("/v1/imports?after=imp_1")]);
    check("imports show imp_1", &[get("/v1/imports/imp_1")]);
    check("opportunities", &[get("/v1/opportunities")]);
    check(
        "opportunities --limit 1000",
        &[get("/v1/opportunities?limit=1000")],
    );
    check("opps show o1", &[get("/v1/opportunities/o1")]);
    check("quotes", &[get("/v1/quotes")]);
    check("quotes list --limit 3", &[get("/v1/quotes?limit=3")]);
    check("quotes show q1", &[get("/v1/quotes/q1")]);
    check("orders list", &[get("/v1/orders")]);
    check("orders --after o1", &[get("/v1/orders?after=o1")]);
    check("orders show ord1", &[get("/v1/orders/ord1")]);
    check("invoices", &[get("/v1/invoices")]);
    check(
        "invoices --overdue",
        &[get("/v1/invoices?payment_status=overdue")],
    );
    check(
        "invoices list --overdue",
        &[get("/v1/invoices?payment_status=overdue")],
    );
    check(
        "invoices --overdue --limit 7",
        &[get("/v1/invoices?payment_status=overdue&limit=7")],
    );
    check(
        "invoices --status partially_paid",
        &[get("/v1/invoices?payment_status=partially_paid")],
    );
    check("invoices show i1", &[get("/v1/invoices/i1")]);
    check("payments", &[get("/v1/payments")]);
    check(
        "payments list --after p1 --limit 9",
        &[get("/v1/payments?after=p1&limit=9")],
    );
    check("payments show p1", &[get("/v1/payments/p1")]);
    check("review", &[get("/v1/review")]);
    check("review list", &[get("/v1/review")]);
    check("review --all", &[get("/v1/review?status=all")]);
    check(
        "review list --all --limit 1",
        &[get("/v1/review?status=all&limit=1")],
    );
    check("review show r1", &[get("/v1/review/r1")]);
    check("plugins", &[get("/v1/plugins")]);
}

#[test]
fn opportunity_commands_build_their_requests() {
    check(
        "opportunities stage o1 closed_won",
        &[post(
            "/v1/opportunities/o1/stage",
            json!({"stage": "closed_won"}),
        )],
    );
    check(
        "opportunities stage o1 negotiation --probability 80",
        &[post(
            "/v1/opportunities/o1/stage",
            json!({"stage": "negotiation", "probability": "80"}),
        )],
    );
    check(
        "opportunities activity o1 --kind demo --text 'went well'",
        &[post(
            "/v1/opportunities/o1/activities",
            json!({"kind": "demo", "text": "went well"}),
        )],
    );
    check(
        "opportunities activity o1 --kind call --text t --by ana",
        &[post(
            "/v1/opportunities/o1/activities",
            json!({"kind": "call", "text": "t", "by": "ana"}),
        )],
    );
}

#[test]
fn quote_commands_build_their_requests() {
    check(
        "quotes create --opportunity o1 --currency EUR --valid-until 2026-04-30 --line 'Consulting day;3;1200.00;20' \
         --line 'Licence;1;499.00;20%;10%' --line 'Setup;1;300;0;50.00'",
        &[post(
            "/v1/quotes",
            json!({"opportunity_id": "o1", "currency": "EUR", "valid_until": "2026-04-30", "lines": [
                {"description": "Consulting day", "quantity": "3", "unit_price": "1200.00", "tax_rate": "20"},
                {"description": "Licence", "quantity": "1", "unit_price": "499.00", "tax_rate": "20",
                 "discount_percent": "10"},
                {"description": "Setup", "quantity": "1", "unit_price": "300", "tax_rate": "0", "discount_amount": "50.00"}
            ]}),
        )],
    );
    check(
        "quotes create --opportunity o1 --line 'Day;1;100;20' --discount 5%",
        &[post(
            "/v1/quotes",
            json!({"opportunity_id": "o1", "discount_percent": "5", "lines": [
                {"description": "Day", "quantity": "1", "unit_price": "100", "tax_rate": "20"}]}),
        )],
    );
    check(
        "quotes create --from-json q.json",
        &[ApiRequest {
            method: Method::Post,
            path: "/v1/quotes".into(),
            body: RequestBody::JsonFile("q.json".into()),
        }],
    );
    check("quotes send q1", &[post("/v1/quotes/q1/send", json!({}))]);
    check(
        "quotes accept q1",
        &[post("/v1/quotes/q1/accept", json!({}))],
    );
    check(
        "quotes reject q1",
        &[post("/v1/quotes/q1/reject", json!({}))],
    );
    check(
        "quotes reject q1 --reason 'too dear'",
        &[post("/v1/quotes/q1/reject", json!({"reason": "too dear"}))],
    );
    check(
        "quotes revise q1",
        &[post("/v1/quotes/q1/revise", json!({}))],
    );
    check(
        "quotes revise q1 --discount 25.00",
        &[post(
            "/v1/quotes/q1/revise",
            json!({"discount_amount": "25.00"}),
        )],
    );
    check(
        "quotes revise q1 --line 'Day;2;1200.00;20' --valid-until 2026-05-31",
        &[post(
            "/v1/quotes/q1/revise",
            json!({"valid_until": "2026-05-31", "lines": [
                {"description": "Day", "quantity": "2", "unit_price": "1200.00", "tax_rate": "20"}]}),
        )],
    );
}

#[test]
fn order_and_invoice_commands_build_their_requests() {
    check(
        "orders create --quote q1",
        &[post("/v1/orders", json!({"quote_id": "q1"}))],
    );
    check(
        "orders create --quote q1 --delivery-terms 'DAP Vienna' --notes rush --order-date 2026-04-01",
        &[post(
            "/v1/orders",
            json!({"quote_id": "q1", "delivery_terms": "DAP Vienna", "notes": "rush", "order_date": "2026-04-01"}),
        )],
    );
    check(
        "invoices create --order ord1",
        &[post("/v1/invoices", json!({"order_id": "ord1"}))],
    );
    check(
        "invoices create --order ord1 --line 1:2 --line 3:0.5",
        &[post(
            "/v1/invoices",
            json!({"order_id": "ord1", "lines": [{"line_no": 1, "quantity": "2"}, {"line_no": 3, "quantity": "0.5"}]}),
        )],
    );
    check(
        "invoices issue i1",
        &[post("/v1/invoices/i1/issue", json!({}))],
    );
    check(
        "invoices issue i1 --issue-date 2026-04-01 --due-date 2026-05-01",
        &[post(
            "/v1/invoices/i1/issue",
            json!({"issue_date": "2026-04-01", "due_date": "2026-05-01"}),
        )],
    );
    check(
        "invoices void i1",
        &[post("/v1/invoices/i1/void", json!({}))],
    );
    check(
        "invoices void i1 --reason 'ordered twice'",
        &[post(
            "/v1/invoices/i1/void",
            json!({"reason": "ordered twice"}),
        )],
    );
    check(
        "invoices credit i1",
        &[post("/v1/invoices/i1/credit", json!({}))],
    );
    check(
        "invoices credit i1 --amount 100.00",
        &[post("/v1/invoices/i1/credit", json!({"amount": "100.00"}))],
    );
}

#[test]
fn payment_review_event_and_import_commands_build_their_requests() {
    check(
        "payments record --amount 500.00 --currency EUR --received-on 2026-04-02 --payer Acme --reference 'RF18 INV' \
         --external-id bank-77 --allocate i1:300.00 --allocate i2",
        &[post(
            "/v1/payments",
            json!({"amount": "500.00", "currency": "EUR", "received_on": "2026-04-02", "payer": "Acme",
                   "reference": "RF18 INV", "external_id": "bank-77",
                   "allocations": [{"invoice_id": "i1", "amount": "300.00"}, {"invoice_id": "i2"}]}),
        )],
    );
    check(
        "payments record --amount 9.99 --currency usd",
        &[post(
            "/v1/payments",
            json!({"amount": "9.99", "currency": "USD"}),
        )],
    );
    check(
        "payments record --amount -5 --currency EUR",
        &[post(
            "/v1/payments",
            json!({"amount": "-5", "currency": "EUR"}),
        )],
    );
    check(
        "payments reverse p1",
        &[post("/v1/payments/p1/reverse", json!({}))],
    );
    check(
        "payments reverse p1 --amount 100.00",
        &[post("/v1/payments/p1/reverse", json!({"amount": "100.00"}))],
    );
    check(
        "review reverse r1 --payment p1",
        &[post("/v1/review/r1/reverse", json!({"payment_id": "p1"}))],
    );
    check(
        "review allocate r1 --invoice i1:120.00 --invoice i2",
        &[post(
            "/v1/review/r1/allocate",
            json!({"allocations": [{"invoice_id": "i1", "amount": "120.00"}, {"invoice_id": "i2"}]}),
        )],
    );
    check(
        "review dismiss r1",
        &[post("/v1/review/r1/dismiss", json!({}))],
    );
    check(
        "review dismiss r1 --reason 'supplier refund'",
        &[post(
            "/v1/review/r1/dismiss",
            json!({"reason": "supplier refund"}),
        )],
    );
    check("events", &[get("/v1/events")]);
    check(
        "events --after 41 --limit 5",
        &[get("/v1/events?after=41&limit=5")],
    );
    check("events --follow", &[get("/v1/events?limit=100")]);
    let upload = |file: &str, path: &str| ApiRequest {
        method: Method::Post,
        path: path.into(),
        body: RequestBody::Upload(file.into()),
    };
    check(
        "import 'in/march 2026.xml' b.csv",
        &[
            upload("in/march 2026.xml", "/v1/imports?name=march%202026.xml"),
            upload("b.csv", "/v1/imports?name=b.csv"),
        ],
    );
    check(
        "import --plugin bank-csv b.csv",
        &[upload("b.csv", "/v1/imports?name=b.csv&plugin=bank-csv")],
    );
    check(
        "status",
        &[
            get("/healthz"),
            get("/v1/review?limit=1000"),
            get("/v1/invoices?payment_status=overdue&limit=1000"),
            get("/v1/plugins"),
        ],
    );
}

/// Parses the command line, which must fail with a message containing `expected`.
fn check_rejected(line: &str, expected: &str) {
    match parse(line) {
        Ok(cli) => panic!("`{line}` parsed as {:?}", cli.cmd),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(expected),
                "`{line}`: expected {expected:?} in\n{text}"
            );
        }
    }
}

#[test]
fn bad_arguments_are_rejected_with_the_reason() {
    check_rejected("leads status l1 won", "invalid value 'won'");
    check_rejected("leads --status new show l1", "cannot be used with");
    check_rejected(
        "leads convert l1 --value 1 --currency EUR",
        "--opportunity-name",
    );
    check_rejected("quotes create --opportunity o1", "--line");
    check_rejected("quotes create --line a;1;1;20", "--opportunity");
    check_rejected(
        "quotes create --from-json q.json --currency EUR",
        "cannot be used with",
    );
    check_rejected(
        "quotes create --opportunity o1 --valid-until 2026-04-31 --line a;1;1;20",
        "not a date like",
    );
    check_rejected(
        "quotes create --opportunity o1 --currency EURO --line a;1;1;20",
        "ISO 4217",
    );
    check_rejected(
        "quotes create --opportunity o1 --line a;1;1;20 --discount 5x%",
        "not a decimal",
    );
    check_rejected("quotes revise q1 --line a;1;1", "got 3 field(s)");
    check_rejected("invoices --overdue --status paid", "cannot be used with");
    check_rejected("invoices create --order o1 --line x:2", "line number `x`");
    check_rejected(
        "payments record --amount 12,50 --currency EUR",
        "use a dot: 12.50",
    );
    check_rejected("payments record --currency EUR", "--amount");
    check_rejected("review allocate r1", "--invoice");
    check_rejected("review allocate r1 --invoice i1:abc", "amount: `abc`");
    check_rejected("events --after abc", "invalid value 'abc'");
    check_rejected("accounts --limit many", "invalid value 'many'");
    check_rejected("import", "<FILE>");
    check_rejected(
        "opportunities activity o1 --kind lunch --text x",
        "invalid value 'lunch'",
    );
}

#[test]
fn global_options_are_accepted_before_and_after_the_subcommand() {
    let cli = parse("--json leads").expect("parses");
    assert!(cli.client.json);
    let cli =
        parse("leads show l1 --json --url http://h:1/ --token t0k --data-dir /d").expect("parses");
    assert!(cli.client.json);
    assert_eq!(cli.client.url, "http://h:1/");
    assert_eq!(cli.client.token.as_deref(), Some("t0k"));
    assert_eq!(cli.client.data_dir(), Some(PathBuf::from("/d")));
    let cli = parse("invoices --overdue --json").expect("parses");
    assert!(cli.client.json);
    assert_eq!(
        request_for(&cli.cmd),
        vec![get("/v1/invoices?payment_status=overdue")]
    );
}

#[test]
fn every_subcommand_has_help() {
    use clap::CommandFactory;
    let cmd = Cli::command();
    cmd.clone().debug_assert();
    for sub in cmd.get_subcommands() {
        assert!(
            sub.get_about().is_some(),
            "`settled {}` has no help text",
            sub.get_name()
        );
        for inner in sub.get_subcommands() {
            assert!(
                inner.get_about().is_some(),
                "`settled {} {}` has no help text",
                sub.get_name(),
                inner.get_name()
            );
        }
    }
}

#[test]
fn quote_lines_parse_or_say_what_is_wrong() {
    let d = |s: &str| s.parse::<Decimal>().expect("decimal");
    let check = |input: &str, expected: Result<QuoteLine, &str>| match (
        parse_quote_line(input),
        expected,
    ) {
        (Ok(line), Ok(want)) => assert_eq!(line, want, "{input}"),
        (Err(e), Err(want)) => assert!(e.contains(want), "{input}: {e:?} lacks {want:?}"),
        (got, want) => panic!("{input}: got {got:?}, expected {want:?}"),
    };
    let line = |desc: &str, q: &str, p: &str, t: &str, discount| QuoteLine {
        description: desc.into(),
        quantity: d(q),
        unit_price: d(p),
        tax_rate: d(t),
        discount,
    };
    check(
        "Day;3;1200.00;20",
        Ok(line("Day", "3", "1200.00", "20", None)),
    );
    check(
        " Day ; 3 ; 1200.00 ; 20% ",
        Ok(line("Day", "3", "1200.00", "20", None)),
    );
    check("Day;1;10;7;", Ok(line("Day", "1", "10", "7", None)));
    check(
        "Day;1;10;7;12.5%",
        Ok(line(
            "Day",
            "1",
            "10",
            "7",
            Some(LineDiscount::Percent(d("12.5"))),
        )),
    );
    check(
        "Day;1;10;7;2.00",
        Ok(line(
            "Day",
            "1",
            "10",
            "7",
            Some(LineDiscount::Amount(d("2.00"))),
        )),
    );
    check("Day;1;10", Err("got 3 field(s)"));
    check("a;b;c;d;e;f", Err("got 6 field(s)"));
    check(";1;10;20", Err("description"));
    check("Day;three;10;20", Err("quantity: `three`"));
    check("Day;1;ten;20", Err("unit price: `ten`"));
    check("Day;1;10;x%", Err("tax rate: `x`"));
    check("Day;1;10;20;lots", Err("discount: `lots`"));
}

#[test]
fn allocations_and_invoice_lines_parse() {
    let d = |s: &str| s.parse::<Decimal>().expect("decimal");
    assert_eq!(
        parse_allocation("i1"),
        Ok(Allocation {
            invoice_id: "i1".into(),
            amount: None
        })
    );
    assert_eq!(
        parse_allocation("i1:12.30"),
        Ok(Allocation {
            invoice_id: "i1".into(),
            amount: Some(d("12.30"))
        })
    );
    assert!(parse_allocation(":5").is_err());
    assert!(parse_allocation("i1:").is_err());
    assert_eq!(
        parse_invoice_line("2:1.5"),
        Ok(InvoiceLineSelection {
            line_no: 2,
            quantity: d("1.5")
        })
    );
    assert!(parse_invoice_line("2").is_err());
    assert!(parse_invoice_line("-1:2").is_err());
}

#[test]
fn percent_encoding_keeps_only_unreserved_characters() {
    let check = |raw: &str, expected: &str| assert_eq!(encode(raw), expected, "{raw}");
    check("abc-XYZ_0.9~", "abc-XYZ_0.9~");
    check("a b/c?d&e=f", "a%20b%2Fc%3Fd%26e%3Df");
    check("März.csv", "M%C3%A4rz.csv");
    check("", "");
}

#[test]
fn daemon_errors_become_one_line_naming_the_field() {
    let req = get("/v1/quotes?x=1");
    let check = |status: u16, body: &str, token_missing: bool, expected: &str| {
        let err = api_error(
            status,
            &req,
            body,
            token_missing,
            "the token file /d/api-token",
        );
        assert_eq!(err.to_string(), expected);
    };
    check(
        400,
        r#"{"error":{"code":"bad_input","message":"amount must be positive","field":"lines[0].quantity"}}"#,
        false,
        "amount must be positive (field lines[0].quantity)",
    );
    check(
        409,
        r#"{"error":{"code":"conflict","message":"quote is draft, not sent"}}"#,
        false,
        "quote is draft, not sent",
    );
    check(
        502,
        "Bad gateway",
        false,
        "the daemon answered 502 to GET /v1/quotes: Bad gateway",
    );
    check(
        404,
        "",
        false,
        "the daemon answered 404 to GET /v1/quotes: no details",
    );
    check(
        401,
        r#"{"error":{"code":"unauthorized","message":"missing or invalid token"}}"#,
        true,
        "missing or invalid token; no API token found: set the token file /d/api-token, or run `settled init`",
    );
    check(
        401,
        r#"{"error":{"code":"unauthorized","message":"missing or invalid token"}}"#,
        false,
        "missing or invalid token; the token from the token file /d/api-token was refused",
    );
}

fn opts(url: &str, data_dir: &Path) -> ClientOpts {
    ClientOpts {
        url: url.into(),
        token: None,
        data_dir: Some(data_dir.to_path_buf()),
        json: false,
    }
}

#[test]
fn debug_output_redacts_the_token() {
    let cli = parse("--token s3cret-token plugins").expect("parses");
    let shown = format!("{:?}", cli.client);
    assert!(!shown.contains("s3cret-token"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn token_comes_from_the_option_else_the_token_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut o = opts(DEFAULT_URL, dir.path());
    assert_eq!(resolve_token(&o).expect("no file is fine").0, None);
    std::fs::write(dir.path().join(TOKEN_FILE), "s3cret\n").expect("write token");
    assert_eq!(
        resolve_token(&o).expect("reads file").0.as_deref(),
        Some("s3cret")
    );
    o.token = Some("given".into());
    assert_eq!(
        resolve_token(&o).expect("uses option").0.as_deref(),
        Some("given")
    );
}

#[test]
fn default_data_dir_is_under_the_user_data_home() {
    let dir = default_data_dir();
    if std::env::var_os("XDG_DATA_HOME").is_some() || std::env::var_os("HOME").is_some() {
        let dir = dir.expect("a data dir when HOME or XDG_DATA_HOME is set");
        assert!(dir.ends_with("settled"), "{}", dir.display());
    } else {
        assert_eq!(dir, None);
    }
}

/// A loopback server answering one canned response per connection, in order, and handing back the
/// requests it received (head and body as text).
fn serve<B: Into<String>>(responses: Vec<(u16, B)>) -> (String, JoinHandle<Vec<String>>) {
    let responses: Vec<(u16, String)> = responses
        .into_iter()
        .map(|(status, body)| (status, body.into()))
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for (status, body) in responses {
            let Ok((mut stream, _)) = listener.accept() else {
                break;
            };
            seen.push(read_request(&mut stream));
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
        seen
    });
    (url, handle)
}

fn read_request(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(len) => body.len() >= len,
                None if lower.contains("transfer-encoding: chunked") => body.ends_with("0\r\n\r\n"),
                None => true,
            };
            if done {
                return text;
            }
        }
    }
    String::from_utf8_lossy(&data).to_string()
}

async fn run_args(line: &str, url: &str, dir: &Path) -> (anyhow::Result<()>, String, String) {
    let cli = parse(line).expect("parses");
    let mut o = cli.client.clone();
    o.url = url.to_string();
    o.data_dir = Some(dir.to_path_buf());
    // Only the token file in `dir` counts, whatever the environment running the tests holds.
    o.token = None;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let output = Output {
        out: &mut out,
        err: &mut err,
        width: None,
        poll: Duration::ZERO,
    };
    let result = run(&cli.cmd, &o, output).await;
    (
        result,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[tokio::test]
async fn json_flag_prints_the_body_as_sent_and_sends_the_token() {
    let body = r#"{"items":[{"id":"l1","name":"Ada","status":"new","score":40}]}"#;
    let (url, server) = serve(vec![(200, body)]);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(TOKEN_FILE), "tok-123\n").expect("write token");
    let (result, out, _) = run_args("leads --status new --json", &url, dir.path()).await;
    result.expect("succeeds");
    assert_eq!(out, format!("{body}\n"));
    let requests = server.join().expect("server thread");
    assert!(
        requests[0].starts_with("GET /v1/leads?status=new HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer tok-123\r\n"),
        "{}",
        requests[0]
    );
}

#[tokio::test]
async fn tables_are_the_default_output() {
    let body =
        r#"{"items":[{"id":"l1","name":"Ada","email":"ada@x.test","status":"new","score":40}]}"#;
    let (url, server) = serve(vec![(200, body)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (result, out, _) = run_args("leads", &url, dir.path()).await;
    result.expect("succeeds");
    assert_eq!(
        out,
        "ID  NAME  EMAIL       COMPANY  SOURCE  STATUS  SCORE  ASSIGNED\n\
         l1  Ada   ada@x.test  -        -       new        40  -\n"
    );
    let requests = server.join().expect("server thread");
    assert!(
        !requests[0].to_ascii_lowercase().contains("authorization:"),
        "no token, no header"
    );
}

#[tokio::test]
async fn daemon_error_becomes_the_command_error_and_the_post_carries_json() {
    let body = r#"{"error":{"code":"conflict","message":"quote Q-2026-001 is draft; only a sent quote can be accepted","field":"status"}}"#;
    let (url, server) = serve(vec![(409, body)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (result, out, _) = run_args("quotes accept q1", &url, dir.path()).await;
    let err = result.expect_err("a 409 fails the command");
    assert_eq!(
        err.to_string(),
        "quote Q-2026-001 is draft; only a sent quote can be accepted (field status)"
    );
    assert_eq!(out, "");
    let requests = server.join().expect("server thread");
    assert!(
        requests[0].starts_with("POST /v1/quotes/q1/accept HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0]
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        requests[0]
    );
    assert!(requests[0].ends_with("\r\n\r\n{}"), "{}", requests[0]);
}

#[tokio::test]
async fn a_daemon_that_is_not_running_is_named_with_a_hint() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("temp dir");
    let (result, _, _) = run_args("invoices --overdue", &url, dir.path()).await;
    let err = result.expect_err("nothing listens");
    assert_eq!(
        err.to_string(),
        format!("cannot reach settled at {url}: connection refused; is `settled run` running?")
    );
}

#[tokio::test]
async fn import_uploads_each_file_raw_and_fails_after_trying_all() {
    let summary = r#"{"file":"a.csv","plugin":"bank-csv","records_read":2,"new":2,"duplicates":0,"matched":{"structured_reference":1},"partially_matched":0,"review":1,"ignored":0,"failed":[]}"#;
    let rejected = r#"{"error":{"code":"bad_input","message":"row 3, column date: `31.02.2026` is not a date"}}"#;
    let (url, server) = serve(vec![(200, summary), (400, rejected)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let a = dir.path().join("a.csv");
    let b = dir.path().join("b c.csv");
    std::fs::write(&a, "date;amount\n2026-03-01;10.00\n").expect("write a");
    std::fs::write(&b, "bad").expect("write b");
    let a_arg = a.display().to_string();
    let b_arg = b.display().to_string();
    let (result, out, err) =
        run_args(&format!("import '{a_arg}' '{b_arg}'"), &url, dir.path()).await;
    let error = result.expect_err("one file failed");
    assert_eq!(error.to_string(), "1 of 2 file(s) could not be imported");
    assert!(
        out.starts_with("a.csv (plugin bank-csv)\n  records read       2\n"),
        "{out}"
    );
    assert!(
        out.contains("  matched            1  (structured_reference 1)\n"),
        "{out}"
    );
    assert_eq!(
        err,
        format!("error: {b_arg}: row 3, column date: `31.02.2026` is not a date\n")
    );
    let requests = server.join().expect("server thread");
    assert!(
        requests[0].starts_with("POST /v1/imports?name=a.csv HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0]
            .to_ascii_lowercase()
            .contains("content-type: application/octet-stream"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0].ends_with("\r\n\r\ndate;amount\n2026-03-01;10.00\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[1].starts_with("POST /v1/imports?name=b%20c.csv HTTP/1.1\r\n"),
        "{}",
        requests[1]
    );
}

#[tokio::test]
async fn import_of_a_missing_file_reports_it_and_continues() {
    let summary = r#"{"file":"ok.csv","records_read":0}"#;
    let (url, server) = serve(vec![(200, summary)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ok = dir.path().join("ok.csv");
    std::fs::write(&ok, "").expect("write");
    let missing = dir.path().join("missing.csv").display().to_string();
    let ok_arg = ok.display().to_string();
    let (result, out, err) =
        run_args(&format!("import '{missing}' '{ok_arg}'"), &url, dir.path()).await;
    assert_eq!(
        result.expect_err("missing file").to_string(),
        "1 of 2 file(s) could not be imported"
    );
    assert!(
        err.starts_with(&format!("error: {missing}: reading {missing}: ")),
        "{err}"
    );
    assert!(out.starts_with("ok.csv\n"), "{out}");
    assert_eq!(server.join().expect("server thread").len(), 1);
}

#[tokio::test]
async fn status_asks_health_then_counts() {
    let (url, server) = serve(vec![
        (200, r#"{"status":"ok","version":"0.1.0"}"#),
        (200, r#"{"items":[{"id":"r1"}]}"#),
        (200, r#"{"items":[]}"#),
        (
            200,
            r#"[{"plugin":"camt","instances":[{"state":"running"}]}]"#,
        ),
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (result, out, _) = run_args("status", &url, dir.path()).await;
    result.expect("succeeds");
    assert_eq!(
        out,
        format!(
            "settled at {url} is up\n  status   ok\n  version  0.1.0\nreview queue      1 waiting\n\
             overdue invoices  0\nplugin instances  1 running\n"
        )
    );
    assert_eq!(server.join().expect("server thread").len(), 4);
}

#[tokio::test]
async fn quote_from_json_file_sends_the_file_and_names_it_when_invalid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("q.json");
    std::fs::write(
        &good,
        r#"{"opportunity_id":"o1","currency":"EUR","lines":[]}"#,
    )
    .expect("write");
    let (url, server) = serve(vec![(
        201,
        r#"{"id":"q1","number":"Q-2026-001","status":"draft"}"#,
    )]);
    let good_arg = good.display().to_string();
    let (result, out, _) = run_args(
        &format!("quotes create --from-json '{good_arg}'"),
        &url,
        dir.path(),
    )
    .await;
    result.expect("succeeds");
    assert_eq!(out, "id      q1\nnumber  Q-2026-001\nstatus  draft\n");
    let requests = server.join().expect("server thread");
    let sent: Value = requests[0]
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .expect("a json body");
    assert_eq!(
        sent,
        json!({"opportunity_id": "o1", "currency": "EUR", "lines": []})
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"lines\": [,]\n}").expect("write");
    let bad_arg = bad.display().to_string();
    let (result, _, _) = run_args(
        &format!("quotes create --from-json '{bad_arg}'"),
        "http://127.0.0.1:9",
        dir.path(),
    )
    .await;
    let err = result.expect_err("invalid json").to_string();
    assert!(
        err.starts_with(&format!("{bad_arg}: invalid json at line 2 column")),
        "{err}"
    );
}

#[tokio::test]
async fn following_events_continues_after_the_last_event_seen() {
    let (url, server) = serve(vec![
        (
            200,
            r#"{"items":[{"id":1,"type":"lead.captured","at":"t1"},{"id":2,"type":"quote.sent","at":"t2"}]}"#,
        ),
        (
            200,
            r#"{"items":[{"id":3,"type":"invoice.issued","at":"t3"}]}"#,
        ),
        (200, r#"{"items":[]}"#),
        (
            503,
            r#"{"error":{"code":"shutting_down","message":"settled is shutting down"}}"#,
        ),
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (result, out, _) = run_args("events --follow --limit 2", &url, dir.path()).await;
    assert_eq!(
        result
            .expect_err("ends with the daemon's error")
            .to_string(),
        "settled is shutting down"
    );
    // Each page is its own table; only the first has the header.
    assert_eq!(
        out,
        "ID  AT  TYPE           ACTOR  ENTITY  CHANGE\n\
         \x201  t1  lead.captured  -      -       -\n\
         \x202  t2  quote.sent     -      -       -\n\
         \x203  t3  invoice.issued  -      -       -\n"
    );
    let requests = server.join().expect("server thread");
    let lines: Vec<&str> = requests.iter().filter_map(|r| r.lines().next()).collect();
    assert_eq!(
        lines,
        [
            "GET /v1/events?limit=2 HTTP/1.1",
            "GET /v1/events?after=2&limit=2 HTTP/1.1",
            "GET /v1/events?after=3&limit=2 HTTP/1.1",
            "GET /v1/events?after=3&limit=2 HTTP/1.1",
        ]
    );
}

#[test]
fn loopback_urls_bypass_proxies() {
    let check = |url: &str, expected: bool| {
        let parsed = reqwest::Url::parse(url).expect("url");
        assert_eq!(is_loopback(&parsed), expected, "{url}");
    };
    check("http://127.0.0.1:7878", true);
    check("http://localhost:7878", true);
    check("http://[::1]:7878", true);
    check("http://10.0.0.5:7878", false);
    check("https://settled.example.com", false);
}

#[test]
fn a_full_page_says_how_to_get_the_next() {
    let page = PageArgs {
        after: None,
        limit: Some(2),
    };
    let full = json!({"items": [{"id": "a"}, {"id": "b"}]});
    assert_eq!(
        more_hint(&page, &full).as_deref(),
        Some("showing the first 2 only; for more, repeat with --after b")
    );
    assert_eq!(more_hint(&page, &json!({"items": [{"id": "a"}]})), None);
    assert_eq!(
        more_hint(&PageArgs::default(), &full),
        None,
        "the default page is 100"
    );
}

#[tokio::test]
async fn listing_a_full_page_hints_on_stderr_only() {
    let (url, server) = serve(vec![(
        200,
        r#"{"items":[{"id":"l1","name":"A"},{"id":"l2","name":"B"}]}"#,
    )]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (result, out, err) = run_args("leads --limit 2", &url, dir.path()).await;
    result.expect("succeeds");
    assert!(out.starts_with("ID  NAME"), "{out}");
    assert_eq!(
        err,
        "showing the first 2 only; for more, repeat with --after l2\n"
    );
    server.join().expect("server thread");
}

#[tokio::test]
async fn status_counts_whole_lists_page_by_page() {
    let full_page: Vec<Value> = (0..COUNT_PAGE)
        .map(|i| json!({"id": format!("r{i:04}")}))
        .collect();
    let (url, server) = serve(vec![
        (200, r#"{"status":"ok"}"#.to_string()),
        (200, json!({ "items": full_page }).to_string()),
        (200, r#"{"items":[{"id":"r9999"}]}"#.to_string()),
        (200, r#"{"items":[]}"#.to_string()),
        (200, r#"{"items":[]}"#.to_string()),
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (result, out, _) = run_args("status --json", &url, dir.path()).await;
    result.expect("succeeds");
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["review_waiting"], json!(1001));
    assert_eq!(report["overdue_invoices"], json!(0));
    let requests = server.join().expect("server thread");
    let lines: Vec<&str> = requests.iter().filter_map(|r| r.lines().next()).collect();
    assert_eq!(
        lines,
        [
            "GET /healthz HTTP/1.1",
            "GET /v1/review?limit=1000 HTTP/1.1",
            "GET /v1/review?limit=1000&after=r0999 HTTP/1.1",
            "GET /v1/invoices?payment_status=overdue&limit=1000 HTTP/1.1",
            "GET /v1/plugins HTTP/1.1",
        ]
    );
}
