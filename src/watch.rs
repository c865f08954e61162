//! Watching files for changes: a `notify` watcher on the folders of the files of interest.
//! Events (write, replace, rename into place, removal) are collected for a debounce period,
//! since one change to a file produces several, then handed to a callback as one set of
//! changed paths, on the tokio runtime that started the watcher. Used for plugin hot-loading
//! and certificate reload.

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

/// Starts a watcher that calls `on_change` with the paths changed in the watched folders, at
/// most once per `debounce`; one call finishes before the next starts. It watches nothing
/// until [`FolderWatch::watch_folders`] is called.
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
            let mut changed = HashSet::from([first]);
            let settle = tokio::time::sleep(debounce);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    _ = &mut settle => break,
                    p = rx.recv() => match p {
                        Some(p) => { changed.insert(p); }
                        None => break,
                    },
                }
            }
            on_change(changed).await;
        }
    });
    Ok(FolderWatch {
        watcher,
        dirs: HashSet::new(),
        stop,
    })
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
