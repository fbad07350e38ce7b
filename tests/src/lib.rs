//! Support code for img's cross-crate integration tests (the `it` test binary) and benchmarks:
//! tree manifests, layer tars (well-formed and hostile), GNU tar as a reference, cached
//! root file system fixtures, and images made and read with umoci, skopeo and buildah. Nothing here depends on img's own crates, so it can check them.

pub mod fixtures;
pub mod gnutar;
pub mod images;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod registry;

pub use layer::LayerBuilder;
pub use manifest::{Manifest, assert_same};

/// True if the test can run: it runs as root and every program in `programs` is on PATH (and
/// /dev/fuse exists when `fuse`). Otherwise it prints why and returns false, except with CI=true,
/// where it panics: CI must run every test.
pub fn can_run(fuse: bool, programs: &[&str]) -> bool {
    let on_path = |p: &str| {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
            .unwrap_or(false)
    };
    let missing = if !nix::unistd::Uid::effective().is_root() {
        Some("not root".to_owned())
    } else if fuse && !std::path::Path::new("/dev/fuse").exists() {
        Some("no /dev/fuse".to_owned())
    } else {
        programs
            .iter()
            .find(|p| !on_path(p))
            .map(|p| format!("{p} is not installed"))
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must run this test: {why}")
        }
        Some(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}
