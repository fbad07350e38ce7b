//! The build context: files sent to the build, `.dockerignore` applied, COPY/ADD sources resolved, hashed and copied.
