//! The runc executor: runs RUN steps in a bundle on a mounted snapshot.
