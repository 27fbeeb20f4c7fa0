//! The sandbox of the `settled plugin-host` child: what a process-isolated plugin may do.
//!
//! A plugin is sans-IO: it needs memory, its two pipes, a clock, randomness and (if it likes) threads. The
//! child takes everything else away in two steps, so that no plugin code (not even a library constructor or
//! `init`) ever runs without most of the sandbox:
//!
//! 1. [`Sandbox::before_load`], before `dlopen`: `no_new_privs`; Landlock with every filesystem right handled
//!    and only the plugin library itself readable, TCP bind/connect handled and no port allowed, signals
//!    and abstract UNIX sockets scoped to the child; a seccomp filter refusing sockets, new processes,
//!    `exec`, changes to files, tracing other processes, signals to other processes, io_uring, BPF, mounts,
//!    namespaces, kernel modules and the like (`EPERM`), and `clone3` (`ENOSYS`, so that the C library
//!    falls back to `clone`, which is allowed for threads only).
//! 2. [`Sandbox::after_load`], once the library is mapped and initialised: a second seccomp filter refusing
//!    every `open` (`EACCES`), so that even a kernel without Landlock leaves the plugin no new file.
//!
//! The environment is emptied by the daemon when it starts the child (`env_clear`). Where the kernel lacks
//! Landlock or seccomp the child still starts; [`Sandbox::report`] says what is missing, and the daemon
//! logs it, shows it in `settled plugins`, or refuses the plugin when `[plugins] require_sandbox` is set.

use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use serde::{Deserialize, Serialize};

/// The Landlock ABI whose rights the child asks for: 6 (Linux 6.12) handles every filesystem right, TCP,
/// signals and abstract UNIX sockets. Asking for a vetted ABI, not "everything the crate knows", keeps
/// "fully enforced" meaning the same thing on every kernel.
const LANDLOCK_ABI: ABI = ABI::V6;

/// What the sandbox of one child enforces; sent to the daemon in the `READY` frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SandboxReport {
    /// The parts in force, e.g. `landlock`, `seccomp`.
    pub enforced: Vec<String>,
    /// The parts missing and why; empty when the whole sandbox is in force.
    pub missing: Vec<String>,
}

impl SandboxReport {
    /// Whether every part of the sandbox is in force.
    pub(crate) fn complete(&self) -> bool {
        self.missing.is_empty() && !self.enforced.is_empty()
    }

    /// One line for `settled plugins` and the logs.
    pub(crate) fn summary(&self) -> String {
        if self.complete() {
            format!("enforced: {}", self.enforced.join(", "))
        } else if self.enforced.is_empty() {
            format!("NOT ENFORCED: {}", self.missing.join("; "))
        } else {
            format!(
                "INCOMPLETE: {}; enforced: {}",
                self.missing.join("; "),
                self.enforced.join(", ")
            )
        }
    }
}

/// The child's sandbox while it is being built.
pub(crate) struct Sandbox {
    report: SandboxReport,
    seccomp_before: bool,
}

impl Sandbox {
    /// Step 1, before the plugin library is opened (see the module doc). Never fails: what cannot be
    /// enforced is recorded in the report.
    pub(crate) fn before_load(library: &Path) -> Sandbox {
        let mut report = SandboxReport::default();
        let names: Vec<String> = std::env::vars_os()
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        if names.is_empty() {
            report.enforced.push("empty environment".to_string());
        } else if names.iter().any(|n| n == "SETTLED_API_TOKEN") {
            report
                .missing
                .push("the environment holds SETTLED_API_TOKEN".to_string());
        } else {
            report.enforced.push(format!(
                "environment: only the connector's `env` ({})",
                names.join(", ")
            ));
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0 {
            report.enforced.push("no_new_privs".to_string());
        } else {
            report
                .missing
                .push(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
        match landlock(library) {
            Ok(what) => report.enforced.push(what),
            Err(why) => report.missing.push(format!("landlock: {why}")),
        }
        let seccomp_before = match first_filter() {
            Ok(()) => true,
            Err(why) => {
                report.missing.push(format!("seccomp: {why}"));
                false
            }
        };
        Sandbox {
            report,
            seccomp_before,
        }
    }

    /// Step 2, after the library is loaded and initialised: no file may be opened any more.
    pub(crate) fn after_load(mut self) -> SandboxReport {
        if self.seccomp_before {
            match install(open_filter()) {
                Ok(()) => self.report.enforced.push(
                    "seccomp (no sockets, processes, exec, file changes or signals to others; no open after load)"
                        .to_string(),
                ),
                Err(why) => self.report.missing.push(format!("seccomp open filter: {why}")),
            }
        }
        self.report
    }
}

fn landlock(library: &Path) -> Result<String, String> {
    let fs = AccessFs::from_all(LANDLOCK_ABI);
    let library_fd = PathFd::new(library).map_err(|e| e.to_string())?;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(fs)
        .and_then(|r| r.handle_access(AccessNet::from_all(LANDLOCK_ABI)))
        .and_then(|r| r.scope(Scope::from_all(LANDLOCK_ABI)))
        .and_then(|r| r.create())
        .and_then(|r| {
            r.add_rule(PathBeneath::new(
                library_fd,
                AccessFs::ReadFile | AccessFs::Execute,
            ))
        })
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(format!(
            "landlock (ABI {}: no file but the plugin library, no TCP, no signals or abstract sockets outside)",
            LANDLOCK_ABI as i32
        )),
        RulesetStatus::PartiallyEnforced => Err(format!(
            "only partly enforced (the kernel supports an ABI below {}; {:?})",
            LANDLOCK_ABI as i32, status.landlock
        )),
        RulesetStatus::NotEnforced => Err(format!(
            "not supported or not enabled by this kernel ({:?})",
            status.landlock
        )),
    }
}

fn arch() -> Result<seccompiler::TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| format!("not supported on {}", std::env::consts::ARCH))
}

fn install(filter: Result<BpfProgram, String>) -> Result<(), String> {
    let program = filter?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}

fn compile(
    rules: Vec<(i64, Vec<SeccompRule>)>,
    action: SeccompAction,
) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(
        rules.into_iter().collect(),
        SeccompAction::Allow,
        action,
        arch()?,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, String> {
    let condition = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| e.to_string())?;
    SeccompRule::new(vec![condition]).map_err(|e| e.to_string())
}

/// Installs the filters of step 1: refusals with `EPERM`, and `clone3` with `ENOSYS`.
fn first_filter() -> Result<(), String> {
    let pid = u64::from(std::process::id());
    let mut rules: Vec<(i64, Vec<SeccompRule>)> = refused_always()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    // Threads (`CLONE_THREAD`) yes, processes no.
    let clone_thread = u64::try_from(libc::CLONE_THREAD).map_err(|e| e.to_string())?;
    rules.push((
        libc::SYS_clone,
        vec![condition(0, SeccompCmpOp::MaskedEq(clone_thread), 0)?],
    ));
    // Signals to itself only (`kill(0)` and `kill(-1)` would reach the daemon).
    for nr in [
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
    ] {
        rules.push((nr, vec![condition(0, SeccompCmpOp::Ne, pid)?]));
    }
    // Typing into the terminal the daemon may have as stderr.
    let tty_ioctls = [libc::TIOCSTI, libc::TIOCLINUX]
        .into_iter()
        .map(|request| condition(1, SeccompCmpOp::Eq, request))
        .collect::<Result<Vec<_>, _>>()?;
    rules.push((libc::SYS_ioctl, tty_ioctls));
    install(compile(rules, SeccompAction::Errno(libc::EPERM as u32)))?;
    let clone3 = vec![(libc::SYS_clone3, Vec::new())];
    install(compile(clone3, SeccompAction::Errno(libc::ENOSYS as u32)))
}

/// The filter of step 2: every way of opening a file by name fails with `EACCES`.
fn open_filter() -> Result<BpfProgram, String> {
    let mut opens = vec![libc::SYS_openat, libc::SYS_openat2];
    #[cfg(target_arch = "x86_64")]
    opens.extend([libc::SYS_open, libc::SYS_creat]);
    compile(
        opens.into_iter().map(|nr| (nr, Vec::new())).collect(),
        SeccompAction::Errno(libc::EACCES as u32),
    )
}

/// System calls a plugin never needs, refused from before the library is loaded.
fn refused_always() -> Vec<i64> {
    let mut refused = vec![
        // Network.
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        // Other processes.
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_getfd,
        libc::SYS_pidfd_send_signal,
        libc::SYS_tkill,
        // Changes to files (Landlock refuses them too, where the kernel has it).
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_linkat,
        libc::SYS_symlinkat,
        libc::SYS_mkdirat,
        libc::SYS_mknodat,
        libc::SYS_truncate,
        libc::SYS_fchmodat,
        libc::SYS_fchmodat2,
        libc::SYS_fchownat,
        libc::SYS_utimensat,
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_removexattr,
        libc::SYS_lremovexattr,
        libc::SYS_name_to_handle_at,
        libc::SYS_open_by_handle_at,
        libc::SYS_inotify_add_watch,
        libc::SYS_fanotify_init,
        // The kernel's bigger interfaces.
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        // The system itself.
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
    ];
    #[cfg(target_arch = "x86_64")]
    refused.extend([
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_uselib,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_link,
        libc::SYS_symlink,
        libc::SYS_mkdir,
        libc::SYS_rmdir,
        libc::SYS_mknod,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_utime,
        libc::SYS_utimes,
        libc::SYS_futimesat,
        libc::SYS_inotify_init,
        libc::SYS_iopl,
        libc::SYS_ioperm,
    ]);
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_what_is_missing_first() {
        let full = SandboxReport {
            enforced: vec!["landlock".into(), "seccomp".into()],
            missing: vec![],
        };
        assert!(full.complete());
        assert_eq!(full.summary(), "enforced: landlock, seccomp");
        let partial = SandboxReport {
            enforced: vec!["seccomp".into()],
            missing: vec!["landlock: not supported".into()],
        };
        assert!(!partial.complete());
        assert_eq!(
            partial.summary(),
            "INCOMPLETE: landlock: not supported; enforced: seccomp"
        );
        let none = SandboxReport::default();
        assert!(!none.complete());
        assert_eq!(none.summary(), "NOT ENFORCED: ");
    }

    #[test]
    fn both_filters_compile_for_this_machine() {
        assert!(open_filter().is_ok_and(|p| !p.is_empty()));
        let rules = refused_always()
            .into_iter()
            .map(|nr| (nr, Vec::new()))
            .collect();
        assert!(compile(rules, SeccompAction::Errno(1)).is_ok());
    }
}
