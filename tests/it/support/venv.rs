//! Python venvs the tests build for themselves: `$CARGO_TARGET_TMPDIR/<name>`, made with
//! `python3 -m venv` (or `$ROCKETMESH_INTEROP_PYTHON`) and `pip install` of pinned PyPI
//! packages, built once and reused while a check (a line of Python) passes. Built in a
//! temporary directory and renamed into place, so parallel runs don't race. A venv that cannot
//! be built is an error with pip's output: the tests that need it fail, never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One venv: where, what it holds, and how to tell it works.
pub struct Venv {
    /// Directory name under `$CARGO_TARGET_TMPDIR`.
    pub name: &'static str,
    /// `pip install` arguments (pinned requirements).
    pub packages: &'static [&'static str],
    /// Python code that exits 0 only in a complete venv (e.g. `import rocketmq.client`).
    pub check: &'static str,
}

impl Venv {
    /// The venv's directory.
    pub fn dir(&self) -> PathBuf {
        super::interop::tmp_root().join(self.name)
    }

    /// Whether `python` runs the check.
    pub fn works(&self, python: &Path) -> bool {
        python.exists()
            && Command::new(python)
                .args(["-c", self.check])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Builds the venv unless it already works; its `bin/python`.
    pub fn build(&self) -> Result<PathBuf, String> {
        let venv = self.dir();
        let python = venv.join("bin/python");
        if self.works(&python) {
            return Ok(python);
        }
        let base = std::env::var("ROCKETMESH_INTEROP_PYTHON").unwrap_or_else(|_| "python3".into());
        let staging =
            super::interop::tmp_root().join(format!("{}.tmp-{}", self.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        run(
            Command::new(&base).arg("-m").arg("venv").arg(&staging),
            &format!("{base} -m venv {}", staging.display()),
        )?;
        if let Err(e) = run(
            Command::new(staging.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .args(["--timeout", "60"])
                .args(self.packages),
            &format!("pip install {}", self.packages.join(" ")),
        ) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        // The venv's bin/ scripts (pip...) hard-code the staging path, but bin/python keeps
        // working after the rename: it finds pyvenv.cfg and site-packages relative to itself.
        match std::fs::rename(&staging, &venv) {
            Ok(()) => {}
            Err(_) if self.works(&python) => {
                // Another process won the race.
                let _ = std::fs::remove_dir_all(&staging);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&venv);
                std::fs::rename(&staging, &venv)
                    .map_err(|e2| format!("cannot move the venv into place: {e}; {e2}"))?;
            }
        }
        if self.works(&python) {
            Ok(python)
        } else {
            Err(format!(
                "{} fails `{}` after pip install {}",
                python.display(),
                self.check,
                self.packages.join(" ")
            ))
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
