//! The runtime benchmark: container create-and-start latency through a release `skiff monitor`
//! with youki's libcontainer against the same with runc, one monitor's memory, and image import
//! and unpack throughput.

use std::time::{Duration, Instant};

use anyhow::Context;
use skiff_runtime::{
    ContainerConfig, LocalConfig, LocalRuntime, OciRuntime, Runtime, SandboxConfig,
};
use skiff_testkit::images::{build, ArchiveFormat, ImageSpec};
use skiff_testkit::memory_of;

use crate::report::{ms, percentile, Better, Report};

pub struct Sizes {
    containers: usize,
    big_layer_mib: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                containers: 10,
                big_layer_mib: 16,
            }
        } else {
            Sizes {
                containers: 100,
                big_layer_mib: 128,
            }
        }
    }
}

const RUNC: &str = "/usr/sbin/runc";

/// Start-up latencies and one monitor's (RSS, PSS) in bytes.
struct Starts {
    latencies: Vec<Duration>,
    rss: u64,
    pss: u64,
}

fn start_many(runtime: &LocalRuntime, count: usize) -> anyhow::Result<Starts> {
    runtime.run_sandbox(&SandboxConfig {
        uid: "bench".into(),
        namespace: "default".into(),
        name: "bench".into(),
        hostname: "bench".into(),
        hosts: "127.0.0.1\tlocalhost\n".into(),
        resolv_conf: String::new(),
    })?;
    let mut latencies = Vec::with_capacity(count);
    let mut monitor = None;
    for i in 0..count {
        let config = ContainerConfig {
            command: vec!["sleep".into(), "1000".into()],
            ..ContainerConfig::new(&format!("c{i}"), "busybox")
        };
        let begun = Instant::now();
        let status = runtime.start_container("bench", &config)?;
        latencies.push(begun.elapsed());
        if let Some(error) = status.error {
            anyhow::bail!("container c{i} did not start: {error}");
        }
        monitor = status.monitor_pid;
    }
    // Let the last monitor settle into its loop before reading its memory.
    std::thread::sleep(Duration::from_millis(300));
    let pid = monitor.context("no monitor")?;
    let (rss, pss) = memory_of(pid as u32)?;
    runtime.remove_sandbox("bench")?;
    Ok(Starts {
        latencies,
        rss,
        pss,
    })
}

pub fn run(sizes: Sizes) -> anyhow::Result<Report> {
    anyhow::ensure!(
        is_root(),
        "the runtime benchmark runs containers: run it as root"
    );
    anyhow::ensure!(
        std::path::Path::new(RUNC).exists(),
        "{RUNC} missing: install Debian's runc"
    );
    let skiff = crate::binary::release_binary()?;
    let dir = tempfile::tempdir()?;
    let mut report = Report::new(
        "runtime",
        "libcontainer",
        format!("runc ({})", runc_version()),
    );
    eprintln!("building the test images");
    let busybox = build(&ImageSpec::busybox(), ArchiveFormat::Oci, dir.path());

    let mut runs = Vec::new();
    for (name, oci) in [
        ("libcontainer", OciRuntime::Libcontainer),
        ("runc", OciRuntime::Runc(RUNC.into())),
    ] {
        let mut config = LocalConfig::new(
            dir.path().join(name),
            &format!("bench-{name}"),
            vec![skiff.clone().into(), "monitor".into()],
        );
        config.oci = oci;
        let runtime = LocalRuntime::open(config)?;
        runtime.images().import(&busybox)?;
        eprintln!("starting {} containers with {name}", sizes.containers);
        let starts = start_many(&runtime, sizes.containers);
        runtime.reset()?;
        runs.push(starts?);
    }
    let [mut ours, mut theirs] = <[Starts; 2]>::try_from(runs).ok().expect("two runs");
    for p in [50.0, 99.0] {
        report.add(
            format!("create+start p{p:.0}, {} containers", sizes.containers),
            "ms",
            Better::Lower,
            ms(percentile(&mut ours.latencies, p)),
            ms(percentile(&mut theirs.latencies, p)),
        );
    }
    let kib = |b: u64| b as f64 / 1024.0;
    report.add(
        "one monitor, resident (RSS)",
        "KiB",
        Better::Lower,
        kib(ours.rss),
        kib(theirs.rss),
    );
    report.add(
        "one monitor, proportional (PSS)",
        "KiB",
        Better::Lower,
        kib(ours.pss),
        kib(theirs.pss),
    );

    // Import of an image with one large layer: gzip-compressed, unpacked once.
    let mut files = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..sizes.big_layer_mib {
        // Half random (incompressible), half zeros: gzip has work to do both ways.
        let mut data = vec![0u8; 1 << 20];
        for chunk in data[..1 << 19].chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes());
        }
        files.push((format!("data/blob{i}"), data));
    }
    let big = ImageSpec {
        name: "big:latest".into(),
        files,
        ..ImageSpec::busybox()
    };
    let archive = build(&big, ArchiveFormat::Oci, dir.path());
    let archive_mib = std::fs::metadata(&archive)?.len() as f64 / (1 << 20) as f64;
    let store = skiff_runtime::ImageStore::open(dir.path().join("import"))?;
    let begun = Instant::now();
    store.import(&archive)?;
    let seconds = begun.elapsed().as_secs_f64();
    report.measured(
        format!("import {archive_mib:.0} MiB archive (gzip layers)"),
        "MiB/s",
        Better::Higher,
        archive_mib / seconds,
    );
    report.measured(
        format!("unpacked {} MiB of layer data", sizes.big_layer_mib),
        "MiB/s",
        Better::Higher,
        sizes.big_layer_mib as f64 / seconds,
    );
    Ok(report)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn runc_version() -> String {
    std::process::Command::new(RUNC)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim_start_matches("runc version ").to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
