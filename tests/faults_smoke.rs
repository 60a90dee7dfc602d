//! The fault-injection suite's smoke run, as CI runs it: `scripts/faults --smoke` with nothing
//! configured. It starts a fresh stack per scenario (scripts/stack.sh, Redis with its
//! append-only file on), runs router → enricher → actor plus the reprocessor under a small load,
//! SIGKILLs random replicas (two per stage, dynamic group members) and restarts them, then makes the
//! fake target answer 503 for a while. Its checker accounts for every published event (effect or
//! outcome, rule drop, dead letter or held record) and for every effect at the target.
//!
//! This test checks that the command exited 0, and from its faults.json that each scenario
//! really injected its fault and ended with zero lost events and zero duplicate effects.

#[test]
fn fault_suite_smoke_loses_nothing_and_applies_nothing_twice() {
    let logs = std::env::temp_dir().join(reflex_testkit::unique("faults-smoke"));
    let mut command = reflex_testkit::unconfigured_script("scripts/faults");
    command
        .args(["--no-build", "--smoke"])
        .env("REFLEX_FAULTS_LOGS", &logs);
    let out = command.output().expect("run scripts/faults");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/faults --smoke failed ({}):\n{stdout}\n{stderr}\nlogs: {}",
        out.status,
        logs.display()
    );
    assert!(stdout.contains("fault suite PASSED"), "{stdout}");

    let rows: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(logs.join("faults.json")).expect("faults.json"),
    )
    .unwrap();
    let rows = rows.as_array().expect("a list of scenario rows");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["scenario"].as_str()).collect();
    assert_eq!(names, ["sigkill", "target-fail"], "{rows:#?}");
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(u64::MAX);
    for row in rows {
        assert_eq!(row["passed"], true, "{row:#}");
        assert!(n(&row["events_in"]) >= 100, "{row:#}");
        assert_eq!(n(&row["lost"]), 0, "{row:#}");
        assert_eq!(n(&row["duplicate_effects"]), 0, "{row:#}");
        assert!(n(&row["effects"]) > 0, "{row:#}");
        assert!(
            row["failed_checks"]
                .as_array()
                .is_some_and(|c| c.is_empty()),
            "{row:#}"
        );
    }
    // The faults happened: replicas were killed, and the target's failures were retried
    // (through the dead-letter topic and the reprocessor, or by the actor itself).
    let note = rows[0]["note"].as_str().unwrap_or_default();
    assert!(note.starts_with("SIGKILLed "), "{:#}", rows[0]);
    let target = &rows[1];
    let dead_letters: u64 = target["dead_classes"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert!(
        dead_letters + n(&target["retried_keys"]) > 0,
        "the target failed for 4 s but nothing was retried: {target:#}"
    );
}
