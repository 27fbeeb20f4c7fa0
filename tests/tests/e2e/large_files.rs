//! Large and hostile camt and OFX statements through the real daemon: a deeply nested document is refused with the line,
//! without a crash; a large one streams through the plugin's parse session with bounded memory in the plugin child (the daemon's
//! peak is printed; it spools the upload to disk and holds one piece at a time).

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Daemon, Setup, TOKEN};

const CAMT_CONNECTOR: &str = "[[connector]]\nname = \"bank\"\nplugin = \"camt\"\n";

/// `POST /v1/imports` of `body` as the file `name` for the `bank` connector: (status, JSON answer).
fn upload(d: &Daemon, name: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, Value) {
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client")
        .post(d.url(&format!("/v1/imports?name={name}&plugin=bank")))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .unwrap_or_else(|e| panic!("uploading {name}: {e}\n{}", d.log_text()));
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">
<BkToCstmrStmt><GrpHdr><MsgId>M1</MsgId><CreDtTm>2026-03-02T08:00:00</CreDtTm></GrpHdr>
<Stmt><Id>S1</Id><Acct><Id><IBAN>DE02100100100006820101</IBAN></Id><Ccy>EUR</Ccy></Acct>
"#;
const TAIL: &str = "</Stmt></BkToCstmrStmt></Document>\n";

/// A booked credit (or, `pending`, an information-only entry) with its own bank reference.
fn entry(n: usize, pending: bool) -> String {
    let status = if pending { "PDNG" } else { "BOOK" };
    format!(
        "<Ntry><NtryRef>{n}</NtryRef><Amt Ccy=\"EUR\">{}.{:02}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>{status}</Cd></Sts>\
         <BookgDt><Dt>2026-03-02</Dt></BookgDt><ValDt><Dt>2026-03-02</Dt></ValDt><AcctSvcrRef>REF-{n}</AcctSvcrRef>\
         <NtryDtls><TxDtls><RltdPties><Dbtr><Nm>Payer {n}</Nm></Dbtr></RltdPties>\
         <RmtInf><Ustrd>Transfer number {n} for services rendered</Ustrd></RmtInf></TxDtls></NtryDtls></Ntry>\n",
        1 + n % 900,
        n % 100
    )
}

#[test]
fn a_deeply_nested_camt_is_refused_naming_the_line_whole_or_streamed_and_the_plugin_keeps_working()
{
    let d = Daemon::start(Setup {
        plugins: vec!["camt"],
        // Files above 512 KiB stream through a parse session; smaller ones are parsed in one call.
        config: format!("[imports]\nstream_above_kib = 512\n{CAMT_CONNECTOR}"),
    });
    for depth in [1_000, 200_000] {
        let mut xml = String::from(HEAD);
        xml.push_str(&"<Ntry>".repeat(depth));
        xml.push_str(&"</Ntry>".repeat(depth));
        xml.push_str(TAIL);
        let (status, answer) = upload(&d, "deep.xml", xml);
        assert_eq!(status, 400, "depth {depth}: {answer}\n{}", d.log_text());
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("line 5") && message.contains("nested deeper than 64 elements"),
            "depth {depth}: {answer}"
        );
    }
    let mut good = String::from(HEAD);
    good.push_str(&entry(1, false));
    good.push_str(TAIL);
    let (status, answer) = upload(&d, "good.xml", good);
    assert_eq!(status, 200, "{answer}\n{}", d.log_text());
    let instance = d.ok("GET", "/v1/plugins", None)["items"][0]["instances"][0].clone();
    assert_eq!(instance["name"], "bank", "{instance}");
    assert_eq!(instance["state"], "running", "{instance}");
}

/// `VmHWM` (peak resident memory) of a process, in KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `settled plugin-host` children of the daemon.
fn plugin_children(d: &Daemon) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", d.pid())).expect("daemon tasks");
    let mut pids: Vec<u32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("plugin-host"))
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Size of a large statement in MiB: the environment variable `var` (`SETTLED_LARGE_CAMT_MIB`,
/// `SETTLED_LARGE_OFX_MIB`), else 32 (BENCHMARKS.md has a 100 MiB camt run).
fn large_mib(var: &str) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

#[test]
fn a_large_camt_streams_through_the_plugin_with_bounded_memory() {
    let large_mib = large_mib("SETTLED_LARGE_CAMT_MIB");
    let d = Daemon::start(Setup {
        plugins: vec!["camt"],
        // Information-only entries are left out, so the import records few payments: what is measured is the parse.
        config: format!("{CAMT_CONNECTOR}settings = {{ include_pending = false }}\n"),
    });
    let path = d.dir.path().join("large.xml");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("large file"));
    file.write_all(HEAD.as_bytes()).expect("write");
    let (mut written, mut n, mut booked) = (HEAD.len(), 0usize, 0usize);
    while written < large_mib * 1024 * 1024 {
        let is_booked = n % 1000 == 0;
        let e = entry(n, !is_booked);
        file.write_all(e.as_bytes()).expect("write");
        written += e.len();
        booked += usize::from(is_booked);
        n += 1;
    }
    file.write_all(TAIL.as_bytes()).expect("write");
    file.flush().expect("flush");
    drop(file);

    let children = plugin_children(&d);
    assert!(!children.is_empty(), "no plugin child is running");
    let before: Vec<u64> = children.iter().filter_map(|&c| peak_kib(c)).collect();
    let (status, answer) = upload(
        &d,
        "large.xml",
        std::fs::File::open(&path).expect("opening the large file"),
    );
    assert_eq!(status, 200, "{answer}\n{}", d.log_text());
    assert_eq!(answer["records_read"], booked, "{answer}");
    assert_eq!(answer["new"], booked, "{answer}");
    assert_children_stayed_small(
        &d,
        &children,
        &before,
        &format!("{large_mib} MiB camt ({n} entries)"),
        large_mib,
    );
}

/// The plugin children are the same (none crashed and was replaced), and none's peak resident memory grew by anything
/// like the file's size: buffering the file takes at least its size, streaming about one 256 KiB piece and one entry.
fn assert_children_stayed_small(
    d: &Daemon,
    children: &[u32],
    before: &[u64],
    what: &str,
    large_mib: usize,
) {
    assert_eq!(plugin_children(d), children);
    let after: Vec<u64> = children.iter().filter_map(|&c| peak_kib(c)).collect();
    let daemon = peak_kib(d.pid()).unwrap_or_default();
    eprintln!(
        "{what}: plugin child peak RSS {before:?} KiB before, {after:?} KiB after; daemon peak {daemon} KiB"
    );
    let bound = (large_mib as u64) * 1024 / 2;
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a.saturating_sub(*b) < bound,
            "a plugin child's peak RSS grew from {b} KiB to {a} KiB for a {large_mib} MiB file"
        );
    }
}

#[test]
fn a_large_ofx_streams_through_the_plugin_with_bounded_memory() {
    let large_mib = large_mib("SETTLED_LARGE_OFX_MIB");
    let d = Daemon::start(Setup {
        plugins: vec!["ofx"],
        config: "[[connector]]\nname = \"bank\"\nplugin = \"ofx\"\n".into(),
    });
    // OFX 1.x (SGML, leaves unclosed). Each transaction carries 64 KiB of an extended name the plugin does not read,
    // so a file of many MiB makes a few hundred payments: what is measured is the parse.
    let head = "OFXHEADER:100\nDATA:OFXSGML\nVERSION:102\nSECURITY:NONE\nENCODING:USASCII\nCHARSET:1252\n\n\
                <OFX><BANKMSGSRSV1><STMTTRNRS><TRNUID>1<STMTRS><CURDEF>EUR\n\
                <BANKACCTFROM><BANKID>10010010<ACCTID>6820101<ACCTTYPE>CHECKING</BANKACCTFROM>\n\
                <BANKTRANLIST><DTSTART>20260301<DTEND>20260331\n";
    let tail = "</BANKTRANLIST><LEDGERBAL><BALAMT>0.00<DTASOF>20260331</LEDGERBAL></STMTRS></STMTTRNRS></BANKMSGSRSV1></OFX>\n";
    let padding = "x".repeat(64 * 1024);
    let path = d.dir.path().join("large.ofx");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("large file"));
    file.write_all(head.as_bytes()).expect("write");
    let (mut written, mut n) = (head.len(), 0usize);
    while written < large_mib * 1024 * 1024 {
        let trn = format!(
            "<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20260302<TRNAMT>{}.{:02}<FITID>T{n}<NAME>Payer {n}\n\
             <EXTDNAME>{padding}\n<MEMO>Transfer number {n}</STMTTRN>\n",
            1 + n % 900,
            n % 100
        );
        file.write_all(trn.as_bytes()).expect("write");
        written += trn.len();
        n += 1;
    }
    file.write_all(tail.as_bytes()).expect("write");
    file.flush().expect("flush");
    drop(file);

    let children = plugin_children(&d);
    assert!(!children.is_empty(), "no plugin child is running");
    let before: Vec<u64> = children.iter().filter_map(|&c| peak_kib(c)).collect();
    let (status, answer) = upload(
        &d,
        "large.ofx",
        std::fs::File::open(&path).expect("opening the large file"),
    );
    assert_eq!(status, 200, "{answer}\n{}", d.log_text());
    assert_eq!(answer["records_read"], n, "{answer}");
    assert_eq!(answer["new"], n, "{answer}");
    assert_children_stayed_small(
        &d,
        &children,
        &before,
        &format!("{large_mib} MiB OFX ({n} transactions)"),
        large_mib,
    );
}

#[test]
fn a_deeply_nested_ofx_is_refused_naming_the_line_and_the_plugin_keeps_working() {
    let d = Daemon::start(Setup {
        plugins: vec!["ofx"],
        config: "[[connector]]\nname = \"bank\"\nplugin = \"ofx\"\n".into(),
    });
    let good = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/real/ofx/anzcc.ofx"),
    )
    .expect("reading the anzcc.ofx fixture");
    let (head, rest) = good.split_at(good.find("<OFX>").expect("an <OFX> element") + "<OFX>".len());
    for depth in [1_000, 200_000] {
        let deep = format!(
            "{head}\n{}{}{rest}",
            "<NEST>\n".repeat(depth),
            "</NEST>\n".repeat(depth)
        );
        let (status, answer) = upload(&d, "deep.ofx", deep);
        assert_eq!(status, 400, "depth {depth}: {answer}\n{}", d.log_text());
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            // <OFX> on line 3 and 255 <NEST> under it fill the 256 levels: the next <NEST>, on line 259, is refused.
            message == "line 259: <NEST> is nested deeper than 256 elements",
            "depth {depth}: {answer}"
        );
    }
    let (status, answer) = upload(&d, "good.ofx", good);
    assert_eq!(status, 200, "{answer}\n{}", d.log_text());
    let instance = d.ok("GET", "/v1/plugins", None)["items"][0]["instances"][0].clone();
    assert_eq!(instance["state"], "running", "{instance}");
}
