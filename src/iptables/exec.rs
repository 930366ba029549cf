//! Running the iptables binaries: which ones ([`Backend`], [`Tool`]), and what their failures
//! mean ([`IptablesError`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::rules::{self, Family};
use super::IptablesError;

/// Which of the two iptables implementations writes the rules.
///
/// Both program the same netfilter hooks, but through different kernel interfaces: iptables-nft
/// writes nf_tables tables, iptables-legacy the older x_tables ones. The kernel runs both, so
/// rules written by the "other" one still apply, but each tool sees only its own: `iptables-save`
/// shows half the picture, and a chain one tool flushes leaves the other's rules in place, with
/// an order between the two sets nobody chose. Mixing them in one network namespace is the known
/// failure (the kube-proxy / CNI / istio-init incidents), so rocketmesh writes its rules where the
/// namespace's other nat rules already are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    /// `auto`: legacy if the legacy backend already holds nat rules in this namespace (of either
    /// family), else nft. This is Istio's detection, narrowed to the table we write. nft is the
    /// default because it is the default iptables of Debian >= 10, RHEL >= 8 and current node
    /// images, and newer kernels may not have the x_tables modules at all; a pod's fresh
    /// namespace has no rules in either backend, so nothing is mixed.
    ///
    /// The probe is `iptables-legacy-save` without `-t`: it dumps only tables that already exist
    /// in the namespace (naming `-t nat` would create the legacy nat table, and from then on
    /// iptables-nft warns that legacy tables are present).
    pub fn detect() -> Result<Backend, IptablesError> {
        for family in Family::BOTH {
            let name = match family {
                Family::V4 => "iptables-legacy-save",
                Family::V6 => "ip6tables-legacy-save",
            };
            let Some(path) = find_program(name) else {
                tracing::debug!("{name} not installed: no legacy rules to follow");
                continue;
            };
            let tool = Tool {
                name: name.to_owned(),
                fallback: None,
                path: Some(path),
            };
            match tool.run(&[]) {
                Ok(out) if rules::nat_rule_count(&out) > 0 => {
                    tracing::info!(
                        "the legacy iptables backend holds {family} nat rules in this network namespace: using iptables-legacy"
                    );
                    return Ok(Backend::Legacy);
                }
                Ok(_) => {}
                Err(e @ IptablesError::NeedsNetAdmin { .. }) => return Err(e),
                Err(e) => tracing::debug!("{name}: {e}; assuming no legacy rules"),
            }
        }
        Ok(Backend::Nft)
    }

    /// The programs for `family`: the backend's own (`iptables-nft`, `ip6tables-legacy`...), or
    /// plain `iptables` / `ip6tables` when the suffixed one is not installed.
    pub fn tool(self, family: Family) -> Tool {
        let (own, plain) = match (self, family) {
            (Backend::Nft, Family::V4) => ("iptables-nft", "iptables"),
            (Backend::Nft, Family::V6) => ("ip6tables-nft", "ip6tables"),
            (Backend::Legacy, Family::V4) => ("iptables-legacy", "iptables"),
            (Backend::Legacy, Family::V6) => ("ip6tables-legacy", "ip6tables"),
        };
        if let Some(path) = find_program(own) {
            return Tool {
                name: own.into(),
                fallback: None,
                path: Some(path),
            };
        }
        match find_program(plain) {
            Some(path) => {
                tracing::debug!("{own} not found: using {}", path.display());
                Tool {
                    name: plain.into(),
                    fallback: None,
                    path: Some(path),
                }
            }
            None => Tool {
                name: own.into(),
                fallback: Some(plain.into()),
                path: None,
            },
        }
    }
}

/// Whether this network namespace has the legacy (x_tables) `table` of `family`, from
/// `/proc/net/ip_tables_names` (or `ip6_tables_names`; absent when x_tables is not loaded). Read
/// instead of asking iptables-legacy, which would create the table by looking at it.
pub fn legacy_table_exists(family: Family, table: &str) -> Result<bool, IptablesError> {
    let path = match family {
        Family::V4 => "/proc/net/ip_tables_names",
        Family::V6 => "/proc/net/ip6_tables_names",
    };
    match std::fs::read_to_string(path) {
        Ok(names) => Ok(names.lines().any(|l| l.trim() == table)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(classify(format!("read {path}"), "-".into(), e.to_string())),
    }
}

/// One iptables program, found (or not) on this machine.
#[derive(Debug, Clone)]
pub struct Tool {
    /// The program name printed in commands (`iptables-nft`).
    pub name: String,
    /// The other name looked for, when neither was found.
    fallback: Option<String>,
    path: Option<PathBuf>,
}

impl Tool {
    /// Runs the program with `args` (argv without the program); its stdout on success.
    pub fn run(&self, args: &[String]) -> Result<String, IptablesError> {
        let command = rules::shell_line(
            &std::iter::once(self.name.clone())
                .chain(args.iter().cloned())
                .collect::<Vec<_>>(),
        );
        let Some(path) = &self.path else {
            return Err(self.missing());
        };
        let out = match Command::new(path).args(args).output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.missing()),
            Err(source) => return Err(IptablesError::Spawn { command, source }),
        };
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if out.status.success() {
            if !stderr.is_empty() {
                tracing::debug!("{command}: {stderr}");
            }
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(classify(command, out.status.to_string(), stderr))
    }

    /// Runs a whole argv whose first word is this tool's name.
    pub fn run_argv(&self, argv: &[String]) -> Result<String, IptablesError> {
        self.run(&argv[1..])
    }

    fn missing(&self) -> IptablesError {
        let also = self
            .fallback
            .as_deref()
            .map(|f| format!(" (nor {f})"))
            .unwrap_or_default();
        IptablesError::MissingBinary {
            program: format!("{}{also}", self.name),
        }
    }
}

/// What a failed iptables command means: no privilege, or something else.
fn classify(command: String, status: String, stderr: String) -> IptablesError {
    const REFUSED: [&str; 3] = [
        "Permission denied",
        "Operation not permitted",
        "you must be root",
    ];
    if REFUSED.iter().any(|m| stderr.contains(m)) {
        IptablesError::NeedsNetAdmin { command, stderr }
    } else {
        IptablesError::Failed {
            command,
            status,
            stderr,
        }
    }
}

/// `name` on PATH, or in the sbin directories a non-root PATH often lacks.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_capability() {
        for stderr in [
            "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
            "Fatal: can't open lock file /run/xtables.lock: Permission denied",
            "iptables v1.8.9 (legacy): can't initialize iptables table `nat': Permission denied (you must be root)",
            "Failed to list table names in /proc/net/ip_tables_names: Permission denied",
            "ip6tables: Operation not permitted",
        ] {
            let e = classify("iptables -S".into(), "exit status: 4".into(), stderr.into());
            assert!(matches!(e, IptablesError::NeedsNetAdmin { .. }), "{stderr}");
            assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        }
        let other = classify(
            "iptables -N X".into(),
            "exit status: 1".into(),
            "iptables: Chain already exists.".into(),
        );
        assert!(matches!(other, IptablesError::Failed { .. }));
    }

    #[test]
    fn a_missing_program_names_the_package() {
        let t = Tool {
            name: "iptables-nft".into(),
            fallback: Some("iptables".into()),
            path: None,
        };
        let e = t.run(&["-S".into()]).unwrap_err().to_string();
        assert!(e.contains("iptables-nft (nor iptables)"), "{e}");
        assert!(e.contains("package `iptables`"), "{e}");
    }
}
