//! What happens to a plugin file before anything opens it: ownership and permission checks, the optional
//! SHA-256 allowlist, a sanity check of the ELF headers, and a private copy named by its hash.
//!
//! The copy is what gets loaded, so a file rewritten in the plugin folder after the checks cannot change
//! the code that runs, and every version keeps its own path (the dynamic loader never confuses two versions).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A plugin file that passed every pre-open check and was copied into the cache.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// The private copy that gets loaded.
    pub cache_path: PathBuf,
}

/// Why [`prepare`] refused a file: a lowercase phrase, and whether the fault is the file's or the cache's.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The file itself failed a check: it stays refused until it changes.
    File(String),
    /// The private copy could not be written (a full disk): worth trying again with the same file.
    Cache(String),
}

impl From<String> for Refusal {
    fn from(why: String) -> Refusal {
        Refusal::File(why)
    }
}

/// Checks `path` and copies it to `cache_dir/<sha256>.<ext>`.
pub(crate) fn prepare(
    path: &Path,
    cache_dir: &Path,
    allowlist: Option<&[String]>,
) -> Result<Candidate, Refusal> {
    if let Some(folder) = path.parent() {
        let meta = fs::symlink_metadata(folder)
            .map_err(|e| format!("cannot stat its folder {}: {e}", folder.display()))?;
        check_folder(&meta, current_uid())
            .map_err(|why| format!("its folder {} {why}", folder.display()))?;
    }
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    check_metadata(&meta, current_uid())?;
    // O_NOFOLLOW plus the inode comparison close the gap between the checks above and the read.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot open for reading: {e}"))?;
    let opened = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err("was replaced while it was being checked".to_string().into());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(opened.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    if let Some(allowed) = allowlist {
        if !allowed
            .iter()
            .any(|h| h.trim().eq_ignore_ascii_case(&sha256))
        {
            return Err(format!("sha-256 {sha256} is not on the allowlist").into());
        }
    }
    check_elf(&bytes)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("so");
    let cache_path = cache_dir.join(format!("{sha256}.{ext}"));
    write_cache(&cache_path, &bytes).map_err(Refusal::Cache)?;
    Ok(Candidate { sha256, cache_path })
}

/// Creates the cache folder, private to the daemon's user.
pub(crate) fn ensure_cache_dir(cache_dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(cache_dir)?;
    fs::set_permissions(cache_dir, fs::Permissions::from_mode(0o700))
}

/// Removes cached copies left by an earlier run (`<sha256>.<ext>` and interrupted `*.tmp<pid>` files); every
/// plugin is copied again when it loads. Other files in the folder are left alone.
pub(crate) fn clear_stale_cache(cache_dir: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let (stem, _) = name.split_once('.').unwrap_or((name, ""));
        if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = fs::remove_file(&path);
        }
    }
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Regular file, not a symlink, not group/world-writable, owned by root or `uid`.
fn check_metadata(meta: &fs::Metadata, uid: u32) -> Result<(), String> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err("is a symlink; plugins must be regular files".to_string());
    }
    if !kind.is_file() {
        return Err("is not a regular file".to_string());
    }
    check_owner_and_mode(meta, uid)
}

/// The plugin folder as its files: a real directory, not a symlink, not group/world-writable (anyone who can write it
/// can swap a plugin), owned by root or `uid`.
fn check_folder(meta: &fs::Metadata, uid: u32) -> Result<(), String> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err("is a symlink; the plugin folder must be a real directory".to_string());
    }
    if !kind.is_dir() {
        return Err("is not a directory".to_string());
    }
    check_owner_and_mode(meta, uid)
}

fn check_owner_and_mode(meta: &fs::Metadata, uid: u32) -> Result<(), String> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "is group- or world-writable (mode {mode:o}); run chmod go-w on it"
        ));
    }
    if meta.uid() != 0 && meta.uid() != uid {
        return Err(format!(
            "is owned by uid {}, not by root or the daemon's user (uid {uid})",
            meta.uid()
        ));
    }
    Ok(())
}

fn write_cache(cache_path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Ok(existing) = fs::read(cache_path) {
        if existing == bytes {
            return Ok(());
        }
    }
    let tmp = cache_path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o500)
            .open(&tmp)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        fs::rename(&tmp, cache_path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot copy to the cache {}: {e}", cache_path.display())
    })
}

const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const ET_DYN: u16 = 3;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Refuses, before the dynamic loader sees them, files that are not 64-bit little-endian ELF shared
/// libraries, executables (they have a program interpreter) and truncated files (a segment or the section
/// table runs past the end).
fn check_elf(b: &[u8]) -> Result<(), String> {
    if b.is_empty() {
        return Err("is empty".to_string());
    }
    if !b.starts_with(b"\x7fELF") {
        return Err("is not an ELF shared library (no ELF magic)".to_string());
    }
    if b.len() < 64 {
        return Err(format!(
            "is truncated: {} bytes, shorter than an ELF header",
            b.len()
        ));
    }
    if b[4] != 2 || b[5] != 1 {
        return Err("is not a 64-bit little-endian ELF file".to_string());
    }
    let truncated = || "is truncated: the ELF header points past the end".to_string();
    let e_type = u16_at(b, 16).ok_or_else(truncated)?;
    if e_type != ET_DYN {
        return Err(format!(
            "is an ELF file of type {e_type}, not a shared library"
        ));
    }
    let phoff = u64_at(b, 32).ok_or_else(truncated)?;
    let shoff = u64_at(b, 40).ok_or_else(truncated)?;
    let phentsize = u64::from(u16_at(b, 54).ok_or_else(truncated)?);
    let phnum = u64::from(u16_at(b, 56).ok_or_else(truncated)?);
    let shentsize = u64::from(u16_at(b, 58).ok_or_else(truncated)?);
    let shnum = u64::from(u16_at(b, 60).ok_or_else(truncated)?);
    let len = b.len() as u64;
    let past_end = |end: Option<u64>| end.is_none_or(|end| end > len);
    if past_end(
        phentsize
            .checked_mul(phnum)
            .and_then(|n| n.checked_add(phoff)),
    ) || past_end(
        shentsize
            .checked_mul(shnum)
            .and_then(|n| n.checked_add(shoff)),
    ) {
        return Err(format!(
            "is truncated: its header tables run past the end ({len} bytes)"
        ));
    }
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).map_err(|_| truncated())?;
        let p_type = u32_at(b, at).ok_or_else(truncated)?;
        let p_offset = u64_at(b, at + 8).ok_or_else(truncated)?;
        let p_filesz = u64_at(b, at + 32).ok_or_else(truncated)?;
        if p_type == PT_INTERP {
            return Err(
                "is an executable (it has a program interpreter), not a library".to_string(),
            );
        }
        if p_type == PT_LOAD && past_end(p_offset.checked_add(p_filesz)) {
            return Err(format!(
                "is truncated: a segment ends at byte {}, the file has {len}",
                p_offset.saturating_add(p_filesz)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8], expected: Result<(), &str>) {
        assert_eq!(check_elf(bytes), expected.map_err(str::to_string));
    }

    /// A minimal 64-bit ELF header of type `e_type` with `phdrs` (type, offset, filesz) right after it.
    fn elf(e_type: u16, phdrs: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(p_type, offset, size) in phdrs {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&p_type.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[32..40].copy_from_slice(&size.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn elf_check_accepts_a_library_and_names_every_refusal() {
        check(&elf(ET_DYN, &[(PT_LOAD, 0, 120)]), Ok(()));
        check(b"", Err("is empty"));
        check(
            b"#!/bin/sh\necho hi\n",
            Err("is not an ELF shared library (no ELF magic)"),
        );
        check(
            b"\x7fELF\x02\x01",
            Err("is truncated: 6 bytes, shorter than an ELF header"),
        );
        check(
            &elf(2, &[]),
            Err("is an ELF file of type 2, not a shared library"),
        );
        check(
            &elf(ET_DYN, &[(PT_INTERP, 0, 10), (PT_LOAD, 0, 100)]),
            Err("is an executable (it has a program interpreter), not a library"),
        );
        check(
            &elf(ET_DYN, &[(PT_LOAD, 0, 4096)]),
            Err("is truncated: a segment ends at byte 4096, the file has 120"),
        );
        let mut cut = elf(ET_DYN, &[(PT_LOAD, 0, 100), (PT_LOAD, 0, 100)]);
        cut.truncate(130);
        check(
            &cut,
            Err("is truncated: its header tables run past the end (130 bytes)"),
        );
    }

    #[test]
    fn stale_cache_clearing_removes_only_hash_named_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let hash = "ab".repeat(32);
        for name in [
            format!("{hash}.so"),
            format!("{hash}.tmp77"),
            "notes.txt".to_string(),
        ] {
            fs::write(dir.path().join(name), b"x").unwrap_or_else(|e| panic!("write: {e}"));
        }
        clear_stale_cache(dir.path());
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("read_dir: {e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        left.sort();
        assert_eq!(left, vec!["notes.txt".to_string()]);
    }

    #[test]
    fn metadata_check_refuses_writable_symlinked_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let file = dir.path().join("p.so");
        fs::write(&file, b"x").unwrap_or_else(|e| panic!("write: {e}"));
        let link = dir.path().join("link.so");
        std::os::unix::fs::symlink(&file, &link).unwrap_or_else(|e| panic!("symlink: {e}"));
        let uid = current_uid();
        let meta = |p: &Path| fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat: {e}"));

        fs::set_permissions(&file, fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_metadata(&meta(&file), uid), Ok(()));
        assert_eq!(
            check_metadata(&meta(&link), uid),
            Err("is a symlink; plugins must be regular files".to_string())
        );
        assert_eq!(
            check_metadata(&meta(dir.path()), uid),
            Err("is not a regular file".to_string())
        );
        // A file owned by someone else than root or the daemon's user is refused.
        let (owner, daemon) = if uid == 0 {
            std::os::unix::fs::chown(&file, Some(4242), None)
                .unwrap_or_else(|e| panic!("chown: {e}"));
            (4242, 0)
        } else {
            (uid, uid + 1)
        };
        assert_eq!(
            check_metadata(&meta(&file), daemon),
            Err(format!(
                "is owned by uid {owner}, not by root or the daemon's user (uid {daemon})"
            ))
        );
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            check_metadata(&meta(&file), uid),
            Err("is group- or world-writable (mode 666); run chmod go-w on it".to_string())
        );
    }

    #[test]
    fn a_plugin_in_a_folder_others_can_write_or_a_symlinked_folder_is_refused_naming_the_folder() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let plugins = dir.path().join("plugins");
        let cache = dir.path().join("cache");
        fs::create_dir_all(&plugins).unwrap_or_else(|e| panic!("{e}"));
        fs::write(plugins.join("p.so"), b"not checked this far").unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&plugins, fs::Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("{e}"));
        let Err(Refusal::File(err)) = prepare(&plugins.join("p.so"), &cache, None) else {
            panic!("a plugin in a world-writable folder was not refused as a file fault");
        };
        assert_eq!(
            err,
            format!(
                "its folder {} is group- or world-writable (mode 777); run chmod go-w on it",
                plugins.display()
            )
        );
        fs::set_permissions(&plugins, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let link = dir.path().join("linked");
        std::os::unix::fs::symlink(&plugins, &link).unwrap_or_else(|e| panic!("{e}"));
        let Err(Refusal::File(err)) = prepare(&link.join("p.so"), &cache, None) else {
            panic!("a plugin in a symlinked folder was not refused as a file fault");
        };
        assert!(
            err.starts_with(&format!("its folder {} is a symlink", link.display())),
            "{err}"
        );
    }
}
