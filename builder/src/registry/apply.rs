//! A pull's layers applied while they download: a thread applies each layer as soon as the one
//! below it is, reading its blob behind the download (`Arrival`, `Follow`) or from the image
//! store when it is already there (`apply_as_they_come`). The pull protocol is `pull.rs`.

use oci_spec::image::{Descriptor, Digest};

use crate::image::ImageStore;
use imgfs::Snapshotter;

/// A layer blob on its way into the store, as the applier sees it: the temporary file it is
/// written to and how much of it is there, then whether it was stored. The applier reads the
/// blob from that file as it grows (from the page cache, right behind the download) and sees
/// its end only once it is stored under its verified digest, so nothing it applies is
/// committed before the blob is.
#[derive(Default)]
pub(super) struct Arrival {
    state: std::sync::Mutex<ArrivalState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct ArrivalState {
    /// The file being written, once the download has started.
    file: Option<std::sync::Arc<std::fs::File>>,
    /// How many times the download started over in a new file (a reader of an older one fails).
    generation: u32,
    /// Bytes of `file` written through.
    written: u64,
    /// `Ok(size)` once the blob is stored, `Err` once its download failed.
    end: Option<Result<u64, String>>,
}

impl Arrival {
    fn update(&self, f: impl FnOnce(&mut ArrivalState)) {
        f(&mut self.state.lock().expect("poisoned"));
        self.changed.notify_all();
    }

    pub(super) fn restart(&self, file: Option<std::fs::File>) {
        self.update(|s| {
            s.file = file.map(std::sync::Arc::new);
            s.generation += 1;
            s.written = 0;
        });
    }

    pub(super) fn flushed(&self, written: u64) {
        let mut s = self.state.lock().expect("poisoned");
        if s.written != written {
            s.written = written;
            drop(s);
            self.changed.notify_all();
        }
    }

    /// Records how the download ended; the first end counts.
    pub(super) fn end(&self, end: Result<u64, String>) {
        self.update(|s| {
            if s.end.is_none() {
                if let Ok(size) = end {
                    s.written = size;
                }
                s.end = Some(end);
            }
        });
    }

    /// Waits for the download to end: the blob's size if it was stored.
    pub(super) fn wait(&self) -> Result<u64, String> {
        let mut s = self.state.lock().expect("poisoned");
        loop {
            if let Some(end) = &s.end {
                return end.clone();
            }
            s = self.changed.wait(s).expect("poisoned");
        }
    }

    /// A reader of the blob from its first byte, following the download.
    pub(super) fn follow(&self) -> Follow<'_> {
        Follow {
            arrival: self,
            generation: None,
            pos: 0,
        }
    }
}

/// Reads an `Arrival`'s file as it grows; ends where the stored blob ends, fails where the
/// download does (or starts over).
pub(super) struct Follow<'a> {
    arrival: &'a Arrival,
    /// The file generation this reader started on.
    generation: Option<u32>,
    pos: u64,
}

impl std::io::Read for Follow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut s = self.arrival.state.lock().expect("poisoned");
        loop {
            if let Some(Err(e)) = &s.end {
                return Err(std::io::Error::other(e.clone()));
            }
            if let Some(file) = &s.file {
                let generation = *self.generation.get_or_insert(s.generation);
                if generation != s.generation {
                    return Err(std::io::Error::other("the download started over"));
                }
                if self.pos < s.written {
                    let n = buf.len().min((s.written - self.pos) as usize);
                    let file = file.clone();
                    drop(s);
                    let n = std::os::unix::fs::FileExt::read_at(&*file, &mut buf[..n], self.pos)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.pos += n as u64;
                    return Ok(n);
                }
                if matches!(s.end, Some(Ok(_))) {
                    return Ok(0);
                }
            } else if s.end.is_some() {
                // Stored, but through a file this reader never had: the applier reads the
                // stored blob instead.
                return Err(std::io::Error::other("the download could not be followed"));
            }
            s = self.arrival.changed.wait(s).expect("poisoned");
        }
    }
}

/// What `apply_as_they_come` made.
pub(super) struct Applied {
    /// The snapshot of the whole image (`None` for an image without layers).
    pub(super) top: Option<String>,
    /// Snapshots this pull created, bottom first.
    pub(super) created: Vec<String>,
}

/// Applies `layers` bottom up, each as soon as the one below is applied: a layer being
/// downloaded is read as it arrives (`arrivals`), one already stored from the store. A layer
/// whose streamed apply fails (say, its download started over) is applied again from the store
/// once its download has ended. On an error the snapshots it created are removed again.
pub(super) fn apply_as_they_come(
    backend: &dyn Snapshotter,
    store: &ImageStore,
    layers: &[Descriptor],
    diff_ids: &[Digest],
    arrivals: &std::collections::HashMap<String, Arrival>,
) -> Result<Applied, String> {
    let mut applied = Applied {
        top: None,
        created: Vec::new(),
    };
    let chain = crate::image::chain_ids(diff_ids);
    for (i, layer) in layers.iter().enumerate() {
        let name = chain[i].to_string();
        let parent = (i > 0).then(|| chain[i - 1].to_string());
        let present = backend
            .stat(&name)
            .is_ok_and(|s| s.kind == imgfs::SnapshotKind::Committed);
        if !present {
            tracing::debug!(layer = %layer.digest(), "applying layer");
            let arrival = arrivals.get(layer.digest().as_ref());
            let want = &diff_ids[i];
            let parent = parent.as_deref();
            let result = match arrival {
                Some(arrival) => {
                    let streamed =
                        apply_layer(backend, &name, parent, &mut arrival.follow(), layer, want);
                    match (streamed, arrival.wait()) {
                        (Ok(()), _) => Ok(()),
                        (Err(e), Ok(_)) => {
                            tracing::debug!(layer = %layer.digest(), "applying the stored blob after a failed streamed apply: {e}");
                            apply_stored(backend, store, &name, parent, layer, want)
                        }
                        (Err(_), Err(download)) => Err(format!(
                            "layer {} was not downloaded: {download}",
                            layer.digest()
                        )),
                    }
                }
                None => apply_stored(backend, store, &name, parent, layer, want),
            };
            if let Err(e) = result {
                remove_created(Some(backend), &applied.created);
                return Err(e);
            }
            applied.created.push(name.clone());
            tracing::debug!(layer = %layer.digest(), "layer applied");
        }
        applied.top = Some(name);
    }
    Ok(applied)
}

/// `apply_layer` of a stored blob.
fn apply_stored(
    backend: &dyn Snapshotter,
    store: &ImageStore,
    name: &str,
    parent: Option<&str>,
    layer: &Descriptor,
    diff_id: &Digest,
) -> Result<(), String> {
    let mut blob = store
        .open_blob(layer.digest())
        .map_err(|e| format!("layer {}: {e}", layer.digest()))?;
    apply_layer(backend, name, parent, &mut blob, layer, diff_id)
}

/// Applies `layer`, read from `blob`, as the committed snapshot `name` on `parent`, and checks it
/// has the diff id the image config gives it; one that does not is removed again.
fn apply_layer(
    backend: &dyn Snapshotter,
    name: &str,
    parent: Option<&str>,
    blob: &mut dyn std::io::Read,
    layer: &Descriptor,
    diff_id: &Digest,
) -> Result<(), String> {
    let applied = backend
        .apply(name, parent, blob, &imgfs::layer::ImportLimits::default())
        .map_err(|e| format!("failed to apply layer {}: {e}", layer.digest()))?;
    if applied.diff_id != diff_id.as_ref() {
        let _ = backend.remove(name);
        return Err(format!(
            "layer {} has diff id {} but the image config says {diff_id}",
            layer.digest(),
            applied.diff_id
        ));
    }
    Ok(())
}

/// Removes snapshots a failed pull created, top first.
pub(super) fn remove_created(backend: Option<&dyn Snapshotter>, created: &[String]) {
    let Some(backend) = backend else {
        return;
    };
    for name in created.iter().rev() {
        if let Err(e) = backend.remove(name) {
            tracing::warn!(snapshot = %name, "failed to remove a snapshot of a failed pull: {e}");
        }
    }
}
