//! Where the tools write: one output file (`--json`, `visualize --out`) or one output
//! folder (`export --out`). Each is checked before any work, so a bad path fails in a
//! second rather than after minutes of computation, and written under a temporary name
//! beside its destination and renamed into place, so a failed or interrupted write never
//! truncates what was there before.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The temporary sibling `path` is written under: hidden, named after this process (same
/// folder, so the final rename stays on one file system), and refused if something already
/// has that name, which is then never overwritten or removed.
fn sibling(path: &Path) -> Result<PathBuf> {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".partial-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    if tmp.symlink_metadata().is_ok() {
        bail!(
            "{} already exists (left by an interrupted write?): remove it and retry",
            tmp.display()
        );
    }
    Ok(tmp)
}

/// Checks, before any work, that the file `path` can be written by [`write_file`]: it is
/// not a folder, its extension is one of `extensions` (any case; empty: any), and its
/// parent folder exists (created if missing). `flag` names the argument in errors.
pub fn prepare_file(path: &Path, flag: &str, extensions: &[&str]) -> Result<()> {
    if path.file_name().is_none() || path.is_dir() {
        bail!(
            "{flag} {}: a file name is needed, not a folder",
            path.display()
        );
    }
    if !extensions.is_empty() {
        let ext = path.extension().map(|e| e.to_string_lossy().to_string());
        if !ext.is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x))) {
            bail!(
                "{flag} {}: only {} files can be written (the extension decides the format)",
                path.display(),
                extensions.join(", ")
            );
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("{flag} {}: creating its folder", path.display()))?;
    }
    Ok(())
}

/// Writes `path` atomically: `write` fills a temporary sibling, which is then renamed over
/// `path`; on failure the temporary file is removed and `path` is left as it was.
pub fn write_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(path)?;
    let written = write(&tmp).and_then(|()| {
        fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

/// [`write_file`] of a byte string.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, |tmp| Ok(fs::write(tmp, bytes)?))
}

/// Checks, before any work, that `dir` can be a new output folder: it does not exist, or
/// is an empty folder. An output never overwrites files it did not write (a checkpoint
/// folder passed as `export --out` would lose the weights that make it resumable).
pub fn prepare_dir(dir: &Path, flag: &str) -> Result<()> {
    if dir.file_name().is_none() {
        bail!(
            "{flag} {}: name a new folder (not `.`, `..` or a root)",
            dir.display()
        );
    }
    if let Some(names) = folder_contents(dir, flag)?
        && !names.is_empty()
    {
        bail!(
            "{flag} {} already exists and is not empty (it holds {}): choose a new folder (nothing was written)",
            dir.display(),
            some_of(&names)
        );
    }
    Ok(())
}

/// What the would-be output folder `dir` (passed as `flag`) holds: `None` when it does not
/// exist, else the names of its entries, sorted; an error when it exists but is not a
/// folder, or cannot be listed.
pub fn folder_contents(dir: &Path, flag: &str) -> Result<Option<Vec<String>>> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(None);
    }
    if !dir.is_dir() {
        bail!(
            "{flag} {} exists and is not a folder: choose a new folder",
            dir.display()
        );
    }
    let mut names = fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .with_context(|| format!("listing {}", dir.display()))?;
    names.sort();
    Ok(Some(names))
}

/// A few of `names` for a message: the first three, then how many more.
pub fn some_of(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let shown = names[..names.len().min(SHOWN)].join(", ");
    match names.len().saturating_sub(SHOWN) {
        0 => shown,
        n => format!("{shown} and {n} more"),
    }
}

/// Creates the folder `dir` atomically after [`prepare_dir`]: `fill` writes its files
/// into a temporary sibling folder, which is renamed into place only when all of them
/// are written; on failure it is removed and `dir` does not appear.
pub fn write_dir(dir: &Path, flag: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    prepare_dir(dir, flag)?;
    let tmp = sibling(dir)?;
    if let Some(parent) = tmp.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = fill(&tmp).and_then(|()| {
        // An empty folder the user made in advance is replaced; prepare_dir refused any other.
        if dir.exists() {
            fs::remove_dir(dir).with_context(|| format!("replacing {}", dir.display()))?;
        }
        fs::rename(&tmp, dir).with_context(|| format!("renaming {} into place", tmp.display()))
    });
    if written.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        fs::write(&p, "old").unwrap();
        let e = write_file(&p, |_| bail!("boom")).unwrap_err();
        assert!(format!("{e:#}").contains("a.json"), "{e:#}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        write_bytes(&p, b"new").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
    }

    #[test]
    fn files_are_checked_before_work() {
        let dir = tempfile::tempdir().unwrap();
        let e = prepare_file(&dir.path().join("x.jpg"), "--out", &["png"]).unwrap_err();
        assert!(e.to_string().contains("only png files"), "{e}");
        prepare_file(&dir.path().join("x.PNG"), "--out", &["png"]).unwrap();
        let deep = dir.path().join("new/sub/b.json");
        prepare_file(&deep, "--json", &[]).unwrap();
        assert!(deep.parent().unwrap().is_dir());
        let e = prepare_file(dir.path(), "--json", &[]).unwrap_err();
        assert!(e.to_string().contains("not a folder"), "{e}");
    }

    #[test]
    fn folders_are_new_or_empty_and_appear_whole() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        write_dir(&out, "--out", |tmp| Ok(fs::write(tmp.join("a"), "1")?)).unwrap();
        assert_eq!(fs::read_to_string(out.join("a")).unwrap(), "1");
        let e = write_dir(&out, "--out", |_| unreachable!()).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        write_dir(&empty, "--out", |tmp| Ok(fs::write(tmp.join("b"), "2")?)).unwrap();
        assert!(empty.join("b").is_file());
        let failed = dir.path().join("failed");
        assert!(write_dir(&failed, "--out", |_| bail!("boom")).is_err());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "only out and empty: {left:?}");
    }

    #[test]
    fn a_users_file_named_like_a_temporary_is_never_touched() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let theirs = dir
            .path()
            .join(format!(".out.partial-{}", std::process::id()));
        fs::create_dir(&theirs).unwrap();
        fs::write(theirs.join("keep"), "mine").unwrap();
        let e = write_dir(&out, "--out", |_| unreachable!()).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = write_bytes(&out, b"x").unwrap_err();
        assert!(format!("{e:#}").contains("already exists"), "{e:#}");
        assert_eq!(fs::read_to_string(theirs.join("keep")).unwrap(), "mine");
    }
}
