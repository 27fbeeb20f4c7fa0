use super::*;
use serde_json::json;

fn open(dir: &Path) -> Store {
    Store::open(dir, &StoreOptions::default()).expect("store opens")
}

/// A key as sled holds it, overlay or not.
fn on_disk(store: &Store, key: &str) -> Option<serde_json::Value> {
    store
        .tree()
        .unwrap()
        .get(key)
        .unwrap()
        .map(|v| serde_json::from_slice(&v).unwrap())
}

#[tokio::test]
async fn a_write_set_is_applied_atomically_with_its_events_and_outbox_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ws = store.begin();
    ws.put("lead", "lead_1", &serde_json::json!({"name": "Ada"}));
    ws.index("lead-email", "ada@example.com", "lead_1");
    ws.event(
        "api",
        "lead.captured",
        "lead",
        "lead_1",
        serde_json::json!({}),
        true,
    );
    let ticket = store.apply(ws).unwrap();
    store.durable(&ticket).await.unwrap();
    assert_eq!(ticket.event_ids, vec![1]);
    let lead: serde_json::Value = store.get("lead", "lead_1").unwrap().unwrap();
    assert_eq!(lead["name"], "Ada");
    assert_eq!(
        store
            .index("lead-email", "ada@example.com")
            .unwrap()
            .as_deref(),
        Some("lead_1")
    );
    let events = store.events_after(0, 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "lead.captured");
    let outbox = store.outbox_after(0, 10).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].event_id, 1);
}

#[tokio::test]
async fn event_ids_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for _ in 0..3 {
            let mut ws = store.begin();
            ws.event("api", "x", "lead", "1", serde_json::json!({}), false);
            let t = store.apply(ws).unwrap();
            store.durable(&t).await.unwrap();
        }
    }
    let store = open(dir.path());
    let mut ws = store.begin();
    ws.event("api", "x", "lead", "1", serde_json::json!({}), false);
    let t = store.apply(ws).unwrap();
    assert_eq!(t.event_ids, vec![4]);
    assert_eq!(store.events_after(2, 10).unwrap().len(), 2);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match Store::open(dir.path(), &StoreOptions::default()) {
        Err(StoreError::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
        other => panic!("expected Locked, got {:?}", other.err()),
    }
}

#[test]
fn a_store_with_an_unknown_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.tree().unwrap().insert(b"m/schema", b"99").unwrap();
        store.flush().unwrap();
    }
    match Store::open(dir.path(), &StoreOptions::default()) {
        Err(e @ StoreError::UnknownSchema { .. }) => {
            let text = e.to_string();
            assert!(text.contains("schema version 99"), "{text}");
            assert!(text.contains("settled restore"), "{text}");
        }
        other => panic!("expected UnknownSchema, got {:?}", other.err()),
    }
}

#[test]
fn counters_are_consecutive_within_and_across_write_sets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ws = store.begin();
    assert_eq!(store.next_counter(&mut ws, "inv/2026").unwrap(), 1);
    assert_eq!(store.next_counter(&mut ws, "inv/2026").unwrap(), 2);
    assert_eq!(store.next_counter(&mut ws, "inv/2027").unwrap(), 1);
    store.apply(ws).unwrap();
    let mut ws = store.begin();
    assert_eq!(store.next_counter(&mut ws, "inv/2026").unwrap(), 3);
}

#[tokio::test]
async fn backup_then_restore_into_an_empty_directory_reproduces_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.jsonl");
    let before: Vec<(sled::IVec, serde_json::Value)>;
    {
        let store = open(&dir.path().join("a"));
        let mut ws = store.begin();
        ws.put(
            "lead",
            "lead_1",
            &serde_json::json!({"name": "Ada", "amount": "10.00"}),
        );
        ws.event(
            "api",
            "lead.captured",
            "lead",
            "lead_1",
            serde_json::json!({"n": 1}),
            true,
        );
        store.next_counter(&mut ws, "id/lead").unwrap();
        store.apply(ws).unwrap();
        let written = backup_to(&store, &file).unwrap();
        before = dump(&store);
        assert_eq!(written as usize, before.len());
    }
    let restored = open(&dir.path().join("b"));
    restore_from(&restored, &file).unwrap();
    assert_eq!(before, dump(&restored));
    // A second restore into the now non-empty store is refused and changes nothing.
    assert!(restore_from(&restored, &file).is_err());
}

#[tokio::test]
async fn a_backup_with_a_bad_line_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        format!("{{\"format\":\"settled-backup\",\"schema\":{SCHEMA_VERSION}}}\n{{\"k\":\"e/lead/1\",\"v\":{{}}}}\nnot json\n"),
    )
    .unwrap();
    let store = open(&dir.path().join("s"));
    let err = restore_from(&store, &file).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");
    assert_eq!(store.count("lead"), 0);
}

#[tokio::test]
async fn concurrent_writers_share_flushes_and_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = store.begin();
            ws.put("lead", &format!("lead_{i:03}"), &i);
            let t = store.apply(ws).unwrap();
            store.durable(&t).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.count("lead"), 64);
}

fn dump(store: &Store) -> Vec<(sled::IVec, serde_json::Value)> {
    store
        .tree()
        .unwrap()
        .iter()
        .map(Result::unwrap)
        .map(|(k, v)| (k, serde_json::from_slice(&v).unwrap()))
        .collect()
}

#[tokio::test]
async fn the_outbox_is_the_flagged_events_in_order_and_reads_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ws = store.begin();
    for (kind, outbox) in [
        ("a", true),
        ("b", false),
        ("c", true),
        ("d", false),
        ("e", true),
    ] {
        ws.event(
            "api",
            kind,
            "lead",
            "1",
            serde_json::json!({"k": kind}),
            outbox,
        );
    }
    let ticket = store.apply(ws).unwrap();
    store.durable(&ticket).await.unwrap();
    let all = store.outbox_after(0, 10).unwrap();
    let kinds: Vec<&str> = all.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["a", "c", "e"]);
    assert_eq!(
        all.iter().map(|r| r.event_id).collect::<Vec<_>>(),
        [1, 3, 5]
    );
    assert_eq!(all[1].data["data"]["k"], "c");
    // A sink that delivered up to row 3 gets the rest; the limit counts outbox rows, not events.
    let rest = store.outbox_after(3, 10).unwrap();
    assert_eq!(rest.iter().map(|r| r.id).collect::<Vec<_>>(), [5]);
    assert_eq!(store.outbox_after(0, 2).unwrap().len(), 2);
    assert_eq!(store.events_after(0, 10).unwrap().len(), 5);
}

fn keys_under(store: &Store, prefix: &str) -> Vec<String> {
    store
        .tree()
        .unwrap()
        .scan_prefix(prefix.as_bytes())
        .keys()
        .map(|k| String::from_utf8_lossy(&k.unwrap()).to_string())
        .collect()
}

#[tokio::test]
async fn payments_of_one_write_set_share_blocks_and_each_reads_changes_and_scans_as_its_own_record()
{
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ws = store.begin();
    for n in 1..=150u32 {
        ws.put(
            "payment",
            &format!("pay_{n:08}"),
            &serde_json::json!({"id": format!("pay_{n:08}"), "n": n}),
        );
    }
    store.apply(ws).unwrap();
    // 150 records, `MAX_BLOCK` to a block: a key per block, none of them per record.
    let m = blocks::MAX_BLOCK;
    let starts: Vec<String> = (0..150_usize.div_ceil(m))
        .map(|b| format!("b/payment/{:020}", 1 + b * m))
        .collect();
    assert_eq!(keys_under(&store, "b/payment/"), starts);
    assert!(keys_under(&store, "e/payment/").is_empty());
    let m = u32::try_from(m).unwrap();
    for n in [1u32, m, m + 1, 2 * m, 2 * m + 1, 150] {
        let p: serde_json::Value = store
            .get("payment", &format!("pay_{n:08}"))
            .unwrap()
            .unwrap();
        assert_eq!(p["n"], n);
    }
    assert!(store
        .get::<serde_json::Value>("payment", "pay_00000151")
        .unwrap()
        .is_none());

    // A later write set changes an old record (its block is rewritten in place) and adds new ones (a new block).
    let mut ws = store.begin();
    ws.put(
        "payment",
        "pay_00000070",
        &serde_json::json!({"id": "pay_00000070", "n": 70, "reversed": true}),
    );
    ws.put(
        "payment",
        "pay_00000151",
        &serde_json::json!({"id": "pay_00000151", "n": 151}),
    );
    assert_eq!(
        store
            .get_in::<serde_json::Value>(&ws, "e/payment/pay_00000070")
            .unwrap()
            .unwrap()["reversed"],
        true
    );
    store.apply(ws).unwrap();
    // A new record of a later write set starts a block of its own.
    assert_eq!(keys_under(&store, "b/payment/").len(), starts.len() + 1);
    let p: serde_json::Value = store.get("payment", "pay_00000070").unwrap().unwrap();
    assert_eq!(p["reversed"], true);
    let p: serde_json::Value = store.get("payment", "pay_00000071").unwrap().unwrap();
    assert_eq!(p["n"], 71);
    assert_eq!(store.count("payment"), 151);
    let order: Vec<u64> = store
        .scan::<serde_json::Value>("payment")
        .map(|p| p.unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, (1..=151).collect::<Vec<_>>());

    // Removing a record takes it out of its block; an id that is not the engine's `<prefix>_<digits>` keeps its own key.
    let mut ws = store.begin();
    ws.pending.insert("e/payment/pay_00000151".into(), None);
    ws.put(
        "payment",
        "imported-x",
        &serde_json::json!({"id": "imported-x", "n": 0}),
    );
    store.apply(ws).unwrap();
    assert!(store
        .get::<serde_json::Value>("payment", "pay_00000151")
        .unwrap()
        .is_none());
    assert_eq!(
        keys_under(&store, "b/payment/"),
        starts,
        "its emptied block is gone"
    );
    assert_eq!(keys_under(&store, "e/payment/"), ["e/payment/imported-x"]);
    assert_eq!(store.count("payment"), 151);

    // One write set changing records of two stored blocks: each is rewritten where it is, none shadows the other.
    let mut ws = store.begin();
    for n in [10u32, 66] {
        let id = format!("pay_{n:08}");
        ws.put(
            "payment",
            &id,
            &serde_json::json!({"id": id, "n": n, "changed": true}),
        );
    }
    store.apply(ws).unwrap();
    assert_eq!(keys_under(&store, "b/payment/"), starts);
    let mut seen: Vec<u64> = store
        .scan::<serde_json::Value>("payment")
        .map(|p| p.unwrap()["n"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..=150).collect::<Vec<_>>(), "every record once");
    for n in [10u32, 66, 67, 128] {
        let p: serde_json::Value = store
            .get("payment", &format!("pay_{n:08}"))
            .unwrap()
            .unwrap();
        assert_eq!(p["n"], n);
    }
}

#[tokio::test]
async fn events_are_stored_in_blocks_and_read_from_any_cursor_across_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let mut ws = store.begin();
        for i in 0..100 {
            ws.event(
                "api",
                "x",
                "lead",
                &i.to_string(),
                serde_json::json!({"i": i}),
                i % 2 == 0,
            );
        }
        store.apply(ws).unwrap();
        store.flush().unwrap();
        assert_eq!(
            keys_under(&store, "v/").len(),
            100_usize.div_ceil(blocks::MAX_BLOCK)
        );
    }
    let store = open(dir.path());
    assert_eq!(store.last_event_id(), 100);
    for after in [0u64, 1, 63, 64, 65, 99, 100] {
        let ids: Vec<u64> = store
            .events_after(after, 1000)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            ids,
            ((after + 1)..=100).collect::<Vec<_>>(),
            "after {after}"
        );
    }
    let outbox: Vec<u64> = store
        .outbox_after(60, 3)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(outbox, [61, 63, 65]);
}

/// Writes a store in the schema 1 layouts: a key per payment and per event, the announced status in `p/`, and from the
/// first release an `o/` outbox row (for event 1) and the `alloc-by-invoice` / `alloc-by-payment` indexes.
fn write_v1_store(dir: &Path, payments: u32, events: u64) {
    let store = open(dir);
    let tree = store.tree().unwrap();
    tree.insert(b"m/schema", b"1").unwrap();
    for n in 1..=payments {
        let id = format!("pay_{n:08}");
        tree.insert(
            format!("e/payment/{id}").as_bytes(),
            serde_json::to_vec(&serde_json::json!({"id": id, "n": n})).unwrap(),
        )
        .unwrap();
    }
    tree.insert(b"e/lead/lead_00000001", &b"{\"name\":\"Ada\"}"[..])
        .unwrap();
    tree.insert(b"e/invoice/inv_00000001", &b"{\"id\":\"inv_00000001\"}"[..])
        .unwrap();
    tree.insert(b"p/inv_00000001", &b"\"partially_paid\""[..])
        .unwrap();
    tree.insert(
        b"e/invoice/inv_00000002",
        &b"{\"id\":\"inv_00000002\",\"allocations\":[\"alc_00000005\"]}"[..],
    )
    .unwrap();
    for (invoice, allocation) in [(1, 1), (2, 3), (2, 2)] {
        let (invoice, allocation) = (format!("inv_{invoice:08}"), format!("alc_{allocation:08}"));
        tree.insert(
            format!("i/alloc-by-invoice/{invoice}/{allocation}").as_bytes(),
            serde_json::to_vec(&allocation).unwrap(),
        )
        .unwrap();
        tree.insert(
            format!("i/alloc-by-payment/pay_00000001/{allocation}").as_bytes(),
            serde_json::to_vec(&allocation).unwrap(),
        )
        .unwrap();
    }
    tree.insert(
        b"o/00000000000000000001",
        serde_json::to_vec(&serde_json::json!({"id": 1, "event_id": 1, "type": "x", "at": chrono::Utc::now(), "data": {}}))
            .unwrap(),
    )
    .unwrap();
    for id in 1..=events {
        let event = Event {
            id,
            at: chrono::Utc::now(),
            actor: "api".into(),
            kind: "x".into(),
            entity: "lead".into(),
            entity_id: "1".into(),
            data: serde_json::json!({}),
            outbox: id % 3 == 0,
        };
        tree.insert(
            seq_key("v/", id).as_bytes(),
            serde_json::to_vec(&event).unwrap(),
        )
        .unwrap();
    }
    store.flush().unwrap();
}

#[tokio::test]
async fn a_schema_1_store_is_converted_to_blocks_on_open_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    write_v1_store(dir.path(), 1500, 200);
    let store = open(dir.path());
    assert!(keys_under(&store, "e/payment/").is_empty());
    assert_eq!(
        keys_under(&store, "b/payment/").len(),
        1500_usize.div_ceil(blocks::MAX_BLOCK)
    );
    assert_eq!(store.count("payment"), 1500);
    let p: serde_json::Value = store.get("payment", "pay_00001234").unwrap().unwrap();
    assert_eq!(p["n"], 1234);
    let lead: serde_json::Value = store.get("lead", "lead_00000001").unwrap().unwrap();
    assert_eq!(lead["name"], "Ada");
    assert_eq!(
        keys_under(&store, "v/").len(),
        200_usize.div_ceil(blocks::MAX_BLOCK)
    );
    let ids: Vec<u64> = store
        .events_after(0, 1000)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>());
    // Events 3, 6, ... were flagged already; event 1 had an old `o/` row, which became its flag.
    let outbox = store.outbox_after(0, 1000).unwrap();
    assert_eq!(outbox.len(), 67);
    assert_eq!(outbox[0].event_id, 1);
    assert!(keys_under(&store, "o/").is_empty());
    // New events continue after the converted ones, and the store now says schema 2.
    let mut ws = store.begin();
    ws.event("api", "y", "lead", "1", serde_json::json!({}), false);
    assert_eq!(store.apply(ws).unwrap().event_ids, [201]);
    assert_eq!(
        store.get_raw::<u64>("m/schema").unwrap(),
        Some(SCHEMA_VERSION)
    );
    // The last announced payment status moved into the invoice.
    let invoice: serde_json::Value = store.get("invoice", "inv_00000001").unwrap().unwrap();
    assert_eq!(invoice["announced_status"], "partially_paid");
    assert!(keys_under(&store, "p/").is_empty());
    // The allocation indexes became the invoices' lists, oldest first, merged with what a list already held.
    assert_eq!(invoice["allocations"], serde_json::json!(["alc_00000001"]));
    let invoice: serde_json::Value = store.get("invoice", "inv_00000002").unwrap().unwrap();
    assert_eq!(
        invoice["allocations"],
        serde_json::json!(["alc_00000002", "alc_00000003", "alc_00000005"])
    );
    assert!(keys_under(&store, "i/alloc-by-").is_empty());
}

#[tokio::test]
async fn a_schema_1_backup_restores_into_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.jsonl");
    let mut text = String::from(
        "{\"format\":\"settled-backup\",\"schema\":1}\n{\"k\":\"m/schema\",\"v\":1}\n",
    );
    for n in 1..=70u32 {
        text.push_str(&format!(
            "{{\"k\":\"e/allocation/alc_{n:08}\",\"v\":{{\"n\":{n}}}}}\n"
        ));
    }
    std::fs::write(&file, text).unwrap();
    let store = open(&dir.path().join("s"));
    assert_eq!(restore_from(&store, &file).unwrap(), 71);
    assert_eq!(
        keys_under(&store, "b/allocation/").len(),
        70_usize.div_ceil(blocks::MAX_BLOCK)
    );
    assert!(keys_under(&store, "e/allocation/").is_empty());
    let a: serde_json::Value = store.get("allocation", "alc_00000070").unwrap().unwrap();
    assert_eq!(a["n"], 70);
}

#[test]
fn a_seen_payment_id_is_stored_bare_and_read_back_as_what_it_produced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ws = store.begin();
    ws.seen(
        "pay:csv:1",
        &serde_json::json!({"payment_id": "pay_00000001"}),
    );
    ws.seen("pay:csv:2", &serde_json::json!({"ignored": "outgoing"}));
    store.apply(ws).unwrap();
    let raw = store
        .tree()
        .unwrap()
        .get(seen::block_key(1).as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(
        &raw[..],
        &br#"[["pay:csv:1","pay_00000001"],["pay:csv:2",{"ignored":"outgoing"}]]"#[..]
    );
    assert_eq!(
        store.seen("pay:csv:1").unwrap(),
        Some(serde_json::json!({"payment_id": "pay_00000001"}))
    );
    assert_eq!(
        store.seen("pay:csv:2").unwrap(),
        Some(serde_json::json!({"ignored": "outgoing"}))
    );
    assert_eq!(store.seen("pay:csv:3").unwrap(), None);
}

/// Write sets of `per` seen keys `<prefix>:<n>` for n in `range`, each producing `{"payment_id": "pay_<n>"}`.
fn record_seen(store: &Store, prefix: &str, range: std::ops::Range<u32>, per: usize) {
    let keys: Vec<u32> = range.collect();
    for chunk in keys.chunks(per) {
        let mut ws = store.begin();
        for n in chunk {
            ws.seen(
                &format!("{prefix}:{n}"),
                &serde_json::json!({"payment_id": format!("pay_{n}")}),
            );
        }
        store.apply(ws).unwrap();
    }
}

fn seen_payment(store: &Store, key: &str) -> Option<String> {
    store
        .seen(key)
        .unwrap()
        .map(|v| v["payment_id"].as_str().unwrap().to_string())
}

#[test]
fn seen_keys_take_one_block_per_write_set_no_key_of_their_own_and_are_found_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        record_seen(&store, "pay:csv", 0..750, 250);
        // A write set above a block's capacity makes more than one.
        record_seen(&store, "pay:big", 0..1100, 1100);
        assert_eq!(keys_under(&store, "S/").len(), 3 + 3);
        assert!(keys_under(&store, "s/").is_empty());
        assert_eq!(seen_payment(&store, "pay:csv:0").as_deref(), Some("pay_0"));
        assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
        store.flush().unwrap();
    }
    let store = open(dir.path());
    for n in [0, 249, 250, 749] {
        assert_eq!(
            seen_payment(&store, &format!("pay:csv:{n}")),
            Some(format!("pay_{n}"))
        );
    }
    assert_eq!(
        seen_payment(&store, "pay:big:1099").as_deref(),
        Some("pay_1099")
    );
    assert_eq!(store.seen("pay:csv:750").unwrap(), None);
    assert_eq!(store.seen_index_size().unwrap().0, 1850);
    // New blocks continue after the ones read at open.
    record_seen(&store, "pay:more", 0..1, 1);
    assert_eq!(
        keys_under(&store, "S/").last().unwrap(),
        &seen::block_key(7)
    );
    assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
}

/// Every key collides with every other.
fn one_fingerprint(_: &str) -> u64 {
    7
}

/// Sixteen fingerprints for all keys: collisions within and across the merged arrays and the recent entries.
fn sixteen_fingerprints(key: &str) -> u64 {
    seen::fingerprint(key) & 0xf
}

fn open_colliding(dir: &Path, fingerprint: seen::Fingerprint) -> Store {
    Store::open_with(dir, &StoreOptions::default(), fingerprint).expect("store opens")
}

#[test]
fn keys_whose_fingerprints_collide_are_told_apart_by_their_exact_key_before_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_colliding(dir.path(), one_fingerprint);
        record_seen(&store, "pay:csv", 0..3, 2);
        assert_eq!(seen_payment(&store, "pay:csv:0").as_deref(), Some("pay_0"));
        assert_eq!(seen_payment(&store, "pay:csv:2").as_deref(), Some("pay_2"));
        assert_eq!(
            store.seen("pay:csv:3").unwrap(),
            None,
            "a fingerprint hit is not a key hit"
        );
        store.flush().unwrap();
    }
    let store = open_colliding(dir.path(), one_fingerprint);
    for n in 0..3 {
        assert_eq!(
            seen_payment(&store, &format!("pay:csv:{n}")),
            Some(format!("pay_{n}"))
        );
    }
    assert_eq!(store.seen("pay:other:1").unwrap(), None);
    assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
}

#[test]
fn collisions_stay_exact_across_merges_of_the_in_memory_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_colliding(dir.path(), sixteen_fingerprints);
        // More than a merge's worth (16k) in write sets of 500: merged, then recent entries on top.
        record_seen(&store, "k", 0..17_000, 500);
        for n in [0, 8_191, 16_383, 16_999] {
            assert_eq!(
                seen_payment(&store, &format!("k:{n}")),
                Some(format!("pay_{n}"))
            );
        }
        assert_eq!(store.seen("k:17000").unwrap(), None);
        assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
        store.flush().unwrap();
    }
    let store = open_colliding(dir.path(), sixteen_fingerprints);
    record_seen(&store, "k", 17_000..17_010, 5);
    for n in [1, 12_345, 17_009] {
        assert_eq!(
            seen_payment(&store, &format!("k:{n}")),
            Some(format!("pay_{n}"))
        );
    }
    assert_eq!(store.seen("k:17010").unwrap(), None);
}

#[test]
fn a_seen_key_recorded_again_answers_what_it_produced_last_even_when_fingerprints_collide() {
    let dir = tempfile::tempdir().unwrap();
    let first = serde_json::json!({"invoice_id": "inv_1b"});
    let second = serde_json::json!({"invoice_id": "inv_2b"});
    {
        let store = open_colliding(dir.path(), one_fingerprint);
        let mut ws = store.begin();
        ws.seen("inv:tryton:1", &serde_json::json!({"invoice_id": "inv_1"}));
        ws.seen("inv:tryton:2", &serde_json::json!({"invoice_id": "inv_2"}));
        // Within one write set the last write wins.
        ws.seen("inv:tryton:2", &second);
        store.apply(ws).unwrap();
        let mut ws = store.begin();
        ws.seen("inv:tryton:1", &first);
        store.apply(ws).unwrap();
        assert_eq!(store.seen("inv:tryton:1").unwrap(), Some(first.clone()));
        assert_eq!(store.seen("inv:tryton:2").unwrap(), Some(second.clone()));
        store.flush().unwrap();
    }
    let store = open_colliding(dir.path(), one_fingerprint);
    assert_eq!(store.seen("inv:tryton:1").unwrap(), Some(first));
    assert_eq!(store.seen("inv:tryton:2").unwrap(), Some(second));
}

#[test]
fn a_write_set_sees_its_own_seen_keys_before_it_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    record_seen(&store, "pay:csv", 0..1, 1);
    let mut ws = store.begin();
    ws.seen("pay:csv:1", &serde_json::json!({"payment_id": "pay_1"}));
    ws.seen("pay:csv:0", &serde_json::json!({"ignored": "again"}));
    assert_eq!(
        store.seen_in(&ws, "pay:csv:1").unwrap(),
        Some(serde_json::json!({"payment_id": "pay_1"}))
    );
    assert_eq!(
        store.seen_in(&ws, "pay:csv:0").unwrap(),
        Some(serde_json::json!({"ignored": "again"}))
    );
    assert_eq!(
        seen_payment(&store, "pay:csv:0").as_deref(),
        Some("pay_0"),
        "the store answers what was applied"
    );
    assert_eq!(store.seen("pay:csv:1").unwrap(), None);
    assert!(!ws.is_empty());
    store.apply(ws).unwrap();
    assert_eq!(seen_payment(&store, "pay:csv:1").as_deref(), Some("pay_1"));
}

/// A schema 2 store: `count` seen keys `pay:csv:<n>` of their own, alternately stored bare and as objects.
fn write_v2_seen(dir: &Path, count: u32) {
    let store = open(dir);
    let tree = store.tree().unwrap();
    tree.insert(b"m/schema", b"2").unwrap();
    for n in 0..count {
        let value = if n % 2 == 0 {
            serde_json::json!(format!("pay_{n}"))
        } else {
            serde_json::json!({"payment_id": format!("pay_{n}")})
        };
        tree.insert(
            format!("s/pay:csv:{n}").as_bytes(),
            serde_json::to_vec(&value).unwrap(),
        )
        .unwrap();
    }
    store.flush().unwrap();
}

/// sled itself in `dir`, once the background threads of the store just dropped let go of its file lock (as
/// `open_sled` waits; opening at once failed now and then).
fn raw_sled(dir: &Path) -> sled::Db {
    let config = sled::Config::new().path(dir.join("db"));
    for _ in 0..250 {
        match config.open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => {
                return other.unwrap_or_else(|e| panic!("opening sled in {}: {e}", dir.display()))
            }
        }
    }
    panic!("sled in {} stayed locked for 5 s", dir.display())
}

/// Every key in the seen blocks, in block order.
fn seen_block_keys(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for (_, block) in store
        .scan_raw::<Vec<(String, serde_json::Value)>>("S/")
        .unwrap()
    {
        out.extend(block.into_iter().map(|(k, _)| k));
    }
    out
}

#[test]
fn a_schema_2_store_converts_its_seen_keys_into_blocks_even_when_the_conversion_was_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    write_v2_seen(dir.path(), 1200);
    // A conversion that stops (a crash) after its first block.
    {
        let db = raw_sled(dir.path());
        let tree = db.open_tree("settled").unwrap();
        migrate::from_v2(&tree, Some(1)).unwrap();
        assert_eq!(tree.get(b"m/schema").unwrap().unwrap(), &b"2"[..]);
        assert_eq!(tree.scan_prefix(b"S/").count(), 1);
        assert_eq!(tree.scan_prefix(b"s/").count(), 1200 - seen::MAX_BLOCK);
        db.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(
        store.get_raw::<u64>("m/schema").unwrap(),
        Some(SCHEMA_VERSION)
    );
    assert!(keys_under(&store, "s/").is_empty());
    assert_eq!(
        keys_under(&store, "S/").len(),
        1200_usize.div_ceil(seen::MAX_BLOCK)
    );
    let mut keys = seen_block_keys(&store);
    assert_eq!(keys.len(), 1200, "no key lost or kept twice");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 1200);
    for n in [0, 1, 511, 512, 1199] {
        assert_eq!(
            seen_payment(&store, &format!("pay:csv:{n}")),
            Some(format!("pay_{n}"))
        );
    }
    assert_eq!(store.seen("pay:csv:1200").unwrap(), None);
    assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
}

#[test]
fn backups_of_schema_2_and_3_restore_with_their_seen_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v2.jsonl");
    let lines = [
        r#"{"format":"settled-backup","schema":2}"#,
        r#"{"k":"m/schema","v":2}"#,
        r#"{"k":"s/pay:csv:1","v":"pay_1"}"#,
        r#"{"k":"s/mail:m:<a@b>","v":{"lead_id":"lead_1"}}"#,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let store = open(&dir.path().join("from-2"));
    assert_eq!(restore_from(&store, &file).unwrap(), 3);
    assert_eq!(seen_payment(&store, "pay:csv:1").as_deref(), Some("pay_1"));
    assert_eq!(
        store.seen("mail:m:<a@b>").unwrap(),
        Some(serde_json::json!({"lead_id": "lead_1"}))
    );
    assert!(keys_under(&store, "s/").is_empty());
    assert_eq!(
        store.get_raw::<u64>("m/schema").unwrap(),
        Some(SCHEMA_VERSION)
    );
    assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());

    let again = dir.path().join("v3.jsonl");
    backup_to(&store, &again).unwrap();
    let store = open(&dir.path().join("from-3"));
    restore_from(&store, &again).unwrap();
    assert_eq!(seen_payment(&store, "pay:csv:1").as_deref(), Some("pay_1"));
    assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
}

#[test]
fn verify_seen_names_blocks_the_index_does_not_know_and_keys_left_in_the_old_layout() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    record_seen(&store, "pay:csv", 0..2, 2);
    assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
    let tree = store.tree().unwrap();
    tree.insert(
        seen::block_key(2).as_bytes(),
        &br#"[["pay:csv:9","pay_9"]]"#[..],
    )
    .unwrap();
    tree.insert(b"s/pay:csv:8", &br#""pay_8""#[..]).unwrap();
    let differences = store.verify_seen().unwrap();
    assert_eq!(differences.len(), 3, "{differences:?}");
    assert!(differences[0].contains("s/pay:csv:8"), "{differences:?}");
    assert!(
        differences
            .iter()
            .any(|d| d.contains("key pay:csv:9 in block S/00000000000000000002 is missing")),
        "{differences:?}"
    );
    assert!(
        differences.iter().any(|d| d.contains("next block")),
        "{differences:?}"
    );
}

#[tokio::test]
async fn a_change_applied_before_a_failed_flush_is_never_durable_even_after_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_mount) = super::full_disk::Tmpfs::mount(&data, "8m") else {
        eprintln!("skipping the full-disk store test: mounting a small filesystem needs root");
        return;
    };
    let store = open(&data);
    let mut ws = store.begin();
    ws.put(
        "lead",
        "lead_00000001",
        &serde_json::json!({"id": "lead_00000001"}),
    );
    ws.event(
        "test",
        "lead.captured",
        "lead",
        "lead_00000001",
        serde_json::json!({}),
        false,
    );
    ws.seen("pay:t:kept", &serde_json::json!({"payment_id": "pay_kept"}));
    let kept = store.apply(ws).unwrap();
    store.durable(&kept).await.unwrap();

    super::full_disk::fill(&data.join("ballast"));
    // sled may put the first changes into file pages it already holds: write until a flush fails.
    let mut lost = None;
    for n in 2..2000 {
        let id = format!("lead_{n:08}");
        let mut ws = store.begin();
        ws.put(
            "lead",
            &id,
            &serde_json::json!({"id": id, "pad": "x".repeat(2000)}),
        );
        ws.event(
            "test",
            "lead.captured",
            "lead",
            &id,
            serde_json::json!({}),
            false,
        );
        ws.seen(
            &format!("pay:t:{id}"),
            &serde_json::json!({"payment_id": id}),
        );
        let ticket = store.apply(ws).unwrap();
        if let Err(e) = store.durable(&ticket).await {
            assert!(matches!(e, StoreError::WriteFailed { .. }), "{e}");
            lost = Some((id, ticket));
            break;
        }
    }
    let (lost_id, lost_ticket) = lost.expect("a flush failed on the full disk");
    let failure = store.failure().expect("the store closed itself");
    assert!(
        failure
            .reason
            .contains("the disk is full (no space left on device)"),
        "{failure:?}"
    );
    assert!(matches!(
        store.get::<serde_json::Value>("lead", &lost_id),
        Err(StoreError::Unavailable { .. })
    ));
    assert_eq!(
        store.last_event_id(),
        0,
        "no event id is shown while closed"
    );

    std::fs::remove_file(data.join("ballast")).unwrap();
    assert!(store.reopen().unwrap());
    assert!(!store.reopen().unwrap(), "an open store is left alone");
    assert!(store.failure().is_none());
    assert_eq!(
        store.get::<serde_json::Value>("lead", &lost_id).unwrap(),
        None
    );
    // The seen index was read back from disk too: the lost write's key is not seen, the confirmed one is.
    assert_eq!(store.seen(&format!("pay:t:{lost_id}")).unwrap(), None);
    assert_eq!(
        seen_payment(&store, "pay:t:kept").as_deref(),
        Some("pay_kept")
    );
    assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
    let confirmed = store.last_event_id();
    assert_eq!(
        store.events_after(0, 10_000).unwrap().len() as u64,
        confirmed
    );
    assert!(
        matches!(
            store.durable(&lost_ticket).await,
            Err(StoreError::Unavailable { .. })
        ),
        "a ticket of the closed opening is not made durable by the new one"
    );
    let mut ws = store.begin();
    ws.event(
        "test",
        "lead.captured",
        "lead",
        "lead_99999999",
        serde_json::json!({}),
        false,
    );
    ws.seen(
        "pay:t:after",
        &serde_json::json!({"payment_id": "pay_after"}),
    );
    let next = store.apply(ws).unwrap();
    store.durable(&next).await.unwrap();
    assert_eq!(
        seen_payment(&store, "pay:t:after").as_deref(),
        Some("pay_after")
    );
    assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
    assert_eq!(
        next.event_ids,
        vec![confirmed + 1],
        "the failed write took no event id"
    );
}

#[test]
fn an_index_prefix_read_through_a_write_set_sees_its_own_writes_and_removals() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ws = store.begin();
    ws.index("paid-by", "e2e:x/pay_1", "pay_1");
    ws.index("paid-by", "e2e:x/pay_2", "pay_2");
    ws.index("paid-by", "e2e:xy/pay_9", "pay_9");
    store.apply(ws).unwrap();
    let mut ws = store.begin();
    ws.index("paid-by", "e2e:x/pay_3", "pay_3");
    ws.unindex("paid-by", "e2e:x/pay_1");
    assert_eq!(
        store.index_prefix_in(&ws, "paid-by", "e2e:x/").unwrap(),
        ["pay_2", "pay_3"]
    );
    assert_eq!(
        store.index_prefix("paid-by", "e2e:x/").unwrap(),
        ["pay_1", "pay_2"]
    );
}

#[test]
fn deferred_writes_are_read_and_scanned_over_sled_until_a_checkpoint_writes_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ws = store.begin();
    ws.put("invoice", "inv_1", &json!({"paid": "0"}));
    ws.put("invoice", "inv_2", &json!({"paid": "0"}));
    ws.index("open-invoice", "inv_1", "inv_1");
    ws.index("open-invoice", "inv_2", "inv_2");
    ws.event("t", "issued", "invoice", "inv_1", json!({}), false);
    store.apply(ws).unwrap();
    let on_disk = |key: &str| on_disk(&store, key);

    let mut ws = store.begin();
    ws.put_deferred("e/invoice/inv_1", Some(&json!({"paid": "5"})));
    ws.put_deferred::<()>("i/open-invoice/inv_1", None);
    // The write set reads its own deferred writes.
    assert_eq!(
        store
            .get_in::<serde_json::Value>(&ws, "e/invoice/inv_1")
            .unwrap(),
        Some(json!({"paid": "5"}))
    );
    assert_eq!(
        store.index_prefix_in(&ws, "open-invoice", "").unwrap(),
        ["inv_2"]
    );
    store.apply(ws).unwrap();
    assert_eq!(store.deferred_len(), 2);
    // Every read sees the overlay; sled does not have it.
    assert_eq!(
        store.get::<serde_json::Value>("invoice", "inv_1").unwrap(),
        Some(json!({"paid": "5"}))
    );
    assert_eq!(on_disk("e/invoice/inv_1"), Some(json!({"paid": "0"})));
    assert_eq!(store.index_prefix("open-invoice", "").unwrap(), ["inv_2"]);
    assert_eq!(
        store.index_values::<String>("open-invoice").unwrap(),
        ["inv_2"]
    );
    let scanned: Vec<serde_json::Value> = store.scan("invoice").map(Result::unwrap).collect();
    assert_eq!(scanned, [json!({"paid": "5"}), json!({"paid": "0"})]);

    // A write-through of the same key in a later write set supersedes the deferred value.
    let mut ws = store.begin();
    ws.put("invoice", "inv_1", &json!({"paid": "7"}));
    // Within one write set, a key written through stays written through.
    ws.put("invoice", "inv_2", &json!({"paid": "1"}));
    ws.put_deferred("e/invoice/inv_2", Some(&json!({"paid": "2"})));
    store.apply(ws).unwrap();
    assert_eq!(on_disk("e/invoice/inv_1"), Some(json!({"paid": "7"})));
    assert_eq!(on_disk("e/invoice/inv_2"), Some(json!({"paid": "2"})));
    assert_eq!(
        store.deferred_len(),
        1,
        "only the open-invoice removal waits"
    );
    assert_eq!(store.index_prefix("open-invoice", "").unwrap(), ["inv_2"]);

    // A checkpoint writes the overlay to sled with the position it covers, and empties it.
    assert_eq!(store.checkpoint().unwrap(), None);
    let snapshot = store.snapshot_overlay(store.checkpoint_turn(), 1);
    assert_eq!(store.write_snapshot(snapshot).unwrap(), 1);
    assert_eq!(store.deferred_len(), 0);
    assert_eq!(store.checkpoint().unwrap(), Some(1));
    assert_eq!(on_disk("i/open-invoice/inv_1"), None);
    assert_eq!(store.index_prefix("open-invoice", "").unwrap(), ["inv_2"]);
}

/// A patch of `paid` and one allocation id.
fn paid(amount: &str, allocation: &str) -> Patch {
    let mut patch = Patch::new();
    patch
        .set("paid", json!(amount))
        .append("allocations", allocation);
    patch
}

#[test]
fn a_patch_reads_as_the_value_it_leaves_and_stays_right_over_a_base_a_checkpoint_already_patched() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let on_disk = |key: &str| on_disk(&store, key);
    let invoice = |paid: &str, allocations: &[&str]| json!({"paid": paid, "allocations": allocations, "n": 1});
    let mut ws = store.begin();
    ws.put("invoice", "inv_1", &invoice("0", &[]));
    ws.put("invoice", "inv_2", &invoice("0", &[]));
    store.apply(ws).unwrap();

    // Two patches in one write set compose; the set reads its own patch over the store's value.
    let mut ws = store.begin();
    ws.put_patch("e/invoice/inv_1", paid("5", "a1")).unwrap();
    ws.put_patch("e/invoice/inv_1", paid("10", "a2")).unwrap();
    let mine: Option<serde_json::Value> = store.get_in(&ws, "e/invoice/inv_1").unwrap();
    assert_eq!(mine, Some(invoice("10", &["a1", "a2"])));
    // Over a value the set writes through, a patch is applied to it there.
    ws.put("invoice", "inv_2", &invoice("1", &["a0"]));
    ws.put_patch("e/invoice/inv_2", paid("3", "a3")).unwrap();
    store.apply(ws).unwrap();
    assert_eq!(
        on_disk("e/invoice/inv_2"),
        Some(invoice("3", &["a0", "a3"]))
    );
    assert_eq!(store.deferred_len(), 1);
    // Every read sees the patched value; sled does not have it.
    let read: Option<serde_json::Value> = store.get("invoice", "inv_1").unwrap();
    assert_eq!(read, Some(invoice("10", &["a1", "a2"])));
    let scanned: Vec<serde_json::Value> = store.scan("invoice").map(Result::unwrap).collect();
    assert_eq!(
        scanned,
        [invoice("10", &["a1", "a2"]), invoice("3", &["a0", "a3"])]
    );
    assert_eq!(on_disk("e/invoice/inv_1"), Some(invoice("0", &[])));

    // A checkpoint takes its snapshot; a later patch of the same key lands before it writes.
    let snapshot = store.snapshot_overlay(store.checkpoint_turn(), 0);
    let mut ws = store.begin();
    ws.put_patch("e/invoice/inv_1", paid("12", "a4")).unwrap();
    store.apply(ws).unwrap();
    store.write_snapshot(snapshot).unwrap();
    assert_eq!(
        on_disk("e/invoice/inv_1"),
        Some(invoice("10", &["a1", "a2"]))
    );
    assert_eq!(store.deferred_len(), 1, "the later patch stays");
    // Over a base that has its earlier ids already, each id is listed once.
    let read: Option<serde_json::Value> = store.get("invoice", "inv_1").unwrap();
    assert_eq!(read, Some(invoice("12", &["a1", "a2", "a4"])));
    let snapshot = store.snapshot_overlay(store.checkpoint_turn(), 0);
    store.write_snapshot(snapshot).unwrap();
    assert_eq!(store.deferred_len(), 0);
    assert_eq!(
        on_disk("e/invoice/inv_1"),
        Some(invoice("12", &["a1", "a2", "a4"]))
    );

    // A patch over a whole deferred value (a replay's) is applied to it; a patch of a missing key leaves nothing.
    store.replay_deferred("e/invoice/inv_2", Some(&invoice("4", &["a0", "a3", "a5"])));
    let mut ws = store.begin();
    ws.put_patch("e/invoice/inv_2", paid("6", "a6")).unwrap();
    ws.put_patch("e/invoice/inv_9", paid("1", "a7")).unwrap();
    store.apply(ws).unwrap();
    let read: Option<serde_json::Value> = store.get("invoice", "inv_2").unwrap();
    assert_eq!(read, Some(invoice("6", &["a0", "a3", "a5", "a6"])));
    assert_eq!(
        store.get::<serde_json::Value>("invoice", "inv_9").unwrap(),
        None
    );
    let snapshot = store.snapshot_overlay(store.checkpoint_turn(), 0);
    store.write_snapshot(snapshot).unwrap();
    assert_eq!(
        on_disk("e/invoice/inv_2"),
        Some(invoice("6", &["a0", "a3", "a5", "a6"]))
    );
    assert_eq!(on_disk("e/invoice/inv_9"), None);
}

#[test]
fn a_reopened_store_has_no_deferred_writes_and_a_store_without_a_checkpoint_gets_one_at_its_newest_event(
) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ws = store.begin();
    ws.event("t", "a", "x", "1", json!({}), false);
    ws.event("t", "b", "x", "1", json!({}), false);
    store.apply(ws).unwrap();
    store.init_checkpoint().unwrap();
    assert_eq!(store.checkpoint().unwrap(), Some(2));
    let mut ws = store.begin();
    ws.event("t", "c", "x", "1", json!({}), false);
    ws.put_deferred("e/invoice/inv_1", Some(&json!({"paid": "5"})));
    store.apply(ws).unwrap();
    // Set once: a later start must replay from the checkpoint, not skip what was deferred since.
    store.init_checkpoint().unwrap();
    assert_eq!(store.checkpoint().unwrap(), Some(2));
    store.flush().unwrap();
    // A failed write closes the store; reopening drops what only the overlay held.
    store.close(
        store.open_handle().unwrap().generation,
        &sled::Error::Unsupported("test".into()),
    );
    assert!(store.reopen().unwrap());
    assert_eq!(store.deferred_len(), 0);
    assert_eq!(
        store.get::<serde_json::Value>("invoice", "inv_1").unwrap(),
        None
    );
}

#[test]
fn a_checkpoint_running_beside_writers_never_puts_its_older_value_over_a_newer_one_and_keeps_later_deferred_writes(
) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let on_disk = |key: &str| on_disk(&store, key);
    let mut ws = store.begin();
    ws.event("t", "a", "x", "1", json!({}), false);
    for id in ["inv_1", "inv_2", "inv_3"] {
        ws.put_deferred(&format!("e/invoice/{id}"), Some(&json!({"paid": "1"})));
    }
    store.apply(ws).unwrap();
    let turn = store.checkpoint_turn();
    assert!(
        store.try_checkpoint_turn().is_none(),
        "one checkpoint at a time"
    );
    let snapshot = store.snapshot_overlay(turn, 1);
    assert_eq!(snapshot.len(), 3);
    // While the snapshot waits to be written: inv_1 is written through (a reversal), inv_2 deferred again.
    let mut ws = store.begin();
    ws.put("invoice", "inv_1", &json!({"paid": "0"}));
    ws.put_deferred("e/invoice/inv_2", Some(&json!({"paid": "2"})));
    store.apply(ws).unwrap();
    assert_eq!(store.write_snapshot(snapshot).unwrap(), 3);
    assert!(
        store.try_checkpoint_turn().is_some(),
        "the turn is given back"
    );
    assert_eq!(store.checkpoint().unwrap(), Some(1));
    assert_eq!(
        on_disk("e/invoice/inv_1"),
        Some(json!({"paid": "0"})),
        "the write-through is not overwritten by the snapshot's older value"
    );
    assert_eq!(on_disk("e/invoice/inv_2"), Some(json!({"paid": "1"})));
    assert_eq!(on_disk("e/invoice/inv_3"), Some(json!({"paid": "1"})));
    assert_eq!(
        store.deferred_len(),
        1,
        "only the value deferred after the snapshot stays in the overlay"
    );
    assert_eq!(
        store.get::<serde_json::Value>("invoice", "inv_2").unwrap(),
        Some(json!({"paid": "2"}))
    );

    // An overlay emptied for a replay while a checkpoint writes is not touched by it.
    let snapshot = store.snapshot_overlay(store.checkpoint_turn(), 1);
    store.clear_deferred();
    store.replay_deferred("e/invoice/inv_2", Some(&json!({"paid": "2"})));
    store.write_snapshot(snapshot).unwrap();
    assert_eq!(store.deferred_len(), 1);
}

/// Rewrite every stored block (`b/`, `v/`, `S/`) as the plain JSON a schema 3 settled wrote, and mark the store so.
fn as_schema_3(store: &Store) {
    let tree = store.tree().unwrap();
    let mut unpacked = 0;
    for prefix in ["b/", "v/", "S/"] {
        for item in tree.scan_prefix(prefix) {
            let (k, v) = item.unwrap();
            let json = blocks::unpack("test", &v).unwrap().into_owned();
            if json != v.to_vec() {
                unpacked += 1;
            }
            tree.insert(k, json).unwrap();
        }
    }
    assert!(unpacked > 0, "the store held packed blocks to unpack");
    tree.insert("m/schema", "3").unwrap();
    tree.flush().unwrap();
}

#[tokio::test]
async fn journal_blocks_are_stored_packed_and_plain_blocks_of_a_schema_3_store_read_and_extend_the_same(
) {
    let dir = tempfile::tempdir().unwrap();
    let payment = |n: u32| serde_json::json!({"id": format!("pay_{n:08}"), "amount": format!("{n}.50"), "reference": format!("INV-{n:06}"), "currency": "EUR"});
    {
        let store = open(dir.path());
        let mut ws = store.begin();
        for n in 1..=150u32 {
            ws.put("payment", &format!("pay_{n:08}"), &payment(n));
            ws.event(
                "import",
                "payment.recorded",
                "payment",
                &format!("pay_{n:08}"),
                payment(n),
                n % 2 == 0,
            );
            ws.seen(
                &format!("pay:csv:{n}"),
                &serde_json::json!({"payment_id": format!("pay_{n:08}")}),
            );
        }
        store.apply(ws).unwrap();
        // Every block of a bulk write set is stored packed, and packed it is a fraction of its JSON.
        let tree = store.tree().unwrap();
        let mut blocks_seen = 0;
        for prefix in ["b/payment/", "v/", "S/"] {
            for item in tree.scan_prefix(prefix) {
                let (k, v) = item.unwrap();
                let json = blocks::unpack("test", &v).unwrap();
                assert!(json.len() >= blocks::PACK_FROM);
                assert_eq!(
                    v[0],
                    0x01,
                    "{} is stored packed",
                    String::from_utf8_lossy(&k)
                );
                assert!(
                    v.len() * 3 < json.len(),
                    "{}: {} bytes packed, {} as JSON",
                    String::from_utf8_lossy(&k),
                    v.len(),
                    json.len()
                );
                blocks_seen += 1;
            }
        }
        assert_eq!(blocks_seen, 3 + 3 + 1);
        as_schema_3(&store);
    }
    // Opened by this settled: raised to the current schema, every record read as before.
    let store = open(dir.path());
    assert_eq!(
        store.get_raw::<u64>("m/schema").unwrap(),
        Some(SCHEMA_VERSION)
    );
    assert_eq!(store.last_event_id(), 150);
    for n in [1u32, 64, 65, 150] {
        let p: serde_json::Value = store
            .get("payment", &format!("pay_{n:08}"))
            .unwrap()
            .unwrap();
        assert_eq!(p, payment(n));
        assert_eq!(
            seen_payment(&store, &format!("pay:csv:{n}")),
            Some(format!("pay_{n:08}"))
        );
    }
    let events = store.events_after(60, 1000).unwrap();
    assert_eq!(events.len(), 90);
    assert_eq!(events[0].data, payment(61));
    assert_eq!(store.verify_seen().unwrap(), Vec::<String>::new());
    // A change to a record of a plain block rewrites that block packed; new records go to a new packed block.
    let mut ws = store.begin();
    let mut changed = payment(70);
    changed["reversed"] = serde_json::json!(true);
    ws.put("payment", "pay_00000070", &changed);
    ws.put("payment", "pay_00000151", &payment(151));
    store.apply(ws).unwrap();
    let tree = store.tree().unwrap();
    let packed: Vec<bool> = tree
        .scan_prefix("b/payment/")
        .values()
        .map(|v| v.unwrap()[0] == 0x01)
        .collect();
    // Blocks from 1, 65 (rewritten), 129 (plain still) and 151 (new, below the packing size: plain).
    assert_eq!(packed, [false, true, false, false]);
    let all: Vec<serde_json::Value> = store.scan("payment").collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 151);
    assert_eq!(all[69], changed);
    assert_eq!(all[150], payment(151));
}

#[tokio::test]
async fn a_packed_block_that_does_not_unpack_is_an_error_naming_its_key_and_nothing_panics() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ws = store.begin();
    for n in 1..=64u32 {
        ws.put(
            "payment",
            &format!("pay_{n:08}"),
            &serde_json::json!({"id": format!("pay_{n:08}"), "reference": "INV-000001"}),
        );
    }
    store.apply(ws).unwrap();
    let tree = store.tree().unwrap();
    let key = "b/payment/00000000000000000001";
    let good = tree.get(key).unwrap().unwrap();
    assert_eq!(good[0], 0x01);
    let mut wrong_length = good.to_vec();
    wrong_length[1..5].copy_from_slice(&7u32.to_le_bytes());
    let mut huge = good.to_vec();
    huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut garbled = good.to_vec();
    for b in garbled.iter_mut().skip(5) {
        *b = 0xff;
    }
    for bad in [
        vec![0x01, 0x02],
        wrong_length,
        huge,
        garbled,
        good[..good.len() / 2].to_vec(),
    ] {
        tree.insert(key, bad).unwrap();
        let err = store
            .get::<serde_json::Value>("payment", "pay_00000007")
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Unpack { key: k, .. } if k == key),
            "{err}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
}
