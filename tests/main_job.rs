//! The README's main-job command, run as a user runs it: `scripts/demo --rate 200 --duration 5`
//! with nothing configured. It brings up its own stack through scripts/stack.sh (a fresh broker,
//! Redis and registry, so no other test's records on the pack's topics can skew its counts),
//! runs the crash-loop pack through router → enricher → actor → fake target, and checks its own
//! accounting (`reflex-bench main-job`). This test checks that the command exited 0, that every
//! check in its summary passed, and that the summary's numbers add up: nothing lost, no
//! duplicate effects, the restart cap held, and each worker's CPU and memory were sampled.

#[test]
fn main_job_runs_the_crash_loop_pack_and_its_checks_pass() {
    let logs = std::env::temp_dir().join(reflex_testkit::unique("main-job"));
    let mut command = reflex_testkit::unconfigured_script("scripts/demo");
    command
        .args(["--no-build", "--rate", "200", "--duration", "5"])
        // A free port for the fake target, so packs' tests may use 127.0.0.1:18080 meanwhile.
        .args(["--target-port", "0"])
        .env("REFLEX_MAIN_JOB_LOGS", &logs);
    let out = command.output().expect("run scripts/demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("main job PASSED"), "{stdout}");

    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(logs.join("summary.json")).expect("summary.json"),
    )
    .unwrap();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    assert_eq!(summary["passed"], true, "{summary:#}");
    let checks = summary["checks"].as_array().unwrap();
    assert!(checks.len() >= 8, "{summary:#}");
    assert!(checks.iter().all(|c| c["ok"] == true), "{summary:#}");

    // 200/s for 5 s, plus the records published twice.
    let published = n(&summary["published"]);
    assert!(published >= 1000, "{summary:#}");
    let ended = &summary["ended"];
    assert_eq!(
        n(&ended["outcomes"])
            + n(&ended["held"])
            + n(&ended["dead letters"])
            + n(&summary["dropped"]),
        published,
        "{summary:#}"
    );
    assert_eq!(n(&summary["pending"]), 0);
    assert!(
        n(&ended["dead letters"]) >= n(&summary["poison"]),
        "{summary:#}"
    );

    // The pack caps restarts at 3 per 10 minutes: the rest are held, none are lost.
    let outcomes = &summary["outcomes"];
    let restarted = n(&outcomes["restart-pod/SUCCEEDED"]);
    assert!((1..=3).contains(&restarted), "{summary:#}");
    assert!(n(&outcomes["restart-pod/HELD"]) > 0, "{summary:#}");
    assert!(n(&outcomes["page-owner/SUCCEEDED"]) > 0, "{summary:#}");

    // Each Idempotency-Key reached the target once: one effect per succeeded HTTP action.
    let target = &summary["target"];
    assert_eq!(n(&target["repeated_keys"]), 0, "{summary:#}");
    assert_eq!(
        n(&target["keys"]),
        restarted + n(&outcomes["page-owner/SUCCEEDED"]),
        "{summary:#}"
    );
    assert_eq!(n(&target["requests"]), n(&target["keys"]), "{summary:#}");

    // The four workers, sampled before they were stopped.
    let workers = summary["workers"].as_object().expect("workers");
    for name in ["router", "enricher", "actor", "reprocessor"] {
        let w = &workers[name];
        assert!(w["cpu_s"].as_f64().unwrap_or(0.0) > 0.0, "{name}: {w}");
        assert!(
            w["peak_rss_mb"].as_f64().unwrap_or(0.0) > 1.0,
            "{name}: {w}"
        );
    }
}
