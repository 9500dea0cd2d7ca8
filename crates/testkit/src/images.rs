//! Test images built from Debian's `busybox-static`: `busybox:latest` and `my-api:v2.1`/`v2.2`
//! (busybox's httpd answering with its version), written as OCI or `docker save` archives.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where Debian's `busybox-static` installs its one binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets the images link to busybox, enough for shells, probes and the article's story.
const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "env", "false", "grep", "head", "hostname", "httpd", "id", "kill",
    "ls", "mkdir", "nc", "nslookup", "ps", "rm", "seq", "sleep", "tail", "touch", "true", "wc",
    "wget", "yes", "dd", "date", "sync", "stat", "mount", "cut", "tr", "uname", "test", "[",
];

/// An image to build: busybox plus `files` in a second layer.
pub struct ImageSpec {
    pub name: String,
    pub files: Vec<(String, Vec<u8>)>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

impl ImageSpec {
    /// `busybox:latest`: a shell by default.
    pub fn busybox() -> ImageSpec {
        ImageSpec {
            name: "busybox:latest".into(),
            files: vec![],
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: String::new(),
        }
    }

    /// `my-api:<version>`: an HTTP server on port 8080 answering `/` with the version and the
    /// pod's hostname (`my-api v2.1 api-server-7d9-x4k2p`), so a client can tell replicas apart.
    pub fn my_api(version: &str) -> ImageSpec {
        ImageSpec {
            name: format!("my-api:{version}"),
            files: vec![
                (
                    // busybox httpd runs /cgi-bin/index.cgi for `/` when there is no index.html.
                    "www/cgi-bin/index.cgi".into(),
                    format!(
                        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"my-api {version} $(hostname)\"\n"
                    )
                    .into_bytes(),
                ),
                ("etc/my-api/version".into(), version.as_bytes().to_vec()),
            ],
            // A server stops on SIGTERM, as real ones do (httpd as PID 1 would ignore it and
            // use up the grace period).
            entrypoint: vec!["sh".into(), "-c".into()],
            cmd: vec!["trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait".into()],
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                format!("APP_VERSION={version}"),
            ],
            working_dir: "/www".into(),
        }
    }
}

/// How the archive is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout in a tar, gzip-compressed layers, named by
    /// `io.containerd.image.name` as `ctr export` writes it.
    Oci,
    /// `docker save`: `manifest.json`, plain tar layers.
    Docker,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_path(path).expect("test paths are short");
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    header
}

/// Builds a layer tar from `(path, contents)` files, with their directories.
pub fn layer_tar(files: &[(String, Vec<u8>)], symlinks: &[(String, String)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for path in files
        .iter()
        .map(|f| &f.0)
        .chain(symlinks.iter().map(|s| &s.0))
    {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(dir.to_string_lossy().into_owned());
            parent = dir.parent();
        }
    }
    for dir in &dirs {
        let h = header(&format!("{dir}/"), tar::EntryType::Directory, 0, 0o755);
        builder.append(&h, std::io::empty()).expect("in memory");
    }
    for (path, contents) in files {
        let mode = if path.starts_with("bin/") || path.contains("/cgi-bin/") {
            0o755
        } else {
            0o644
        };
        let h = header(path, tar::EntryType::Regular, contents.len() as u64, mode);
        builder.append(&h, contents.as_slice()).expect("in memory");
    }
    for (path, target) in symlinks {
        let mut h = header(path, tar::EntryType::Symlink, 0, 0o777);
        h.set_link_name(target).expect("short targets");
        h.set_cksum();
        builder.append(&h, std::io::empty()).expect("in memory");
    }
    builder.into_inner().expect("in memory")
}

fn base_layer() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!(
            "{BUSYBOX}: {e}: the test images need Debian's busybox-static (scripts/install-deps)"
        )
    });
    let files =
        vec![
        ("bin/busybox".to_string(), busybox),
        (
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
        ),
        ("etc/group".into(), b"root:x:0:\nnogroup:x:65534:\n".to_vec()),
        ("tmp/.keep".into(), Vec::new()),
    ];
    let links: Vec<(String, String)> = APPLETS
        .iter()
        .map(|a| (format!("bin/{a}"), "busybox".to_string()))
        .collect();
    layer_tar(&files, &links)
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("in memory");
    encoder.finish().expect("in memory")
}

/// An image's configuration and its layers (uncompressed tars), lowest first.
pub fn parts(spec: &ImageSpec) -> (Vec<u8>, Vec<Vec<u8>>) {
    let layers = vec![base_layer(), layer_tar(&spec.files, &[])];
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = serde_json::json!({
        "architecture": host_architecture(),
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "Env": spec.env,
            "WorkingDir": spec.working_dir,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    (serde_json::to_vec(&config).expect("json"), layers)
}

/// Writes `spec` as an archive in `dir` and returns its path.
pub fn build(spec: &ImageSpec, format: ArchiveFormat, dir: &Path) -> PathBuf {
    let (config, layers) = parts(spec);
    let file_name = format!(
        "{}-{}.tar",
        spec.name.replace([':', '/'], "_"),
        match format {
            ArchiveFormat::Oci => "oci",
            ArchiveFormat::Docker => "docker",
        }
    );
    let path = dir.join(file_name);
    let mut out = tar::Builder::new(std::fs::File::create(&path).expect("create archive"));
    let mut add = |name: &str, bytes: &[u8]| {
        let h = header(name, tar::EntryType::Regular, bytes.len() as u64, 0o644);
        out.append(&h, bytes).expect("write archive");
    };
    match format {
        ArchiveFormat::Docker => {
            let config_name = format!("{}.json", &sha256(&config)[7..]);
            add(&config_name, &config);
            let mut names = Vec::new();
            for (i, layer) in layers.iter().enumerate() {
                let name = format!("layer{i}/layer.tar");
                add(&name, layer);
                names.push(name);
            }
            let manifest = serde_json::json!([{
                "Config": config_name,
                "RepoTags": [spec.name],
                "Layers": names,
            }]);
            add(
                "manifest.json",
                &serde_json::to_vec(&manifest).expect("json"),
            );
        }
        ArchiveFormat::Oci => {
            let mut blob = |bytes: &[u8], media_type: &str| {
                let digest = sha256(bytes);
                add(&format!("blobs/sha256/{}", &digest[7..]), bytes);
                serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
            };
            let config_desc = blob(&config, "application/vnd.oci.image.config.v1+json");
            let layer_descs: Vec<_> = layers
                .iter()
                .map(|l| blob(&gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip"))
                .collect();
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc,
                "layers": layer_descs,
            });
            let mut manifest_desc = blob(
                &serde_json::to_vec(&manifest).expect("json"),
                "application/vnd.oci.image.manifest.v1+json",
            );
            manifest_desc["annotations"] = serde_json::json!({
                "io.containerd.image.name": format!("docker.io/library/{}", spec.name),
                "org.opencontainers.image.ref.name": spec.name.rsplit(':').next(),
            });
            let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
            add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
            add("index.json", &serde_json::to_vec(&index).expect("json"));
        }
    }
    out.finish().expect("write archive");
    path
}

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
