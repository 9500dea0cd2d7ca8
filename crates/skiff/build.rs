//! Link settings of the `skiff` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Relative relocations packed (DT_RELR, glibc 2.36 and GNU ld 2.38 or later): the table the
    // dynamic loader reads at every start shrinks from 1.5 MB to 20 KB, and with it the part of
    // it that each process (agent, server, monitor zygote) keeps mapped, about 1 MiB of RSS.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
