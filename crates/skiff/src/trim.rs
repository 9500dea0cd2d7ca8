//! Gives back the memory a long-lived process (the node agent) touched only while starting: the
//! heap its start freed, and the pages of code and read-only data it ran or read once.
//!
//! Joining a cluster (TLS set-up, certificates, the CSR, registering the Node, the first lists)
//! runs code that an idle agent never runs again, and every page of it stays mapped: with the
//! kernel's fault-around, each page touched brings its neighbours along. Unmapping the binary's
//! and libraries' never-written private file mappings costs nothing to correctness (they are
//! read again from the page cache on the next touch) and leaves mapped only what the agent
//! keeps running.

use std::fs;

/// A mapping that may be dropped: file-backed, private, never writable and never written (no
/// anonymous copy-on-write page), so that its pages are the file's and can be read again.
#[derive(Debug, PartialEq)]
struct Droppable {
    start: usize,
    end: usize,
}

/// The mappings of a `/proc/PID/smaps` text that `Droppable` describes.
fn droppable(smaps: &str) -> Vec<Droppable> {
    let mut found = Vec::new();
    let mut current: Option<(Droppable, bool)> = None;
    let mut finish = |current: Option<(Droppable, bool)>| {
        if let Some((mapping, true)) = current {
            found.push(mapping);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-').and_then(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        }) {
            finish(current.take());
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let eligible = perms.len() == 4
                && perms.as_bytes()[1] == b'-'
                && perms.as_bytes()[3] == b'p'
                && path.starts_with('/');
            current = Some((Droppable { start, end }, eligible));
        } else if first == "Anonymous:" && fields.next() != Some("0") {
            if let Some((_, eligible)) = current.as_mut() {
                *eligible = false;
            }
        }
    }
    finish(current);
    found
}

/// Returns the freed heap to the kernel and unmaps the process's read-only file pages; those
/// still in use come back on their next touch. Errors are logged, never fatal.
pub fn release_startup_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let smaps = match fs::read_to_string("/proc/self/smaps") {
        Ok(smaps) => smaps,
        Err(e) => {
            tracing::debug!(error = %e, "reading /proc/self/smaps");
            return;
        }
    };
    for mapping in droppable(&smaps) {
        // SAFETY: the range is a whole mapping of this process that was never writable nor
        // written (`droppable`): its pages are the file's, and MADV_DONTNEED only unmaps them,
        // to be read again from the page cache when next touched.
        let done = unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.end - mapping.start,
                libc::MADV_DONTNEED,
            )
        };
        if done != 0 {
            let error = std::io::Error::last_os_error();
            tracing::debug!(start = mapping.start, %error, "unmapping read-only pages");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55e13fc93000-55e140554000 r--p 00000000 fe:00 5393446                    /usr/bin/skiff
Rss:                1652 kB
Anonymous:             0 kB
55e140554000-55e142654000 r-xp 008c0000 fe:00 5393446                    /usr/bin/skiff
Rss:                7424 kB
Anonymous:             0 kB
55e142654000-55e142775000 r--p 029bf000 fe:00 5393446                    /usr/bin/skiff
Rss:                1148 kB
Anonymous:          1148 kB
55e142775000-55e142780000 rw-p 02adf000 fe:00 5393446                    /usr/bin/skiff
Rss:                  44 kB
Anonymous:            44 kB
55e151c69000-55e151fbc000 rw-p 00000000 00:00 0                          [heap]
Anonymous:          1084 kB
7fb3e8192000-7fb3e82e8000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7fb3e82e8000-7fb3e8300000 r--s 00000000 fe:00 326279                     /dev/shm/shared
Anonymous:             0 kB
7ffc80a06000-7ffc80a08000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_never_written_private_file_mappings_are_dropped() {
        let starts: Vec<usize> = droppable(SMAPS).iter().map(|m| m.start).collect();
        // The binary's headers and rodata, its code, and libc's code; not the relocated
        // (written) RELRO segment, data, heap, a shared mapping or the vDSO.
        assert_eq!(starts, vec![0x55e13fc93000, 0x55e140554000, 0x7fb3e8192000]);
        assert_eq!(
            droppable(SMAPS)[1],
            Droppable {
                start: 0x55e140554000,
                end: 0x55e142654000
            }
        );
    }

    #[test]
    fn this_process_survives_its_code_being_unmapped() {
        release_startup_memory();
        let smaps = fs::read_to_string("/proc/self/smaps").expect("smaps");
        assert!(!droppable(&smaps).is_empty(), "the test binary's own code");
    }
}
