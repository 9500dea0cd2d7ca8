//! The image store against real archives: OCI layouts and `docker save` files built from busybox.

use std::os::unix::fs::FileTypeExt;

use std::sync::Mutex;

use base64::Engine;
use skiff_runtime::image::{PullOptions, PullProgress, RegistryAuth};
use skiff_runtime::{Error, ImageStore};
use skiff_testkit::images::{build, layer_tar, ArchiveFormat, ImageSpec};
use skiff_testkit::Registry;

#[test]
fn archives_of_both_formats_import_and_share_their_base_layer() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let oci = build(&ImageSpec::my_api("v2.1"), ArchiveFormat::Oci, dir.path());
    let docker = build(
        &ImageSpec::my_api("v2.2"),
        ArchiveFormat::Docker,
        dir.path(),
    );

    let v21 = store.import(&oci).unwrap();
    let v22 = store.import(&docker).unwrap();
    assert_eq!(v21.len(), 1);
    assert_eq!(v21[0].names, ["docker.io/library/my-api:v2.1"]);
    assert_eq!(v22[0].names, ["docker.io/library/my-api:v2.2"]);
    assert_eq!(
        v21[0].layers[0].diff_id, v22[0].layers[0].diff_id,
        "same busybox layer"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("images/layers"))
            .unwrap()
            .count(),
        3
    );

    let image = store.get("my-api:v2.1").unwrap();
    let config = store.config(&image).unwrap();
    assert_eq!(config.config.entrypoint.as_deref().unwrap()[0], "sh");
    let layers = store.layer_dirs(&image).unwrap();
    assert!(layers[1].join("bin/busybox").is_file(), "lowest layer last");
    assert_eq!(
        std::fs::read_to_string(layers[0].join("etc/my-api/version")).unwrap(),
        "v2.1"
    );
    assert_eq!(
        std::fs::read_link(layers[1].join("bin/sh"))
            .unwrap()
            .to_str(),
        Some("busybox")
    );

    // Importing again changes nothing; a name moves to the image imported last.
    assert_eq!(store.import(&oci).unwrap()[0].id, image.id);
    assert_eq!(store.list().unwrap().len(), 2);

    // Collection above the disk mark removes unused images only (a mark of 0 % is always passed).
    let everything = skiff_runtime::image::GcPolicy {
        high_percent: 0,
        low_percent: 0,
    };
    let in_use = std::collections::HashSet::from([image.id.clone()]);
    let removed = store.collect_garbage(&in_use, everything).unwrap();
    assert_eq!(
        removed.iter().map(|i| i.names.clone()).collect::<Vec<_>>(),
        [v22[0].names.clone()]
    );
    assert_eq!(store.list().unwrap().len(), 1);
    store.import(&docker).unwrap();

    // Removing v2.2 keeps the shared layer; removing v2.1 too leaves nothing behind.
    store.remove("my-api:v2.2").unwrap();
    assert!(layers[1].join("bin/busybox").is_file());
    store.remove(&image.id[7..19]).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("images/layers"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert!(matches!(
        store.get("my-api:v2.1"),
        Err(Error::ImageNotFound(_))
    ));
}

#[test]
fn whiteouts_become_overlayfs_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("layer");
    std::fs::create_dir(&dest).unwrap();
    let tar = layer_tar(
        &[
            ("etc/.wh.motd".into(), vec![]),
            ("var/cache/.wh..wh..opq".into(), vec![]),
            ("var/cache/kept".into(), b"new".to_vec()),
        ],
        &[],
    );
    let diff_id = skiff_runtime::image::unpack_layer(tar.as_slice(), &dest).unwrap();
    assert!(diff_id.starts_with("sha256:"));
    let motd = std::fs::symlink_metadata(dest.join("etc/motd")).unwrap();
    assert!(
        motd.file_type().is_char_device(),
        "a 0/0 character device hides etc/motd"
    );
    assert!(!dest.join("etc/.wh.motd").exists());
    let opaque = xattr(&dest.join("var/cache"), "trusted.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    assert_eq!(std::fs::read(dest.join("var/cache/kept")).unwrap(), b"new");
}

#[test]
fn bad_archives_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let not_tar = dir.path().join("notes.txt");
    std::fs::write(&not_tar, "hello").unwrap();
    let err = store.import(&not_tar).unwrap_err().to_string();
    assert!(
        err.contains("notes.txt: not a readable tar archive"),
        "{err}"
    );
    let other_tar = dir.path().join("other.tar");
    std::fs::write(
        &other_tar,
        layer_tar(&[("README".into(), b"hi".to_vec())], &[]),
    )
    .unwrap();
    let err = store.import(&other_tar).unwrap_err().to_string();
    assert!(err.contains("other.tar: neither an OCI layout"), "{err}");
}

fn xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings and a buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[tokio::test]
async fn images_are_pulled_from_a_registry_with_dockerconfigjson_credentials() {
    let registry = Registry::start(Some(("alice", "s3cret"))).unwrap();
    let reference = registry.push(&ImageSpec::my_api("v2.2")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    let ignore = |_: PullProgress| {};

    let anonymous = PullOptions {
        auth: RegistryAuth::Anonymous,
        insecure_registries: vec![registry.host()],
    };
    let err = store
        .pull(&reference, &anonymous, &ignore)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Pull { .. }), "{err}");

    let secret = format!(
        r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
        registry.host(),
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
    );
    let options = PullOptions {
        auth: RegistryAuth::from_docker_config(secret.as_bytes(), &registry.host()).unwrap(),
        insecure_registries: vec![registry.host()],
    };
    // Without being named insecure, a registry is spoken to over HTTPS, which this one lacks.
    let https = PullOptions {
        insecure_registries: vec![],
        ..options.clone()
    };
    assert!(store.pull(&reference, &https, &ignore).await.is_err());

    let seen = Mutex::new(Vec::new());
    let image = store
        .pull(&reference, &options, &|p| seen.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(image.names, [reference.as_str()]);
    assert_eq!(image.layers.len(), 2);
    let layers = store.layer_dirs(&image).unwrap();
    assert_eq!(
        std::fs::read_to_string(layers[0].join("etc/my-api/version")).unwrap(),
        "v2.2"
    );
    let seen = seen.into_inner().unwrap();
    for layer in &image.layers {
        let last = seen
            .iter()
            .rfind(|p| p.blob == layer.digest)
            .expect("progress for every layer");
        assert_eq!(Some(last.received), last.total, "{last:?}");
    }
    // Pulled again: nothing is fetched, the same image comes back.
    let again = store
        .pull(&reference, &options, &|_| panic!("nothing to fetch"))
        .await
        .unwrap();
    assert_eq!(again.id, image.id);
}
