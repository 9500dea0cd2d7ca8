//! Link settings of the `skiff` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    // Relative relocations packed (DT_RELR, glibc 2.36 and GNU ld 2.38 or later): the table the
    // dynamic loader reads at every start shrinks from 1.5 MB to 20 KB, and with it the part of
    // it that each process (agent, server, monitor zygote) keeps mapped, about 1 MiB of RSS.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // Release builds put the functions an idle node agent runs at the front of `.text`
    // (`hot-text.ld`, written by `skiff-bench hot-text`): packed, they are a few MiB of pages
    // instead of being spread over the whole 33 MB of code, of which every page an agent touches
    // stays resident with its neighbours. Names the script lists that a build no longer has are
    // simply not matched.
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let script = std::path::Path::new(&dir).join("hot-text.ld");
        println!("cargo:rerun-if-changed={}", script.display());
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}
