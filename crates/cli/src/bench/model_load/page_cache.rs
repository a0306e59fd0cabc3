//! The model file and the page cache: evicting it (drop_caches, `dd
//! oflag=nocache`), measuring what of it is resident (`fincore`), and the
//! filesystem it is on.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

pub(super) const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// Writes 1 to /proc/sys/vm/drop_caches (drops the whole clean page cache);
/// fails where it is not writable (not root, or a container).
pub(super) fn write_drop_caches() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(DROP_CACHES)?
        .write_all(b"1\n")
}

/// `dd if=/dev/null of=FILE oflag=nocache conv=notrunc,fdatasync count=0`:
/// coreutils' dd calls posix_fadvise(DONTNEED) on the whole file.
pub(super) async fn dd_nocache(file: &Path) -> anyhow::Result<()> {
    let mut of = std::ffi::OsString::from("of=");
    of.push(file);
    let out = tokio::process::Command::new("dd")
        .args([
            "if=/dev/null",
            "oflag=nocache",
            "conv=notrunc,fdatasync",
            "count=0",
        ])
        .arg(of)
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run dd (coreutils)")?;
    if !out.status.success() {
        bail!(
            "dd oflag=nocache failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The bytes of `file` in the page cache, from util-linux's `fincore`.
pub(super) async fn fincore(file: &Path) -> anyhow::Result<u64> {
    let out = tokio::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(file)
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run fincore (util-linux)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fincore failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_fincore(&text).with_context(|| format!("fincore printed {:?}, not a byte count", text))
}

/// fincore's `--bytes --noheadings --output RES` output: one number.
fn parse_fincore(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// At most 0.1 % of the file is resident.
pub(super) fn is_cold(resident: u64, file_bytes: u64) -> bool {
    resident.saturating_mul(1000) <= file_bytes
}

/// At least 99 % of the file is resident.
pub(super) fn is_warm(resident: u64, file_bytes: u64) -> bool {
    resident.saturating_mul(100) >= file_bytes.saturating_mul(99)
}

/// The filesystem type and source of the mount holding `path`, from
/// `/proc/self/mounts` (the longest mount point that contains it).
pub(super) fn mount_of(mounts: &str, path: &Path) -> Option<(String, String)> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (source, point, fs) = (fields.next()?, fields.next()?, fields.next()?);
            let point = unescape_mount(point);
            path.starts_with(&point)
                .then(|| (point.len(), fs.to_owned(), unescape_mount(source)))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, fs, source)| (fs, source))
}

/// Undoes the kernel's octal escapes in /proc/self/mounts (`\040` is a space).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fincore_output_is_one_byte_count() {
        assert_eq!(parse_fincore("  0\n"), Some(0));
        assert_eq!(parse_fincore("1066405888\n"), Some(1_066_405_888));
        assert_eq!(parse_fincore("1G\n"), None);
        assert_eq!(parse_fincore(""), None);
    }

    #[test]
    fn cold_and_warm_thresholds() {
        let file = 1_073_742_184;
        assert!(is_cold(0, file));
        assert!(is_cold(file / 1000, file));
        assert!(!is_cold(file / 999, file));
        assert!(is_warm(file, file));
        assert!(is_warm(1_065_291_776, file)); // 99.2 %, as seen after a cold load
        assert!(!is_warm(file / 2, file));
    }

    #[test]
    fn mount_is_the_longest_containing_mount_point() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n\
                      /dev/vdb /tmp\\040disk xfs rw 0 0\n\
                      proc /proc proc rw 0 0\n";
        let at = |p: &str| mount_of(mounts, Path::new(p));
        assert_eq!(at("/tmp/x/model"), Some(("tmpfs".into(), "tmpfs".into())));
        assert_eq!(at("/tmp disk/x"), Some(("xfs".into(), "/dev/vdb".into())));
        assert_eq!(at("/tmpx"), Some(("ext4".into(), "/dev/vda".into())));
        assert_eq!(at("/work"), Some(("ext4".into(), "/dev/vda".into())));
    }
}
