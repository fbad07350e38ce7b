//! Image references as Docker spells them: parsing, normalizing (`busybox` ->
//! `docker.io/library/busybox:latest`) and the familiar short form `img ls` prints.
//!
//! The grammar is Docker's (distribution/reference `regexp.go` and `normalize.go`), parsed by
//! hand. oci-spec's `distribution::Reference` implements it with one large regular expression
//! whose Unicode `\w` took ~55 ms to compile at every start of img (most of an `img inspect`,
//! and a tenth of a pull), and which accepts non-ASCII tags that Docker refuses.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Digest;

/// Docker's limit on the length of a name (registry and repository, as written).
const NAME_MAX: usize = 255;
/// Docker's limit on the length of a tag.
const TAG_MAX: usize = 128;

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    input: String,
    reason: &'static str,
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
        parse(s).map_err(|reason| ReferenceError {
            input: s.to_string(),
            reason,
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

/// `[domain/]path[:tag][@digest]`, normalized; the error is the reason, in Docker's words.
fn parse(s: &str) -> Result<Reference, &'static str> {
    if s.is_empty() {
        return Err("repository name must have at least one component");
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(check_digest(digest)?)),
        None => (s, None),
    };
    // A colon after the last slash starts the tag; one before it belongs to a registry's port.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(check_tag(tag)?)),
        _ => (rest, None),
    };
    if name.len() > NAME_MAX {
        return Err("repository name must not be more than 255 characters");
    }
    // Docker's splitDockerDomain: the first component is a registry when it has a dot or a
    // port, is `localhost`, or has capitals (which a repository may not).
    let (registry, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            check_domain(first)?;
            (first, path)
        }
        _ => ("docker.io", name),
    };
    check_path(path)?;
    let registry = match registry {
        "index.docker.io" => "docker.io",
        r => r,
    };
    let repository = if registry == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    let tag = match (tag, &digest) {
        (None, None) => Some("latest".to_string()),
        (tag, _) => tag.map(str::to_string),
    };
    Ok(Reference {
        registry: registry.to_string(),
        repository,
        tag,
        digest: digest.map(str::to_string),
    })
}

/// `host[.host...][:port]`, each label alphanumeric with inner dashes.
fn check_domain(domain: &str) -> Result<(), &'static str> {
    const BAD: &str = "invalid registry host";
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if !host.split('.').all(label_ok) {
        return Err(BAD);
    }
    match port {
        Some(p) if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) => Err(BAD),
        _ => Ok(()),
    }
}

/// Slash-separated components of lowercase letters and digits, joined inside by `.`, `_`,
/// `__` or any number of dashes.
fn check_path(path: &str) -> Result<(), &'static str> {
    for component in path.split('/') {
        let b = component.as_bytes();
        if b.iter().any(u8::is_ascii_uppercase) {
            return Err("repository name must be lowercase");
        }
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let (Some(first), Some(last)) = (b.first(), b.last()) else {
            return Err("invalid reference format");
        };
        if !alnum(first) || !alnum(last) {
            return Err("invalid reference format");
        }
        // Between alphanumeric runs: one `.`, one or two `_`, or dashes only.
        let mut i = 0;
        while i < b.len() {
            if alnum(&b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(&b[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err("invalid reference format");
            }
        }
    }
    Ok(())
}

/// A word character, then up to 127 word characters, dots and dashes (ASCII, as in Go).
fn check_tag(tag: &str) -> Result<&str, &'static str> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = tag.as_bytes();
    let ok = b.len() <= TAG_MAX
        && b.first().is_some_and(|&c| word(c))
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-');
    if ok {
        Ok(tag)
    } else {
        Err("invalid tag format")
    }
}

/// `algorithm:hex`, with the hex as long as the algorithm's output.
fn check_digest(digest: &str) -> Result<&str, &'static str> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("invalid checksum digest format");
    };
    if algorithm.is_empty() || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err("invalid checksum digest format");
    }
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() == len {
        Ok(digest)
    } else {
        Err("invalid checksum digest length")
    }
}
