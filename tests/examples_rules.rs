//! Every scenario pack's README shows `reflexctl rules test` on its recorded events: run the
//! command the README shows and check the README's block is exactly its output.

use std::path::Path;
use std::process::Command;

use reflex_testkit::workspace_bin;

const PACKS: [&str; 4] = [
    "crash-loop",
    "incident-evidence",
    "idle-suspend",
    "host-quarantine",
];

/// The `$ reflexctl rules test ...` command of a README's console block and the lines after it.
fn readme_block(readme: &str) -> (String, String) {
    let start = readme
        .find("```console\n$ reflexctl rules test ")
        .expect("the README shows a `reflexctl rules test` console block");
    let body = &readme[start + "```console\n$ ".len()..];
    let end = body.find("```").expect("the console block is closed");
    let block = &body[..end];
    let (command, output) = block.split_once('\n').expect("a command line, then output");
    (command.to_string(), output.to_string())
}

#[test]
fn every_pack_readme_shows_the_real_rules_test_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for pack in PACKS {
        let readme = std::fs::read_to_string(root.join("examples").join(pack).join("README.md"))
            .unwrap_or_else(|e| panic!("examples/{pack}/README.md: {e}"));
        let (command, expected) = readme_block(&readme);
        assert_eq!(
            command,
            format!("reflexctl rules test examples/{pack} --events examples/{pack}/events.jsonl"),
            "examples/{pack}/README.md shows another command"
        );
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let out = Command::new(workspace_bin("reflexctl"))
            .args(&args)
            .current_dir(root)
            .env_remove("REFLEX_ACTOR__DRY_RUN")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout, expected,
            "examples/{pack}/README.md is out of date: paste the output of `{command}`"
        );
        // The output says something about every recorded event.
        let events = std::fs::read_to_string(root.join("examples").join(pack).join("events.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        for n in 1..=events {
            assert!(
                stdout.contains(&format!("\nevent {n} key=")),
                "{pack}: event {n} missing"
            );
        }
    }
}

#[test]
fn a_broken_pack_is_an_error_naming_the_file() {
    let out = Command::new(workspace_bin("reflexctl"))
        .args([
            "rules",
            "test",
            "examples/does-not-exist",
            "--events",
            "x.jsonl",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("examples/does-not-exist/pack.toml"),
        "{stderr}"
    );
}

#[test]
fn every_pack_generator_writes_events_its_rules_accept() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("REFLEX_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    for pack in PACKS {
        let generated = Command::new(&python)
            .arg(root.join("examples").join(pack).join("generate.py"))
            .args(["--count", "200", "--seed", "3"])
            .output()
            .unwrap_or_else(|e| panic!("{python}: {e}"));
        assert!(generated.status.success(), "{pack}/generate.py failed");
        let file = std::env::temp_dir().join(reflex_testkit::unique(&format!("{pack}-gen")));
        std::fs::write(&file, &generated.stdout).unwrap();
        // Every generated event must match the pack's schema and run through its workers' code.
        let out = Command::new(workspace_bin("reflexctl"))
            .args(["rules", "test", &format!("examples/{pack}"), "--events"])
            .arg(&file)
            .current_dir(root)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{pack}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("summary: 200 events: "), "{pack}: {stdout}");
        assert!(
            !stdout.contains("dead letter"),
            "{pack}: generated events should not be dead-lettered: {stdout}"
        );
        assert!(
            stdout.contains("would "),
            "{pack}: nothing would happen: {stdout}"
        );
    }
}
