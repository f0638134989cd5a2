//! Runs each workload once at a tiny size with the in-memory provider, so the bench
//! binary keeps working. No timing is asserted: only that each run completes and
//! prints the JSON fields the compare script reads.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hub-bench"))
        .args(args)
        .output()
        .expect("run hub-bench");
    assert!(
        out.status.success(),
        "hub-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("one JSON line");
    serde_json::from_str(line).expect("valid JSON")
}

#[test]
fn fanout_hub_memory_and_raw_complete() {
    for (kind, client) in [("hub", "hub"), ("hub", "raw"), ("raw", "raw")] {
        let v = bench(&[
            "fanout",
            "--kind",
            kind,
            "--client",
            client,
            "--servers",
            "1",
            "--groups",
            "memory",
            "--clients",
            "5",
            "--broadcasts",
            "20",
            "--window",
            "4",
            "--payload",
            "16",
            "--deadline-s",
            "30",
        ]);
        assert_eq!(v["complete"], true, "{kind}: {v}");
        assert_eq!(v["client"], client, "{kind}: {v}");
        assert_eq!(v["broadcasts_completed"], 20, "{kind}: {v}");
        assert_eq!(v["deliveries"], 100, "{kind}: {v}");
        assert_eq!(v["deliveries_seen"], 100, "{kind}: {v}");
        assert!(v["p99_ms"].is_number(), "{kind}: {v}");
        assert!(
            v["server_cpu_s_per_million_deliveries"].is_number(),
            "{kind}: {v}"
        );
    }
}

#[test]
fn fanout_refuses_memory_groups_across_servers() {
    let out = Command::new(env!("CARGO_BIN_EXE_hub-bench"))
        .args([
            "fanout",
            "--servers",
            "2",
            "--groups",
            "memory",
            "--clients",
            "2",
            "--broadcasts",
            "2",
        ])
        .output()
        .expect("run hub-bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not cross servers"));
}

#[test]
fn calls_hub_and_raw_answer() {
    for (kind, client) in [("hub", "hub"), ("hub", "raw"), ("raw", "raw")] {
        let v = bench(&[
            "calls",
            "--kind",
            kind,
            "--client",
            client,
            "--clients",
            "2",
            "--in-flight",
            "2",
            "--secs",
            "0.3",
        ]);
        assert!(v["calls"].as_u64().is_some_and(|n| n > 0), "{kind}: {v}");
        assert_eq!(v["client"], client, "{kind}: {v}");
        assert!(v["p50_ms"].is_number(), "{kind}: {v}");
    }
}

#[test]
fn conns_hub_and_raw_connect() {
    for kind in ["hub", "raw"] {
        let v = bench(&[
            "conns",
            "--kind",
            kind,
            "--conns",
            "20",
            "--client-procs",
            "2",
            "--deadline-s",
            "60",
        ]);
        assert_eq!(v["connected"], 20, "{kind}: {v}");
        assert_eq!(v["failed"], 0, "{kind}: {v}");
        assert!(v["server_kib_per_conn"].is_number(), "{kind}: {v}");
    }
}

#[test]
fn rooms_over_redis_and_nats_deliver_every_push() {
    // Every option in four runs: backplane × shards, each with another schedule,
    // member placement (child processes or the bench process) and publisher.
    for (backplane, shards, schedule, procs, publisher) in [
        ("redis", "1", "spread", "2", "emitter"),
        ("redis", "2", "burst", "0", "client"),
        ("nats", "1", "spread", "1", "client"),
        ("nats", "2", "burst", "0", "emitter"),
    ] {
        rooms_deliver_every_push(backplane, shards, schedule, procs, publisher);
    }
}

fn rooms_deliver_every_push(
    backplane: &str,
    shards: &str,
    schedule: &str,
    procs: &str,
    publisher: &str,
) {
    let v = bench(&[
        "rooms",
        "--rooms",
        "3",
        "--members",
        "2",
        "--servers",
        "2",
        "--hz",
        "10",
        "--secs",
        "1",
        "--payload",
        "16",
        "--backplane",
        backplane,
        "--shards",
        shards,
        "--schedule",
        schedule,
        "--client-procs",
        procs,
        "--publisher",
        publisher,
    ]);
    assert_eq!(v["pushes"], 30, "{v}");
    assert_eq!(v["pushes_complete"], 30, "{v}");
    assert_eq!(v["broadcasts_completed"], 30, "{v}");
    assert_eq!(v["complete"], true, "{v}");
    assert_eq!(v["deliveries"], 60, "{v}");
    assert_eq!(v["publish_errors"], 0, "{v}");
    assert_eq!(v["schedule"], schedule, "{v}");
    assert_eq!(v["publisher"], publisher, "{v}");
    assert_eq!(v["client_procs"].to_string(), procs, "{v}");
    let by_server: u64 = v["deliveries_by_server"]
        .as_array()
        .expect("deliveries_by_server")
        .iter()
        .filter_map(|x| x.as_u64())
        .sum();
    assert_eq!(by_server, 60, "{v}");
    for key in [
        "p99_ms",
        "delivery_p99_ms",
        "backplane_cpu_s",
        "client_cpu_s",
    ] {
        assert!(v[key].is_number(), "{key}: {v}");
    }
    assert!(v["kept_up"].is_boolean(), "{v}");
    assert_eq!(
        v["redis_cpu_s_per_million_deliveries"].is_number(),
        backplane == "redis",
        "{v}"
    );
    assert!(
        v["backplane_publish_ceiling_per_sec"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{v}"
    );
}

#[test]
fn resume_after_a_server_is_killed_restores_every_session() {
    for dial in ["failover", "balance"] {
        let v = bench(&[
            "resume",
            "--clients",
            "20",
            "--servers",
            "2",
            "--groups",
            "3",
            "--grace-s",
            "30",
            "--deadline-s",
            "20",
            "--dial",
            dial,
        ]);
        assert_eq!(v["restored"], 20, "{dial}: {v}");
        assert_eq!(v["failed"], 0, "{dial}: {v}");
        assert_eq!(v["same_connection_id"], 20, "{dial}: {v}");
        assert_eq!(v["push_after_resume_delivered"], 20, "{dial}: {v}");
        assert!(v["p99_ms"].is_number(), "{dial}: {v}");
        assert!(v["backplane_cpu_s"].is_number(), "{dial}: {v}");
    }
}

#[test]
fn with_history_every_restored_session_gets_the_push_it_missed_once() {
    let v = bench(&[
        "resume",
        "--clients",
        "20",
        "--servers",
        "2",
        "--groups",
        "3",
        "--deadline-s",
        "20",
        "--history",
    ]);
    assert_eq!(v["restored"], 20, "{v}");
    assert_eq!(v["missed_push"]["got_once"], 20, "{v}");
    assert_eq!(v["missed_push"]["got_twice_or_more"], 0, "{v}");
    assert_eq!(v["push_after_resume_delivered"], 20, "{v}");
}
