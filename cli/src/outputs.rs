//! The files a command writes, all or none.
//!
//! A command names its output paths up front ([`Outputs::plan`]): each is checked
//! before any work is done — its directory exists, it is not a directory or another
//! non-regular file, and it names neither another output nor one of the command's
//! inputs (after following links, so `a.npy`, `./a.npy` and a link to it are one
//! file). The results are then written to temporary files beside their targets
//! ([`Outputs::stage`]), and only when every one of them is written does
//! [`Outputs::commit_and`] rename them into place and print the report. A failure at any step — bad input,
//! a full disk, a rename that fails halfway — leaves every pre-existing file as it
//! was: the temporary files are removed, and targets already replaced are put back.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempPath};

use crate::failure::Failure;
use crate::interrupt;

/// One output path, checked; where its content goes once staged.
struct Planned {
    /// The option that named it, for messages (`--grad-out`).
    option: &'static str,
    /// The path as the user wrote it, for messages.
    shown: PathBuf,
    /// Where the file really goes: the link target when the path is a symbolic link.
    target: PathBuf,
    /// The written content, waiting in a temporary file beside `target`.
    staged: Option<TempPath>,
}

/// The outputs of one command: checked up front, written aside, committed together.
pub struct Outputs {
    planned: Vec<Planned>,
}

impl Outputs {
    /// Checks `outputs` (option name, path) against each other and against the
    /// command's `inputs` (option name, path) before any work is done.
    pub fn plan(outputs: &[(&'static str, &Path)], inputs: &[(&'static str, &Path)]) -> Result<Self, String> {
        let mut planned: Vec<Planned> = Vec::with_capacity(outputs.len());
        for &(option, path) in outputs {
            let target = resolve_output(option, path)?;
            if let Some(earlier) = planned.iter().find(|earlier| earlier.target == target) {
                return Err(format!(
                    "{option} and {} name the same file ({}); give each output its own path",
                    earlier.option,
                    path.display()
                ));
            }
            if let Some((input_option, _)) = inputs.iter().find(|(_, input)| same_file(&target, input)) {
                return Err(format!(
                    "{option} names the same file as {input_option} ({}); write the result to another path",
                    path.display()
                ));
            }
            planned.push(Planned {
                option,
                shown: path.to_path_buf(),
                target,
                staged: None,
            });
        }
        Ok(Self { planned })
    }

    /// Whether the output named by `option` was asked for.
    pub fn wants(&self, option: &str) -> bool {
        self.planned.iter().any(|planned| planned.option == option)
    }

    /// Writes the content of the output named by `option` to a temporary file
    /// beside its target, through `write`, and flushes it to disk.
    pub fn stage(
        &mut self,
        option: &str,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), Failure> {
        let Some(planned) = self.planned.iter_mut().find(|planned| planned.option == option) else {
            return Err(Failure::Machine(format!("{option} was not planned as an output")));
        };
        let failed =
            |error: std::io::Error| Failure::Machine(format!("cannot write {}: {error}", planned.shown.display()));
        // Removed if the command is interrupted before it is renamed into place.
        let mut temporary = interrupt::create_tracked(|| temporary_beside(&planned.target)).map_err(failed)?;
        {
            let mut writer = BufWriter::new(temporary.as_file_mut());
            write(&mut writer).map_err(failed)?;
            writer.flush().map_err(failed)?;
        }
        temporary.as_file().sync_all().map_err(failed)?;
        planned.staged = Some(temporary.into_temp_path());
        Ok(())
    }

    /// [`Outputs::commit_and`] with nothing to announce.
    pub fn commit(self) -> Result<(), Failure> {
        self.commit_and(|| Ok(()))
    }

    /// Renames every staged file into place, then runs `announce` (the command's
    /// report). Targets that existed are first moved aside; if any step fails,
    /// `announce` included, every target already replaced gets its old file back
    /// (or is removed if it did not exist) and the error is returned.
    ///
    /// An interrupt waits until this returns (see [`crate::interrupt`]).
    pub fn commit_and(self, announce: impl FnOnce() -> Result<(), Failure>) -> Result<(), Failure> {
        let mut staged_files = interrupt::staged();
        let ours: Vec<PathBuf> = self
            .planned
            .iter()
            .filter_map(|planned| planned.staged.as_ref().map(|staged| staged.to_path_buf()))
            .collect();
        let committed = self.commit_locked(announce);
        // Renamed into place, or removed with the roll-back.
        interrupt::forget(&mut staged_files, &ours);
        committed
    }

    /// [`Outputs::commit_and`]'s renames and roll-back, with interrupts held off.
    fn commit_locked(self, announce: impl FnOnce() -> Result<(), Failure>) -> Result<(), Failure> {
        let mut done: Vec<(PathBuf, Option<TempPath>)> = Vec::with_capacity(self.planned.len());
        for planned in self.planned {
            let Some(staged) = planned.staged else {
                continue;
            };
            match replace(&planned.target, staged) {
                Ok(backup) => done.push((planned.target, backup)),
                Err(error) => {
                    roll_back(done);
                    return Err(Failure::Machine(format!(
                        "cannot write {}: {error}",
                        planned.shown.display()
                    )));
                }
            }
        }
        if let Err(failure) = announce() {
            roll_back(done);
            return Err(failure);
        }
        // Dropping the backups deletes the old files they hold.
        Ok(())
    }
}

/// Where an output path really leads, after checking it can be written: the
/// parent directory exists, and the path (or the file a link leads to) is absent
/// or a regular file.
fn resolve_output(option: &str, path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err(format!("{option} is empty; give a file path"));
    }
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => return Err(format!("{option} {shown} is a directory; give a file path")),
        Ok(metadata) if !metadata.is_file() => {
            return Err(format!(
                "{option} {shown} is not a regular file (a device, pipe or socket); give a file path"
            ));
        }
        Ok(_) => {
            return std::fs::canonicalize(path).map_err(|error| format!("cannot resolve {option} {shown}: {error}"));
        }
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot write {option} {shown}: {error}"));
        }
        Err(_) => {}
    }
    // `new_dir/` and `new_dir/.` name a directory, though `Path::file_name` reads
    // `new_dir` out of them: no file is made in the directory's place.
    let spelled = path.as_os_str().as_encoded_bytes();
    if spelled.ends_with(b"/") || spelled.ends_with(b"/.") || spelled == b"." {
        return Err(format!("{option} {shown} names a directory; give a file path"));
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(format!(
            "{option} {shown} is a link to a missing file; give a file path"
        ));
    }
    let Some(name) = path.file_name() else {
        return Err(format!("{option} {shown} does not name a file"));
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let directory = std::fs::canonicalize(parent)
        .map_err(|error| format!("cannot write {option} {shown}: directory {}: {error}", parent.display()))?;
    if !directory.is_dir() {
        return Err(format!(
            "cannot write {option} {shown}: {} is not a directory",
            parent.display()
        ));
    }
    Ok(directory.join(name))
}

/// Whether an output target and an input path are one file (a missing input is none).
fn same_file(target: &Path, input: &Path) -> bool {
    match std::fs::canonicalize(input) {
        Ok(input) if input == target => true,
        // Hard links: two names, one file.
        _ => same_file::is_same_file(target, input).unwrap_or(false),
    }
}

/// An empty temporary file in the target's directory (so that the rename stays on
/// one file system), with the target's permissions when it exists, else the
/// permissions a new file gets (0666 less the umask on Unix).
fn temporary_beside(target: &Path) -> std::io::Result<NamedTempFile> {
    let directory = target.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".xent-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let temporary = builder.tempfile_in(directory)?;
    if let Ok(metadata) = std::fs::metadata(target) {
        let permissions = metadata.permissions();
        temporary.as_file().set_permissions(permissions)?;
    }
    Ok(temporary)
}

/// Moves `target` aside (if it exists) and the staged file into its place; returns
/// the moved-aside old file, which is deleted when dropped.
fn replace(target: &Path, staged: TempPath) -> std::io::Result<Option<TempPath>> {
    let backup = if target.exists() {
        let directory = target.parent().unwrap_or(Path::new("."));
        let backup = tempfile::Builder::new()
            .prefix(".xent-old-")
            .tempfile_in(directory)?
            .into_temp_path();
        std::fs::rename(target, &backup)?;
        Some(backup)
    } else {
        None
    };
    match staged.persist(target) {
        Ok(()) => Ok(backup),
        Err(error) => {
            if let Some(backup) = backup {
                // Best effort: the old file goes back where it was.
                let _ = std::fs::rename(&backup, target);
                let _ = backup.keep();
            }
            Err(error.error)
        }
    }
}

/// Undoes [`replace`] for every target in `done`, last first.
fn roll_back(done: Vec<(PathBuf, Option<TempPath>)>) {
    for (target, backup) in done.into_iter().rev() {
        match backup {
            Some(backup) => {
                // Kept either way: if the old file cannot go back, it stays under
                // the backup's name rather than being deleted with it.
                let _ = std::fs::rename(&backup, &target);
                let _ = backup.keep();
            }
            None => {
                let _ = std::fs::remove_file(&target);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage_text(outputs: &mut Outputs, option: &str, text: &str) {
        outputs
            .stage(option, |out| out.write_all(text.as_bytes()))
            .expect("stage");
    }

    /// A directory holding first.npy ("old first"), and outputs planned over it and
    /// a new second.npy, staged with "new first" and "new second", not committed.
    fn two_staged_outputs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf, Outputs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = dir.path().join("first.npy");
        let second = dir.path().join("second.npy");
        std::fs::write(&first, "old first").expect("write");
        let mut outputs = Outputs::plan(&[("--grad-out", &first), ("--losses-out", &second)], &[]).expect("plan");
        stage_text(&mut outputs, "--grad-out", "new first");
        stage_text(&mut outputs, "--losses-out", "new second");
        (dir, first, second, outputs)
    }

    #[test]
    fn a_rename_that_fails_halfway_puts_the_earlier_outputs_back() {
        let (dir, first, second, outputs) = two_staged_outputs();
        // The second target turns into a non-empty directory before the commit:
        // its rename fails after the first output was already replaced.
        std::fs::create_dir(&second).expect("mkdir");
        std::fs::write(second.join("keep"), "x").expect("write");
        let Err(Failure::Machine(error)) = outputs.commit() else {
            panic!("the commit must fail as a machine failure");
        };
        assert!(error.contains("second.npy"), "{error}");
        assert_eq!(std::fs::read_to_string(&first).expect("read"), "old first");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["first.npy", "second.npy"], "no temporary or backup files left");
    }

    #[test]
    fn a_commit_replaces_every_output_and_leaves_nothing_else() {
        let (dir, first, second, outputs) = two_staged_outputs();
        assert_eq!(
            std::fs::read_to_string(&first).expect("read"),
            "old first",
            "nothing moves before commit"
        );
        outputs.commit().expect("commit");
        assert_eq!(std::fs::read_to_string(&first).expect("read"), "new first");
        assert_eq!(std::fs::read_to_string(&second).expect("read"), "new second");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 2);
    }

    #[test]
    fn a_failed_announcement_puts_every_output_back() {
        let (dir, first, second, outputs) = two_staged_outputs();
        let Err(Failure::Machine(error)) = outputs.commit_and(|| Err(Failure::Machine("no report".into()))) else {
            panic!("the failed announcement must fail the commit");
        };
        assert_eq!(error, "no report");
        assert_eq!(std::fs::read_to_string(&first).expect("read"), "old first");
        assert!(!second.exists(), "a new output is removed again");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 1);
    }

    #[test]
    fn dropping_staged_outputs_without_a_commit_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("grad.npy");
        let mut outputs = Outputs::plan(&[("--grad-out", &target)], &[]).expect("plan");
        stage_text(&mut outputs, "--grad-out", "never committed");
        drop(outputs);
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0);
    }
}
