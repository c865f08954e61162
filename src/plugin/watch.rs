//! Hot-loading: a file watcher on the folders of the live plugins' `.wasm` files. A change
//! (write, replace, rename into place) is debounced briefly, then each affected plugin is
//! reloaded off the request path ([`Plugins::reload`]): compiled on a blocking thread and
//! swapped in atomically, or rejected with its error while the old version keeps serving.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::plugin::registry::Plugins;
use crate::watch::{FolderWatch, spawn_folder_watch};

/// How long after a change more changes are collected before reloading (a file being
/// written produces several events).
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// A running watcher; dropping it stops watching.
#[derive(Debug)]
pub struct WatchHandle(FolderWatch);

/// Starts watching the files of `plugins` (call [`WatchHandle::update`] after each config
/// change); reloads run on the current tokio runtime.
pub fn spawn_watch(plugins: Arc<Plugins>) -> Result<WatchHandle, notify::Error> {
    let watch = spawn_folder_watch(DEBOUNCE, move |changed: HashSet<PathBuf>| {
        let plugins = Arc::clone(&plugins);
        async move {
            for name in plugins.affected(&changed) {
                let plugins = Arc::clone(&plugins);
                // Errors are logged by `reload`; the old version keeps serving.
                let _ = tokio::task::spawn_blocking(move || plugins.reload(&name)).await;
            }
        }
    })?;
    Ok(WatchHandle(watch))
}

impl WatchHandle {
    /// Watches the folders of `plugins`' files now, and no others.
    pub fn update(&mut self, plugins: &Plugins) {
        let wanted: HashSet<PathBuf> = plugins
            .files()
            .into_iter()
            .filter_map(|(_, p)| p.parent().map(|d| d.to_path_buf()))
            .collect();
        self.0.watch_folders(wanted, "plugin");
    }
}
