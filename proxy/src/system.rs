//! Process limits: the open file limit and how many descriptors are in use.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
///
/// Each proxied connection uses two descriptors (and a splice direction briefly two
/// more), while launchd starts agents with a soft limit of 256.
///
/// # Errors
/// The `setrlimit` error, when the kernel rejects the new limit.
pub fn raise_fd_limit() -> std::io::Result<Option<u64>> {
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        // NOTE: an unlimited hard limit is rejected by Linux for RLIMIT_NOFILE, and
        // macOS caps it at kern.maxfilesperproc; 1 << 20 is the Linux default nr_open.
        let raised = Rlimit {
            current: Some(1 << 20),
            maximum: None,
        };
        return match setrlimit(Resource::Nofile, raised) {
            Ok(()) => Ok(Some(1 << 20)),
            Err(_) => Ok(limit.current),
        };
    };
    if limit.current == Some(hard) {
        return Ok(Some(hard));
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    setrlimit(Resource::Nofile, raised)?;
    Ok(Some(hard))
}

/// Returns the soft limit on open files, or `None` when it is unlimited.
pub fn fd_soft_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Returns how many file descriptors this process has open, or `None` when the
/// platform does not list them.
pub fn open_fds() -> Option<usize> {
    let dir = if cfg!(target_os = "linux") {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    // The listing itself uses one descriptor while it runs.
    std::fs::read_dir(dir)
        .ok()
        .map(|entries| entries.count().saturating_sub(1))
}
