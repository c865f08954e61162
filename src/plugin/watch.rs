//! Hot-loading: a file watcher on the folders of the live plugins' `.wasm` files. A change
//! (write, replace, rename into place) is debounced briefly, then each affected plugin is
//! reloaded off the request path ([`Plugins::reload`]): compiled on a blocking thread and
//! swapped in atomically, or rejected with its error while the old version keeps serving.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::plugin::registry::Plugins;

/// How long after a change more changes are collected before reloading (a file being
/// written produces several events).
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// A running watcher; dropping it stops watching.
pub struct WatchHandle {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    stop: CancellationToken,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

/// Starts watching the files of `plugins` (call [`WatchHandle::update`] after each config
/// change); reloads run on the current tokio runtime.
pub fn spawn_watch(plugins: Arc<Plugins>) -> Result<WatchHandle, notify::Error> {
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
            let settle = tokio::time::sleep(DEBOUNCE);
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
            for name in plugins.affected(&changed) {
                let plugins = Arc::clone(&plugins);
                // Errors are logged by `reload`; the old version keeps serving.
                let _ = tokio::task::spawn_blocking(move || plugins.reload(&name)).await;
            }
        }
    });
    Ok(WatchHandle {
        watcher,
        dirs: HashSet::new(),
        stop,
    })
}

impl WatchHandle {
    /// Watches the folders of `plugins`' files now, and no others.
    pub fn update(&mut self, plugins: &Plugins) {
        let wanted: HashSet<PathBuf> = plugins
            .files()
            .into_iter()
            .filter_map(|(_, p)| p.parent().map(|d| d.to_path_buf()))
            .collect();
        for gone in self.dirs.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch plugin folder; changed plugins load on SIGHUP only");
            }
        }
        self.dirs = wanted;
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
