//! Process limits wasp sets for itself at start, and the connection limit derived from them.
//!
//! **Open files.** Every client connection takes a descriptor, and so does each connection to
//! a server, so the common default soft limit of 1024 (a login shell's, systemd's for
//! services) stops a proxy at a few hundred concurrent clients, where accepts start failing
//! with "too many open files". HAProxy sizes its own limit from `maxconn` for the same reason.
//! wasp raises its soft limit to the hard one, which the administrator sets (`ulimit -Hn`,
//! systemd's `LimitNOFILE=`; systemd's default hard limit is 524288).

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The ceiling used when the hard limit is "unlimited", which Linux does not accept for open
/// files: its default `fs.nr_open`.
const UNLIMITED_OPEN_FILES: u64 = 1 << 20;

/// Below this many open files, a warning says the proxy will not take many connections.
pub const LOW_OPEN_FILES: u64 = 4096;

/// The open-file limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub now: u64,
}

/// Raises this process's soft limit on open files to its hard limit.
pub fn raise_open_files() -> io::Result<OpenFiles> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let before = current.unwrap_or(UNLIMITED_OPEN_FILES);
    let target = maximum.unwrap_or(UNLIMITED_OPEN_FILES);
    if target <= before {
        return Ok(OpenFiles {
            before,
            now: before,
        });
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum,
        },
    )?;
    Ok(OpenFiles {
        before,
        now: target,
    })
}

/// Descriptors kept aside for everything but client connections and their servers when
/// `maxconn` is derived from the open-file limit: listeners (one per worker each), the admin
/// listener, health checks, plugin and configuration files, the runtimes' own.
pub const RESERVED_FILES: u64 = 64;

/// The default `[global] maxconn` for an open-file limit of `open_files`: half of what is left
/// after [`RESERVED_FILES`], since a client connection and its connection to a server take a
/// descriptor each (HAProxy, without a `maxconn`, also derives one from the open-file limit
/// at two descriptors per connection).
pub fn default_maxconn(open_files: u64) -> usize {
    let half = open_files.saturating_sub(RESERVED_FILES) / 2;
    usize::try_from(half).unwrap_or(usize::MAX).max(1)
}

/// This process's soft limit on open files now.
pub fn open_files() -> u64 {
    getrlimit(Resource::Nofile)
        .current
        .unwrap_or(UNLIMITED_OPEN_FILES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxconn_defaults_to_half_the_files_left_after_the_reserve() {
        assert_eq!(default_maxconn(1024), 480);
        assert_eq!(default_maxconn(524_288), 262_112);
        assert_eq!(default_maxconn(64), 1, "never zero");
        assert_eq!(default_maxconn(0), 1);
    }
}
