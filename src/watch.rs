//! Watching files for changes: a `notify` watcher on the folders of the files of interest.
//! Events (write, replace, rename into place, removal) are collected until none has come for a
//! debounce period (at most [`MAX_WAIT_DEBOUNCES`] periods), since one change to a file
//! produces several and a slow write many, then handed to a callback as one set of changed
//! paths, on the tokio runtime that started the watcher. Used for plugin hot-loading and
//! certificate reload.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A running folder watcher; dropping it stops watching.
pub struct FolderWatch {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    stop: CancellationToken,
}

impl std::fmt::Debug for FolderWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderWatch")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

/// The longest a set of changes is collected, in debounce periods: a file written without a
/// pause for that long is handed over unfinished (and a plugin or certificate rejected, the old
/// one kept, until the write ends).
pub const MAX_WAIT_DEBOUNCES: u32 = 20;

/// Starts a watcher that calls `on_change` with the paths changed in the watched folders, once
/// no change has come for `debounce`; one call finishes before the next starts. It watches
/// nothing until [`FolderWatch::watch_folders`] is called.
pub fn spawn_folder_watch<F, Fut>(
    debounce: Duration,
    on_change: F,
) -> Result<FolderWatch, notify::Error>
where
    F: Fn(HashSet<PathBuf>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                _ = token.cancelled() => return,
                p = rx.recv() => p,
            };
            let Some(first) = first else { return };
            let changed = collect(first, &mut rx, debounce).await;
            on_change(changed).await;
        }
    });
    Ok(FolderWatch {
        watcher,
        dirs: HashSet::new(),
        stop,
    })
}

/// The paths changed from `first` on, until none has come for `debounce` (each change waits
/// for the writes after it) or [`MAX_WAIT_DEBOUNCES`] periods have passed.
async fn collect(
    first: PathBuf,
    rx: &mut mpsc::UnboundedReceiver<PathBuf>,
    debounce: Duration,
) -> HashSet<PathBuf> {
    let mut changed = HashSet::from([first]);
    let start = tokio::time::Instant::now();
    let cap = start + debounce * MAX_WAIT_DEBOUNCES;
    let settle = tokio::time::sleep(debounce);
    tokio::pin!(settle);
    loop {
        tokio::select! {
            () = &mut settle => return changed,
            p = rx.recv() => match p {
                Some(p) => {
                    changed.insert(p);
                    let next = (tokio::time::Instant::now() + debounce).min(cap);
                    settle.as_mut().reset(next);
                }
                None => return changed,
            },
        }
    }
}

impl FolderWatch {
    /// Watches exactly `wanted` from now on; `what` names the files in the warning logged when
    /// a folder cannot be watched (they then load on SIGHUP only).
    pub fn watch_folders(&mut self, wanted: HashSet<PathBuf>, what: &str) {
        for gone in self.dirs.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch {what} folder; changed files load on SIGHUP only");
            }
        }
        self.dirs = wanted;
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn changes_are_collected_until_a_quiet_debounce() {
        let debounce = Duration::from_millis(50);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        // A slow write: a change every 30 ms for 300 ms, then nothing.
        tokio::spawn(async move {
            for i in 1..=10 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = tx.send(PathBuf::from(format!("f{}", i % 2)));
            }
            std::future::pending::<()>().await;
        });
        let changed = collect(PathBuf::from("f0"), &mut rx, debounce).await;
        assert_eq!(changed, HashSet::from(["f0".into(), "f1".into()]));
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(350),
            "the last change + debounce"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_never_stops_changing_is_handed_over_at_the_cap() {
        let debounce = Duration::from_millis(50);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if tx.send(PathBuf::from("f")).is_err() {
                    return;
                }
            }
        });
        let changed = collect(PathBuf::from("f"), &mut rx, debounce).await;
        assert_eq!(changed.len(), 1);
        assert_eq!(start.elapsed(), debounce * MAX_WAIT_DEBOUNCES);
    }
}
