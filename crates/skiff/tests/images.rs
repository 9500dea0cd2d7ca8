//! `skiff image import|pull|ls` as a user runs them: progress on a terminal (a pseudo-terminal
//! made by `script`), none in pipes, pulls from a real registry (Debian's docker-registry on
//! loopback).

mod common;

use std::process::Command;

use common::cluster::SKIFF;
use skiff_testkit::images::{build, ArchiveFormat, ImageSpec};

/// Runs skiff with `args` on a pseudo-terminal: everything it wrote, stdout and stderr.
fn on_terminal(args: &[&str]) -> String {
    let line = std::iter::once(SKIFF)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("`script` (bsdutils) makes the terminal of this test");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{line}: {text}");
    text
}

fn plain(args: &[&str]) -> (String, String) {
    let out = Command::new(SKIFF).args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "skiff {args:?}: {stdout}{stderr}");
    (stdout, stderr)
}

#[test]
fn import_and_pull_show_progress_on_a_terminal_only() {
    let work = tempfile::tempdir().unwrap();
    let archive = build(&ImageSpec::my_api("v2.1"), ArchiveFormat::Oci, work.path());
    let data = work.path().join("node");
    let data_arg = data.to_str().unwrap();
    let file = archive.to_str().unwrap();

    let shown = on_terminal(&["image", "import", "--data-dir", data_arg, file]);
    assert!(
        shown.contains("importing my-api_v2.1-oci.tar: ") && shown.contains("(100%"),
        "{shown:?}"
    );
    assert!(
        shown.contains("imported docker.io/library/my-api:v2.1 ("),
        "{shown:?}"
    );
    // In a pipe only the result.
    let (stdout, stderr) = plain(&["image", "import", "--data-dir", data_arg, file]);
    assert!(
        stdout.starts_with("imported docker.io/library/my-api:v2.1 ("),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(!stderr.contains("importing"), "{stderr}");

    let registry = skiff_testkit::Registry::start(None).unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reference = runtime
        .block_on(registry.push(&ImageSpec::my_api("v2.2")))
        .unwrap_or_else(|e| panic!("{e}"));
    let host = registry.host();
    let args = [
        "image",
        "pull",
        &reference,
        "--data-dir",
        data_arg,
        "--insecure-registry",
        &host,
    ];
    let shown = on_terminal(&args);
    assert!(
        shown.contains(&format!("pulling {reference}: ")),
        "{shown:?}"
    );
    assert!(
        shown.contains(&format!("pulled {reference} (")),
        "{shown:?}"
    );
    let (listed, _) = plain(&["image", "ls", "--data-dir", data_arg]);
    assert!(listed.contains(&reference), "{listed}");

    // A registry that is not there: the error names the image.
    let out = Command::new(SKIFF)
        .args([
            "image",
            "pull",
            "127.0.0.1:9/none:v1",
            "--data-dir",
            data_arg,
        ])
        .args(["--insecure-registry", "127.0.0.1:9"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pulling 127.0.0.1:9/none:v1"), "{stderr}");
}
