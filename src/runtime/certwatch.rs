//! Certificate hot reload: a file watcher on the folders of the live TLS listeners' certificate
//! and key files. Changes are collected for [`DEBOUNCE`] (a renewal writes several files), then
//! every listener that uses a changed file re-reads its certificates on a blocking thread, off
//! the request path. New handshakes get the new certificates; established connections keep
//! their sessions. A file that does not load (half written, a key that does not match) leaves
//! that listener's certificates as they were, with an error logged; the next change retries.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;
use crate::snapshot::Snapshot;
use crate::tls::TlsListener;

/// How long after a change more changes are collected before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// A running certificate watcher; dropping it stops watching.
pub struct CertWatch {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    stop: CancellationToken,
}

impl std::fmt::Debug for CertWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertWatch")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

/// Starts the watcher; reloads run on the current tokio runtime against the snapshot live at
/// the time of the change. Call [`CertWatch::update`] with each snapshot installed.
pub fn spawn_cert_watch(proxy: Arc<Proxy>) -> Result<CertWatch, notify::Error> {
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
            let snapshot = proxy.snapshot();
            let affected: Vec<Arc<TlsListener>> = snapshot
                .tls_listeners()
                .filter(|l| files(l).any(|f| changed.contains(&f)))
                .cloned()
                .collect();
            drop(snapshot);
            for listener in affected {
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
    });
    Ok(CertWatch {
        watcher,
        dirs: HashSet::new(),
        stop,
    })
}

impl CertWatch {
    /// Watches the folders of `snapshot`'s certificate files now, and no others.
    pub fn update(&mut self, snapshot: &Snapshot) {
        let wanted: HashSet<PathBuf> = snapshot
            .tls_listeners()
            .flat_map(|l| files(l).collect::<Vec<_>>())
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.dirs.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch certificate folder; changed certificates load on SIGHUP only");
            }
        }
        self.dirs = wanted;
    }
}

impl Drop for CertWatch {
    fn drop(&mut self) {
        self.stop.cancel();
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

fn names(listener: &TlsListener) -> String {
    listener
        .settings
        .certs
        .iter()
        .map(|c| c.cert.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
