//! `build-images DIR`: writes the project's test images (busybox, my-api:v2.1, my-api:v2.2), built
//! from Debian's busybox-static, as OCI archives that `skiff image import` takes.

use skiff_testkit::images::{build, ArchiveFormat, ImageSpec};

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: build-images DIR");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("build-images: {}: {e}", dir.display());
        std::process::exit(1);
    }
    for spec in [
        ImageSpec::busybox(),
        ImageSpec::my_api("v2.1"),
        ImageSpec::my_api("v2.2"),
    ] {
        let path = build(&spec, ArchiveFormat::Oci, &dir);
        println!("{}\t{}", spec.name, path.display());
    }
}
