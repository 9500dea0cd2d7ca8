//! The README's walkthrough, run as written (as root, real containers, the machine's
//! kubectl): every `$ ` command of its console blocks in one shell, each output compared with
//! the one printed under it. Names with generated suffixes, ages, addresses, sizes, IDs and
//! durations may differ; a `...` line stands for any lines. The build step before the
//! walkthrough is this test's own: the skiff binary under test on the PATH, the images
//! built into `~/skiff-images`, with `HOME` a fresh directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::SKIFF;

/// One command of the walkthrough and what the README prints under it.
#[derive(Debug)]
struct Step {
    command: String,
    output: Vec<String>,
}

/// The `$ ` commands of the console blocks between the walkthrough markers.
fn steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find("<!-- walkthrough -->")
        .expect("the README marks its walkthrough with <!-- walkthrough -->");
    let end = readme
        .find("<!-- /walkthrough -->")
        .expect("and ends it with <!-- /walkthrough -->");
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut continued = false;
    for line in readme[start..end].lines() {
        if line.starts_with("```") {
            in_block = line.trim() == "```console";
            continued = false;
            continue;
        }
        if !in_block {
            continue;
        }
        if continued {
            let step = steps.last_mut().expect("a command to continue");
            step.command.push('\n');
            step.command.push_str(line);
            continued = line.ends_with('\\');
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.to_string(),
                output: Vec::new(),
            });
            continued = command.ends_with('\\');
        } else if let Some(step) = steps.last_mut() {
            step.output.push(line.to_string());
        }
    }
    steps
}

/// A line with what may differ between runs replaced by placeholders, spaces collapsed.
fn normalize(line: &str) -> String {
    use std::sync::OnceLock;
    static RULES: OnceLock<Vec<(regex::Regex, &str)>> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [
            // Generated names: ReplicaSet hashes and pod suffixes.
            (r"-[a-z0-9]{8,10}-[a-z0-9]{5}\b", "-<rs>-<pod>"),
            (r"\b(\d+\.){3}\d+\b", "<ip>"),
            (r"\b[0-9a-f]{12}\b", "<id>"),
            (r"\b\d+(\.\d+)?(B|KiB|MiB|GiB)\b", "<size>"),
            (
                r"\b\d+(\.\d+)?(µs|ms|s|m|h|d)(\d+(\.\d+)?(ms|s|m|h))?\b",
                "<t>",
            ),
        ]
        .into_iter()
        .map(|(pattern, to)| (regex::Regex::new(pattern).expect("a pattern"), to))
        .collect()
    });
    let mut line = line.to_string();
    for (pattern, to) in rules {
        line = pattern.replace_all(&line, *to).into_owned();
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `actual` reads as `expected`, `...` lines in `expected` matching any lines, blank
/// lines at the end aside.
fn matches(expected: &[String], actual: &[String]) -> bool {
    let trim = |lines: &[String]| {
        let keep = lines
            .iter()
            .rposition(|l| !l.trim().is_empty())
            .map_or(0, |i| i + 1);
        lines[..keep].to_vec()
    };
    lines_match(&trim(expected), &trim(actual))
}

fn lines_match(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first.trim() == "..." => {
            (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| normalize(first) == normalize(a) && lines_match(rest, more)),
    }
}

/// Removes what the walkthrough started, even when it failed half-way.
struct Cleanup {
    home: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        skiff_testkit::reset_node(Path::new(SKIFF), "demo", &self.home.join("skiff"), None);
    }
}

#[test]
fn the_readme_walkthrough_works_as_printed() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the walkthrough runs `skiff up`: it needs root"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let steps = steps(&readme);
    assert!(steps.len() >= 10, "too few walkthrough steps: {steps:?}");
    let home = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup {
        home: home.path().to_path_buf(),
    };
    // The build step: this binary on the PATH, the images where `scripts/build-images` puts them.
    let images = home.path().join("skiff-images");
    std::fs::create_dir_all(&images).unwrap();
    for spec in [
        skiff_testkit::images::ImageSpec::busybox(),
        skiff_testkit::images::ImageSpec::my_api("v2.1"),
        skiff_testkit::images::ImageSpec::my_api("v2.2"),
    ] {
        skiff_testkit::images::build(&spec, skiff_testkit::images::ArchiveFormat::Oci, &images);
    }
    let bin = Path::new(SKIFF).parent().unwrap();
    // One shell for all steps (variables and background jobs carry over), each step's output
    // between markers.
    let mut script = String::from("exec 2>&1\n");
    for (i, step) in steps.iter().enumerate() {
        script.push_str(&format!(
            "printf '\\n@@begin {i}\\n'\n{}\nprintf '\\n@@end {i} %s\\n' \"$?\"\n",
            step.command
        ));
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .env("HOME", home.path())
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env_remove("KUBECONFIG")
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if std::env::var_os("SKIFF_README_SHOW").is_some() {
        // What the README should show, to update it: `SKIFF_README_SHOW=1 cargo test --test
        // readme -- --nocapture`.
        eprintln!("{text}");
    }
    for (i, step) in steps.iter().enumerate() {
        let begin = format!("\n@@begin {i}\n");
        let from = text
            .find(&begin)
            .unwrap_or_else(|| panic!("step {i} `{}` never ran:\n{text}", step.command))
            + begin.len();
        let end_at = text[from..]
            .find(&format!("\n@@end {i} "))
            .unwrap_or_else(|| panic!("step {i} `{}` did not end:\n{text}", step.command))
            + from;
        let status = text[end_at..].lines().nth(1).unwrap_or_default();
        let actual: Vec<String> = text[from..end_at].lines().map(str::to_string).collect();
        assert!(
            status.ends_with(" 0"),
            "README step `{}` failed ({status}):\n{}",
            step.command,
            actual.join("\n")
        );
        assert!(
            matches(&step.output, &actual),
            "README step `{}` printed\n{}\nbut the README shows\n{}",
            step.command,
            actual.join("\n"),
            step.output.join("\n")
        );
    }
}

#[test]
fn outputs_match_with_placeholders_and_ellipses() {
    let lines = |text: &str| text.lines().map(str::to_string).collect::<Vec<_>>();
    let expected = lines("NAME READY STATUS RESTARTS AGE\napi-server-7d9c8b6f5d-x2x4z   1/1   Running   0   12s\n...\ndone");
    let actual = lines("NAME READY STATUS RESTARTS AGE\napi-server-5f6c9d8b7c-k8s9q 1/1 Running 0 3m2s\nmore\nlines\ndone");
    assert!(matches(&expected, &actual));
    assert!(!matches(
        &expected,
        &lines(
            "NAME READY STATUS RESTARTS AGE\napi-server-5f6c9d8b7c-k8s9q 0/1 Running 0 3s\ndone"
        )
    ));
    assert!(!matches(&lines("a"), &lines("a\nb")));
    assert_eq!(
        normalize("imported docker.io/library/busybox:latest (b8089bb5da43, 1.1MiB) in 18.4ms"),
        "imported docker.io/library/busybox:latest (<id>, <size>) in <t>"
    );
    assert_eq!(normalize("1 (2s ago)  10.42.0.5"), "1 (<t> ago) <ip>");
}
