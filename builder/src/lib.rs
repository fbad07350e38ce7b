//! img's library: the Dockerfile frontend, build graph, executor, image store and registry client.

pub mod build;
pub mod context;
pub mod dockerfile;
pub mod dockerignore;
pub mod doctor;
pub mod image;
pub mod interrupt;
pub mod leftovers;
pub mod limits;
pub mod registry;
pub mod runc;
pub mod state;
pub mod userns;

/// The version printed by `img version`, with the imgfs version it was built against.
pub fn version_string() -> String {
    format!(
        "img {} (imgfs {})",
        env!("CARGO_PKG_VERSION"),
        imgfs::VERSION
    )
}
