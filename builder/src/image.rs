//! The image store: OCI blobs, manifests and configs under the state dir, names, archives, the state lock.
