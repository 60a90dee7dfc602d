//! The load generator end to end with a small N: `reflex-bench` runs the passthrough baseline
//! (three hops, the chain's topology) and the full router → enricher → actor chain on the real
//! stack, and its report must be
//! well-formed and its counts must add up. No timing assertions (figures go to BENCHMARKS.md).

use std::process::Command;

use reflex_testkit::{stack, unique, workspace_bin};
use serde_json::Value;

#[test]
fn reflex_bench_reports_every_event_of_baseline_and_full_pipeline() {
    let stack = stack();
    let events = 150u64;
    let json = std::env::temp_dir().join(format!("{}.json", unique("bench-report")));
    let output = Command::new(workspace_bin("reflex-bench"))
        .args(["--events", &events.to_string()])
        .args(["--rate", "max", "--pipeline", "full", "--partitions", "2"])
        .args(["--warmup", "10", "--keys", "20", "--stall-timeout-s", "60"])
        .arg("--json")
        .arg(&json)
        .env("REFLEX_TEST_BOOTSTRAP", &stack.bootstrap)
        .env("REFLEX_TEST_REGISTRY_URL", &stack.registry_url)
        .env("REFLEX_TEST_REDIS_URL", &stack.redis_url)
        .output()
        .expect("run reflex-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "reflex-bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    for row in [
        "throughput events/s",
        "latency p99 ms",
        "CPU µs/event",
        "peak RSS MiB",
        "ratio",
    ] {
        assert!(stdout.contains(row), "table lacks `{row}`:\n{stdout}");
    }

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["events"], events);
    for (name, workers) in [
        // The baseline has the pipeline's topology: one passthrough hop per stage.
        (
            "baseline",
            vec!["passthrough-1", "passthrough-2", "passthrough-3"],
        ),
        ("pipeline", vec!["router", "enricher", "actor"]),
    ] {
        let s = &report[name];
        let n = |k: &str| {
            s[k].as_f64()
                .unwrap_or_else(|| panic!("{name}.{k} missing: {s}"))
        };
        assert_eq!(n("events"), events as f64, "{name}");
        assert_eq!(
            n("received"),
            events as f64,
            "{name}: every event came out once"
        );
        assert_eq!(n("missing"), 0.0, "{name}");
        assert_eq!(n("received") + n("missing"), n("events"), "{name}");
        assert_eq!(n("produce_failures"), 0.0, "{name}");
        assert!(
            n("throughput_eps") > 0.0 && n("elapsed_s") > 0.0,
            "{name}: {s}"
        );
        let l = &s["latency"];
        let ms = |k: &str| l[k].as_f64().unwrap();
        assert!(
            0.0 < ms("p50_ms")
                && ms("p50_ms") <= ms("p95_ms")
                && ms("p95_ms") <= ms("p99_ms")
                && ms("p99_ms") <= ms("max_ms"),
            "{name}: percentiles out of order: {l}"
        );
        let names: Vec<&str> = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, workers, "{name}");
        let worker_cpu: f64 = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["cpu_s"].as_f64().unwrap())
            .sum();
        assert!(
            (worker_cpu - n("cpu_s")).abs() < 1e-9,
            "{name}: cpu_s is the workers' sum"
        );
        assert!(
            (n("cpu_us_per_event") - n("cpu_s") * 1e6 / n("received")).abs() < 1e-6,
            "{name}"
        );
        assert!(n("peak_rss_mb") > 0.0, "{name}: VmHWM read: {s}");
        // The RSS time series (the "flat while draining" check) is in the JSON, in time order,
        // and its summary lies within it.
        let series = s["rss_series"].as_array().expect("rss_series");
        assert!(!series.is_empty(), "{name}: no RSS samples");
        let times: Vec<f64> = series.iter().map(|p| p["t_s"].as_f64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{name}: {times:?}");
        let mib: Vec<f64> = series.iter().map(|p| p["mb"].as_f64().unwrap()).collect();
        let max = mib.iter().cloned().fold(f64::MIN, f64::max);
        assert!(
            (n("rss_max_mb") - max).abs() < 1e-6,
            "{name}: rss_max_mb is the series' max"
        );
    }
    let ratios = &report["ratios"];
    let b = report["baseline"]["throughput_eps"].as_f64().unwrap();
    let p = report["pipeline"]["throughput_eps"].as_f64().unwrap();
    assert!(
        (ratios["throughput"].as_f64().unwrap() - p / b).abs() < 1e-9,
        "{ratios}"
    );
}
