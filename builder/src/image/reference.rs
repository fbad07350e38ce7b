//! Image references as Docker spells them: parsing, normalizing (`busybox` ->
//! `docker.io/library/busybox:latest`) and the familiar short form `img ls` prints.
//!
//! The grammar is oci-spec's `distribution::Reference` (its `distribution` feature adds no
//! dependency), which is a port of Docker's own regular expression and `splitDomain`. Writing our
//! own would have been a second copy of that regular expression to keep right; the registry
//! client speaks the same type. What oci-spec lacks is the familiar form and a type that is always
//! normalized, which this wrapper adds.

use std::fmt;
use std::str::FromStr;

use oci_spec::distribution;
use oci_spec::image::Digest;

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {source}")]
pub struct ReferenceError {
    input: String,
    #[source]
    source: distribution::ParseError,
}

/// A normalized image reference: registry, repository, and a tag and/or a digest. A reference
/// written without either gets the tag `latest`, as in Docker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalizes `s` the way `docker pull` does.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let parsed = distribution::Reference::from_str(s).map_err(|source| ReferenceError {
            input: s.to_string(),
            source,
        })?;
        Ok(Self {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
            digest: parsed.digest().map(str::to_string),
        })
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<Digest> {
        self.digest
            .as_deref()
            .and_then(|d| Digest::from_str(d).ok())
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Self {
        Self {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// `registry/repository` without tag or digest: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The repository as Docker shows it: `busybox`, `user/app`, `localhost:5000/a/b`.
    pub fn familiar_name(&self) -> String {
        if self.registry == "docker.io" {
            match self.repository.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            self.name()
        }
    }

    /// The whole reference as Docker shows it: `busybox:latest`, `localhost:5000/a/b:t`.
    pub fn familiar(&self) -> String {
        self.with_suffix(self.familiar_name())
    }

    fn with_suffix(&self, mut s: String) -> String {
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(digest);
        }
        s
    }
}

/// The normalized form: `docker.io/library/busybox:latest`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_suffix(self.name()))
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
