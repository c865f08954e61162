//! Certificate hot reload: a file watcher on the folders of the live TLS listeners' certificate
//! and key files. Changes are collected for [`DEBOUNCE`] (a renewal writes several files), then
//! every listener that uses a changed file re-reads its certificates on a blocking thread, off
//! the request path. New handshakes get the new certificates; established connections keep
//! their sessions. A file that does not load (half written, a key that does not match) leaves
//! that listener's certificates as they were, with an error logged; the next change retries.
//!
//! A file counts as changed when a change touches it or a symlink on its way: Kubernetes
//! mounts a Secret as `tls.crt -> ..data/tls.crt` with `..data -> ..2026_11_27...`, and updates
//! it by renaming a new `..data` link over the old one, so the only event in the folder names
//! `..data`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::proxy::Proxy;
use crate::snapshot::Snapshot;
use crate::tls::TlsListener;
use crate::watch::{FolderWatch, spawn_folder_watch};

/// How long after a change more changes are collected before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// A running certificate watcher; dropping it stops watching.
#[derive(Debug)]
pub struct CertWatch(FolderWatch);

/// Starts the watcher; reloads run on the current tokio runtime against the snapshot live at
/// the time of the change. Call [`CertWatch::update`] with each snapshot installed.
pub fn spawn_cert_watch(proxy: Arc<Proxy>) -> Result<CertWatch, notify::Error> {
    let watch = spawn_folder_watch(DEBOUNCE, move |changed: HashSet<PathBuf>| {
        let snapshot = proxy.snapshot();
        let affected: Vec<Arc<TlsListener>> = snapshot
            .tls_listeners()
            .filter(|l| files(l).any(|f| on_the_way(&f).any(|p| changed.contains(&p))))
            .cloned()
            .collect();
        drop(snapshot);
        reload(affected)
    })?;
    Ok(CertWatch(watch))
}

/// Re-reads the certificates of `listeners`, one at a time on a blocking thread.
async fn reload(listeners: Vec<Arc<TlsListener>>) {
    for listener in listeners {
        let reloaded = tokio::task::spawn_blocking(move || {
            let result = listener.reload_certs();
            (listener, result)
        })
        .await;
        match reloaded {
            Ok((l, Ok(()))) => {
                tracing::info!(certs = %names(&l), "certificates reloaded");
            }
            Ok((l, Err(e))) => {
                tracing::error!(certs = %names(&l), error = %e, "certificate reload failed; the current certificates stay in use");
            }
            Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
        }
    }
}

impl CertWatch {
    /// Watches the folders of `snapshot`'s certificate files now, and no others.
    pub fn update(&mut self, snapshot: &Snapshot) {
        let wanted: HashSet<PathBuf> = snapshot
            .tls_listeners()
            .flat_map(|l| files(l).collect::<Vec<_>>())
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        self.0.watch_folders(wanted, "certificate");
    }
}

/// The absolute paths of a listener's certificate and key files (events carry absolute paths).
fn files(listener: &TlsListener) -> impl Iterator<Item = PathBuf> + '_ {
    listener
        .settings
        .certs
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
}

/// `file` and the paths its symlinks lead through, in its folder: for `d/tls.crt ->
/// ..data/tls.crt`, also `d/..data/tls.crt` and `d/..data`. At most 8 links are followed.
fn on_the_way(file: &Path) -> impl Iterator<Item = PathBuf> {
    let mut paths = vec![file.to_path_buf()];
    let mut current = file.to_path_buf();
    for _ in 0..8 {
        let (Ok(target), Some(folder)) = (std::fs::read_link(&current), current.parent()) else {
            break;
        };
        let folder = folder.to_path_buf();
        let next = lexically_normal(&folder.join(target));
        // The link's target and the folders between it and this folder (`..data`).
        let mut step = next.as_path();
        while step != folder && step.starts_with(&folder) {
            paths.push(step.to_path_buf());
            match step.parent() {
                Some(p) => step = p,
                None => break,
            }
        }
        current = next;
    }
    paths.into_iter()
}

/// `path` with `.` and `..` components resolved by their names alone.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn names(listener: &TlsListener) -> String {
    listener
        .settings
        .certs
        .iter()
        .map(|c| c.cert.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
