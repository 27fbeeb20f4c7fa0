use super::*;

fn open(dir: &Path) -> Store {
    Store::open(dir, &StoreOptions::default()).expect("store opens")
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
        store.tree().insert(b"m/schema", b"99").unwrap();
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
