//! The build engine: stages, steps, the build cache.

pub mod cache;
