//! Unpacking one image layer (tar, gzip or zstd) into a directory overlayfs can stack, whiteouts included.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Error;

/// How a layer blob is compressed, told by its first bytes rather than by its media type, which
/// `docker save` archives do not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// A reader that hashes what passes through it: the sha256 of a layer's uncompressed bytes is its
/// diff ID, which the image configuration lists and which names the unpacked directory.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks the layer read from `blob` into `dest` (which must exist and be empty) and returns its
/// diff ID (`sha256:<hex>` of the uncompressed tar).
///
/// OCI whiteouts become what overlayfs reads: `.wh.NAME` a character device 0/0 named NAME, and
/// `.wh..wh..opq` the `trusted.overlay.opaque` attribute on its directory. Owners, modes, device
/// files and extended attributes are kept, so this needs root, as overlayfs does.
pub fn unpack(blob: impl Read, dest: &Path) -> Result<String, Error> {
    let mut buffered = BufReader::new(blob);
    let head = buffered
        .fill_buf()
        .map_err(|e| Error::io("read layer", dest, e))?;
    let decompressed: Box<dyn Read> = match Compression::sniff(head) {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| Error::io("read zstd layer", dest, e))?,
        ),
    };
    let mut hashing = Hashing {
        inner: decompressed,
        hasher: Sha256::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        let bad = |e: io::Error| Error::io("unpack layer", dest, e);
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let path = entry.path().map_err(bad)?.into_owned();
            match whiteout(&path) {
                Some(Whiteout::Opaque(dir)) => {
                    let dir = dest.join(dir);
                    fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
                    xattr_set(&dir, "trusted.overlay.opaque", b"y")?;
                }
                Some(Whiteout::File(hidden)) => {
                    let hidden = dest.join(hidden);
                    if let Some(parent) = hidden.parent() {
                        fs::create_dir_all(parent)
                            .map_err(|e| Error::io("create directory", parent, e))?;
                    }
                    remove_existing(&hidden)?;
                    nix::sys::stat::mknod(
                        &hidden,
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::empty(),
                        0,
                    )
                    .map_err(|e| Error::io("create whiteout", &hidden, e.into()))?;
                }
                None => {
                    entry
                        .unpack_in(dest)
                        .map_err(|e| Error::io("unpack", dest.join(&path), e))?;
                }
            }
        }
    }
    // The tar end marker may be followed by padding, which is part of the diff ID.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| Error::io("read layer", dest, e))?;
    Ok(format!("sha256:{:x}", hashing.hasher.finalize()))
}

#[derive(Debug, PartialEq, Eq)]
enum Whiteout {
    /// Hide everything the lower layers have in this directory.
    Opaque(PathBuf),
    /// Hide this path of the lower layers.
    File(PathBuf),
}

/// Whether a layer entry is a whiteout, and of what. Paths that climb out of the layer are left to
/// the tar crate, which refuses them.
fn whiteout(path: &Path) -> Option<Whiteout> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix(".wh.")?;
    if path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    let parent = path.parent().unwrap_or(Path::new(""));
    Some(if rest == ".wh..opq" {
        Whiteout::Opaque(parent.to_path_buf())
    } else {
        Whiteout::File(parent.join(rest))
    })
}

fn remove_existing(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(path).map_err(|e| Error::io("remove", path, e))
        }
        Ok(meta) if meta.file_type().is_char_device() || meta.is_file() || meta.is_symlink() => {
            fs::remove_file(path).map_err(|e| Error::io("remove", path, e))
        }
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io("remove", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("inspect", path, e)),
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> Result<(), Error> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::io("set attribute", path, io::ErrorKind::InvalidInput.into()))?;
    let c_name = std::ffi::CString::new(name).expect("attribute names have no NUL");
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(Error::io("set attribute", path, io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_are_recognised() {
        let cases = [
            ("etc/passwd", None),
            ("etc/.wh.passwd", Some(Whiteout::File("etc/passwd".into()))),
            (".wh.tmp", Some(Whiteout::File("tmp".into()))),
            (
                "var/cache/.wh..wh..opq",
                Some(Whiteout::Opaque("var/cache".into())),
            ),
            ("../.wh.x", None),
            ("etc/not.wh.file", None),
        ];
        for (path, want) in cases {
            assert_eq!(whiteout(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn compression_is_sniffed() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/\0\0\0"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }
}
