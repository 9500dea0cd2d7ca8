//! Profile-guided code layout for the node agent: the functions a joined, idle agent runs (its
//! start-up, join, heartbeats and watches, recorded by callgrind in the agent and the processes it
//! forks), written as the GNU ld script `crates/skiff/hot-text.ld` that release builds link with.
//! The script gathers those functions' sections into one output section before `.text`.
//!
//! Why: every code page a process touches stays resident, together with the neighbours the
//! kernel maps around it (fault-around, and whole large folios of the page cache). Spread over
//! 33 MB of code, the few MiB an idle agent runs kept 17 MiB of text resident; packed, about 5.
//! Symbol names carry a hash that is stable across builds of the same dependencies; a function
//! whose name has one instance is matched by name alone, so a changed hash does not lose it.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::nodes::Cluster;

/// A function symbol of the binary: address, size and name as `nm` prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    pub addr: u64,
    pub size: u64,
    pub name: String,
}

/// The function symbols (`t`, `T`, `w`, `W` with a size) of `nm -S --defined-only` output.
pub fn parse_nm(text: &str) -> Vec<Symbol> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (addr, size, kind, name) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            if !matches!(kind, "t" | "T" | "w" | "W") {
                return None;
            }
            let size = u64::from_str_radix(size, 16).ok().filter(|&s| s > 0)?;
            Some(Symbol {
                addr: u64::from_str_radix(addr, 16).ok()?,
                size,
                name: name.to_string(),
            })
        })
        .collect()
}

/// The function names of a callgrind output file (`fn=` lines, names uncompressed).
pub fn executed(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("fn="))
        .map(|name| match name.strip_prefix('(') {
            // A compressed name: "(id) name" defines it, "(id)" refers back to it.
            Some(rest) => rest.split_once(") ").map_or("", |(_, name)| name),
            None => name,
        })
        .filter(|name| !name.is_empty())
}

/// `name` without the `.llvm.<digits>` suffix ThinLTO gives the local functions it promotes
/// (it changes with every build).
fn without_llvm_suffix(name: &str) -> &str {
    match name.rsplit_once(".llvm.") {
        Some((bare, digits))
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            bare
        }
        _ => name,
    }
}

/// For a legacy-mangled name ending in its hash (`...17h<16 hex>E`): the part up to and
/// including `17h`.
fn before_hash(name: &str) -> Option<&str> {
    let cut = name.len().checked_sub(17)?;
    let (head, hash) = name.split_at(cut);
    let hex = hash.strip_suffix('E')?;
    (head.ends_with("17h") && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(head)
}

/// The linker script placing the sections of the `executed` functions among `symbols` first,
/// in address order; also the number of section patterns and the bytes of code they name.
pub fn script(executed: &HashSet<&str>, symbols: &[Symbol]) -> (String, usize, u64) {
    let mut symbols: Vec<&Symbol> = symbols.iter().collect();
    symbols.sort_by_key(|s| s.addr);
    let mut instances = std::collections::HashMap::<&str, usize>::new();
    for symbol in &symbols {
        if let Some(head) = before_hash(without_llvm_suffix(&symbol.name)) {
            *instances.entry(head).or_default() += 1;
        }
    }
    let mut patterns = Vec::new();
    let mut seen = HashSet::new();
    let mut bytes = 0;
    for symbol in symbols {
        if !executed.contains(symbol.name.as_str()) {
            continue;
        }
        let bare = without_llvm_suffix(&symbol.name);
        let pattern = match before_hash(bare) {
            // One instance of this path: matched whatever its hash becomes.
            Some(head) if instances[head] == 1 => format!("{head}*"),
            // Instances of a generic function, told apart by their hashes only.
            Some(_) => format!("{bare}*"),
            None if bare.len() < symbol.name.len() => format!("{bare}*"),
            None => bare.to_string(),
        };
        if seen.insert(pattern.clone()) {
            bytes += symbol.size;
            patterns.push(pattern);
        }
    }
    let mut text = String::from(
        "/* Written by `cargo run --release -p skiff-bench -- hot-text`: the functions an idle \
         node agent runs,\n   packed at the front of the code (see bench/src/hottext.rs). */\n\
         SECTIONS\n{\n  .text.hot : {\n",
    );
    for pattern in &patterns {
        // Functions LLVM thinks cold (#[cold], error paths) are in `.text.unlikely.<name>`.
        text.push_str(&format!(
            "    *(.text.{pattern} .text.unlikely.{pattern})\n"
        ));
    }
    // Assembly (ring's cryptography) is in plain `.text` sections of its own objects.
    text.push_str("    *-elf.o(.text)\n  }\n}\nINSERT BEFORE .text;\n");
    (text, patterns.len(), bytes)
}

fn ensure_tool(tool: &str, package: &str) -> anyhow::Result<()> {
    match Command::new(tool).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => bail!("the hot-text profile needs `{tool}` (Debian package {package}): {e}"),
    }
}

/// Profiles an agent joined to a release server, idle for `seconds` after it is ready, and
/// writes the script to `out`.
pub async fn run(out: &Path, seconds: u64) -> anyhow::Result<()> {
    ensure_tool("valgrind", "valgrind")?;
    ensure_tool("nm", "binutils")?;
    let profiles = tempfile::tempdir()?;
    let out_file = format!(
        "--callgrind-out-file={}/callgrind.%p",
        profiles.path().display()
    );
    let wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        out_file.as_str(),
        "--compress-strings=no",
        "--compress-pos=no",
        "--demangle=no",
    ];
    let mut cluster = Cluster::start("hot-text")?;
    let node = cluster.join_under("hot", &wrapper)?;
    eprintln!("agent ready under callgrind; idle for {seconds} s");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Every callgrind run of this machine writes what it has so far (the agent's is killed,
    // not stopped, and would write nothing more).
    let dumped = Command::new("callgrind_control").arg("--dump").status();
    anyhow::ensure!(
        dumped.is_ok_and(|s| s.success()),
        "callgrind_control --dump failed"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let skiff = cluster.skiff.clone();
    drop(node);
    drop(cluster);

    let mut texts = Vec::new();
    for entry in std::fs::read_dir(profiles.path())? {
        let path = entry?.path();
        texts.push(std::fs::read_to_string(&path).with_context(|| path.display().to_string())?);
    }
    let names: HashSet<&str> = texts.iter().flat_map(|t| executed(t)).collect();
    anyhow::ensure!(!names.is_empty(), "callgrind recorded no function");
    let nm = Command::new("nm")
        .args(["-S", "--defined-only"])
        .arg(&skiff)
        .output()
        .context("running nm")?;
    anyhow::ensure!(nm.status.success(), "nm {} failed", skiff.display());
    let symbols = parse_nm(&String::from_utf8_lossy(&nm.stdout));
    let (text, patterns, bytes) = script(&names, &symbols);
    std::fs::write(out, text).with_context(|| out.display().to_string())?;
    println!(
        "{} executed functions: {patterns} section patterns, {:.2} MiB of code, written to {}",
        names.len(),
        bytes as f64 / (1 << 20) as f64,
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbol(addr: u64, size: u64, name: &str) -> Symbol {
        Symbol {
            addr,
            size,
            name: name.into(),
        }
    }

    #[test]
    fn nm_output_gives_sized_functions_only() {
        let text = "0000000000c7f720 0000000000000120 t ring_aesni\n\
                    0000000000b81c30 0000000000000030 D some_data\n\
                    00000000024fdf46 t .rust_psm_end\n\
                    0000000000b81c40 0000000000000000 T empty\n\
                    0000000000b81d00 0000000000000010 W weak_fn\n";
        assert_eq!(
            parse_nm(text),
            vec![
                symbol(0xc7f720, 0x120, "ring_aesni"),
                symbol(0xb81d00, 0x10, "weak_fn")
            ]
        );
    }

    #[test]
    fn callgrind_names_are_read_compressed_or_not() {
        let text = "fn=plain_name\ncfn=called\nfn=(12) compressed_name\nfn=(12)\ncalls=1 0\n";
        assert_eq!(
            executed(text).collect::<Vec<_>>(),
            ["plain_name", "compressed_name"]
        );
    }

    #[test]
    fn hashes_and_llvm_suffixes_are_recognised() {
        assert_eq!(
            without_llvm_suffix("_ZN3foo3bar17h0123456789abcdefE.llvm.12345"),
            "_ZN3foo3bar17h0123456789abcdefE"
        );
        assert_eq!(without_llvm_suffix("name.llvm.x1"), "name.llvm.x1");
        assert_eq!(
            before_hash("_ZN3foo3bar17h0123456789abcdefE"),
            Some("_ZN3foo3bar17h")
        );
        assert_eq!(before_hash("_ZN3foo3bar17h0123456789abcdeXE"), None);
        assert_eq!(before_hash("mi_free"), None);
    }

    #[test]
    fn the_script_names_executed_functions_by_their_stablest_pattern() {
        let symbols = [
            symbol(0x300, 16, "_ZN3one4only17h1111111111111111E.llvm.99"),
            symbol(0x100, 32, "_ZN4core3ptr4drop17haaaaaaaaaaaaaaaaE"),
            symbol(0x200, 32, "_ZN4core3ptr4drop17hbbbbbbbbbbbbbbbbE"),
            symbol(0x400, 8, "mi_free"),
            symbol(0x500, 8, "never_run"),
        ];
        let executed: HashSet<&str> = [
            "_ZN3one4only17h1111111111111111E.llvm.99",
            "_ZN4core3ptr4drop17hbbbbbbbbbbbbbbbbE",
            "mi_free",
            "not_in_the_binary",
        ]
        .into_iter()
        .collect();
        let (text, patterns, bytes) = script(&executed, &symbols);
        assert_eq!((patterns, bytes), (3, 32 + 16 + 8));
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with('*'))
            .collect();
        assert_eq!(
            lines,
            [
                // A generic instance keeps its hash; the unique path drops it; address order.
                "    *(.text._ZN4core3ptr4drop17hbbbbbbbbbbbbbbbbE* .text.unlikely._ZN4core3ptr4drop17hbbbbbbbbbbbbbbbbE*)",
                "    *(.text._ZN3one4only17h* .text.unlikely._ZN3one4only17h*)",
                "    *(.text.mi_free .text.unlikely.mi_free)",
                "    *-elf.o(.text)",
            ]
        );
        assert!(text.trim_end().ends_with("INSERT BEFORE .text;"));
    }
}
