//! Check 7 for object packs: a file stored whole in an object pack finds every chunk at its own
//! offset there, and zeros where it has zero chunks.

use super::{Checker, Problem};
use crate::error::Result;
use crate::meta::key::{self, Base};
use crate::records::{ChunkRecord, Extent, PackRecord, SnapshotKind};

impl Checker<'_> {
    /// Check 7: an inode version that names an object pack sees its whole content there, each
    /// stored chunk at its own offset and zeros where the file has zero chunks, and the pack is
    /// exactly the file's size.
    pub(super) fn objects(&mut self) -> Result<()> {
        let cs = self.store.chunk_size() as u64;
        for (snap, ino, data, size, pack) in std::mem::take(&mut self.objects) {
            let mut bad = |reason: String| {
                self.found.push((
                    Problem::BadObject {
                        snapshot: self
                            .snapshots
                            .get(&snap)
                            .map_or_else(|| format!("#{snap}"), |r| r.name.clone()),
                        ino,
                        pack: pack.0,
                        reason,
                    },
                    None,
                ))
            };
            let rec = match self.meta.get(&key::pack(pack))? {
                Some(v) => PackRecord::decode(&v).ok(),
                None => None,
            };
            let Some(rec) = rec else {
                bad("the pack has no readable record".into());
                continue;
            };
            if !rec.object {
                bad("the pack is not an object pack".into());
                continue;
            }
            let committed = self
                .snapshots
                .get(&snap)
                .is_some_and(|r| r.kind == SnapshotKind::Committed);
            if committed && rec.synced_len != size {
                bad(format!(
                    "the pack is {} bytes, the file {size}",
                    rec.synced_len
                ));
                continue;
            }
            let (Some(data), Some(chain)) = (data, self.chains.get(&snap)) else {
                continue;
            };
            let Ok(file) = self.store.packs().open_file(pack) else {
                bad("the pack file cannot be opened".into());
                continue;
            };
            let mut wrong = None;
            let mut buf = vec![0u8; cs as usize];
            self.meta.visible_range(
                &key::data_prefix(data),
                &key::extent_base(data, 0),
                chain,
                |base, _, v| {
                    let Some(Base::Extent { index, .. }) = Base::parse(base) else {
                        wrong = Some(format!("extent key {} does not decode", hex::encode(base)));
                        return Ok(false);
                    };
                    let at = match Extent::decode(v)? {
                        // A zero chunk must be zeros (a hole) in the pack too.
                        Extent::Zero => {
                            let n = cs.min(size.saturating_sub(index * cs)) as usize;
                            let zero = std::os::unix::fs::FileExt::read_exact_at(
                                &file,
                                &mut buf[..n],
                                index * cs,
                            )
                            .is_ok_and(|()| buf[..n].iter().all(|&b| b == 0));
                            if !zero {
                                wrong = Some(format!("chunk {index} is zeros, the pack's is not"));
                            }
                            return Ok(zero);
                        }
                        Extent::Dirty { .. } => None,
                        Extent::Stored { digest, .. } => self
                            .meta
                            .get(&key::chunk(&digest))?
                            .and_then(|v| ChunkRecord::decode(&v).ok())
                            .map(|c| (c.pack, c.offset)),
                    };
                    if at != Some((pack, index * cs)) {
                        wrong = Some(format!("chunk {index} is elsewhere ({at:?})"));
                        return Ok(false);
                    }
                    Ok(true)
                },
            )?;
            if let Some(reason) = wrong {
                bad(reason);
            }
        }
        Ok(())
    }
}
