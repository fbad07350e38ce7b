//! `.dockerignore` patterns with the semantics of Docker's pattern matcher.
//!
//! This is a port of moby/patternmatcher (`New`, `Pattern.compile`, `Pattern.match`,
//! `MatchesOrParentMatches`, `MatchesUsingParentResults`) and of the `.dockerignore` reader
//! (`ReadAll` in moby/buildkit's frontend/dockerui), including their fast paths, because those
//! fast paths decide some results (`**foo` matches `afoo` through the suffix path).
//!
//! One deliberate departure: Go's patternmatcher copies the inside of a `[...]` class verbatim
//! into a Go regexp, so a `*` inside a class turns into `[^/]*` and the class falls apart. Here a
//! class means what Go's `filepath.Match` says it means (the same for every sane pattern), because
//! Rust's regex class syntax differs from Go's and a verbatim copy would not reproduce Go's bug.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use regex::Regex;

/// Why a pattern list could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("syntax error in pattern {pattern:?}")]
    BadPattern { pattern: String },
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    #[error("cannot read {path}: {source}", path = path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// How a compiled pattern is matched: the same four cases as patternmatcher's `matchType`.
#[derive(Debug, Clone)]
enum Kind {
    /// No wildcard: the path must equal the pattern.
    Exact,
    /// The pattern ended in `**` and had no other wildcard: the path must start with the rest.
    Prefix,
    /// The pattern started with `**` and had no other wildcard.
    Suffix,
    Regexp(Regex),
}

/// One line of a `.dockerignore`, cleaned and compiled.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The cleaned pattern without its leading `!`.
    text: String,
    exclusion: bool,
    kind: Kind,
}

impl Pattern {
    fn compile(text: &str, exclusion: bool) -> Result<Pattern, PatternError> {
        let bad = || PatternError::BadPattern {
            pattern: text.to_string(),
        };
        // Go's New calls filepath.Match(p, ".") only for its error; check_syntax is that check.
        check_syntax(text).map_err(|()| bad())?;

        let chars: Vec<char> = text.chars().collect();
        let mut re = String::from("^");
        let mut kind = KindTag::Exact;
        let mut i = 0;
        let mut first = true;
        while i < chars.len() {
            let ch = chars[i];
            i += 1;
            match ch {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    // `**/` is treated as `**`: the slash is eaten.
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i == chars.len() {
                        // `**` at the end accepts everything, as in .gitignore.
                        if matches!(kind, KindTag::Exact) {
                            kind = KindTag::Prefix;
                        } else {
                            re.push_str(".*");
                            kind = KindTag::Regexp;
                        }
                    } else {
                        // Any number of directories, even none.
                        re.push_str("(.*/)?");
                        kind = KindTag::Regexp;
                    }
                    if first {
                        kind = KindTag::Suffix;
                    }
                }
                '*' => {
                    re.push_str("[^/]*");
                    kind = KindTag::Regexp;
                }
                '?' => {
                    re.push_str("[^/]");
                    kind = KindTag::Regexp;
                }
                '\\' => {
                    // check_syntax rejected a trailing backslash, so a char follows.
                    let next = chars[i];
                    i += 1;
                    re.push_str(&regex::escape(&next.to_string()));
                    kind = KindTag::Regexp;
                }
                '[' => {
                    let (class, used) = class_to_regex(&chars[i..]).ok_or_else(bad)?;
                    i += used;
                    re.push_str(&class);
                    kind = KindTag::Regexp;
                }
                c => re.push_str(&regex::escape(&c.to_string())),
            }
            first = false;
        }
        re.push('$');
        let kind = match kind {
            KindTag::Exact => Kind::Exact,
            KindTag::Prefix => Kind::Prefix,
            KindTag::Suffix => Kind::Suffix,
            KindTag::Regexp => Kind::Regexp(Regex::new(&re).map_err(|_| bad())?),
        };
        Ok(Pattern {
            text: text.to_string(),
            exclusion,
            kind,
        })
    }

    /// Whether this pattern (ignoring `!`) matches exactly this slash-separated relative path.
    fn matches_path(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix => path.starts_with(&self.text[..self.text.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.text[2..];
                path.ends_with(suffix) || (suffix.starts_with('/') && path == &suffix[1..])
            }
            Kind::Regexp(re) => re.is_match(path),
        }
    }

    /// Whether the pattern matches the path or one of its parent directories.
    fn matches_or_parent(&self, path: &str) -> bool {
        if self.matches_path(path) {
            return true;
        }
        path.match_indices('/')
            .any(|(at, _)| self.matches_path(&path[..at]))
    }

    /// The cleaned pattern text, without the leading `!`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is a `!` exception that re-includes what it matches.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }
}

#[derive(Clone, Copy)]
enum KindTag {
    Exact,
    Prefix,
    Suffix,
    Regexp,
}

/// Translates the body of a `[...]` class (after the `[`) as Go's filepath.Match reads it into a
/// regex class; returns it and how many chars it used, or None when the class is malformed.
fn class_to_regex(chars: &[char]) -> Option<(String, usize)> {
    let mut i = 0;
    let mut out = String::from("[");
    if chars.first() == Some(&'^') {
        out.push('^');
        i += 1;
    }
    let mut ranges = 0;
    loop {
        if chars.get(i) == Some(&']') && ranges > 0 {
            i += 1;
            break;
        }
        let (lo, used) = class_char(&chars[i..])?;
        i += used;
        out.push_str(&class_escape(lo));
        if chars.get(i) == Some(&'-') {
            let (hi, used) = class_char(&chars[i + 1..])?;
            i += 1 + used;
            // Go accepts a reversed range, which matches nothing; regex would reject it.
            if lo <= hi {
                out.push('-');
                out.push_str(&class_escape(hi));
            } else {
                out.truncate(out.len() - class_escape(lo).len());
            }
        }
        ranges += 1;
    }
    if out == "[" || out == "[^" {
        // Every range was empty: `[z-a]` matches nothing, `[^z-a]` any one char.
        return Some((
            if out == "[" {
                "[a&&b]".to_string()
            } else {
                r"(?s:.)".to_string()
            },
            i,
        ));
    }
    out.push(']');
    Some((out, i))
}

/// One char of a class with Go's getEsc rules: `-` and `]` must be escaped, `\` escapes, and the
/// class must go on after it.
fn class_char(chars: &[char]) -> Option<(char, usize)> {
    let (c, used) = match chars.first()? {
        '-' | ']' => return None,
        '\\' => (*chars.get(1)?, 2),
        c => (*c, 1),
    };
    if chars.len() == used {
        return None;
    }
    Some((c, used))
}

fn class_escape(c: char) -> String {
    // Inside a Rust class `[`, `&`, `-`, `~` and `^` can be operators; escape everything that is
    // not alphanumeric to stay literal.
    if c.is_alphanumeric() {
        c.to_string()
    } else {
        format!("\\x{{{:x}}}", c as u32)
    }
}

/// Compiles one path component of Go `filepath.Match` syntax (`*`, `?`, `[...]`, `\` escapes)
/// to an anchored regex, or None when the pattern is malformed; used for COPY wildcards.
pub(crate) fn glob_regex(pattern: &str) -> Option<Regex> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("(?s)^");
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '\\' => {
                let next = chars.get(i)?;
                i += 1;
                re.push_str(&regex::escape(&next.to_string()));
            }
            '[' => {
                let (class, used) = class_to_regex(&chars[i..])?;
                i += used;
                re.push_str(&class);
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).ok()
}

/// Go's filepath.Match syntax check: classes well formed and no trailing backslash.
fn check_syntax(text: &str) -> Result<(), ()> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 == chars.len() {
                    return Err(());
                }
                i += 2;
            }
            '[' => {
                let (_, used) = class_to_regex(&chars[i + 1..]).ok_or(())?;
                i += 1 + used;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Go's `filepath.Clean` for slash-separated paths: collapses `//`, drops `.`, resolves `..`
/// lexically and returns `.` for an empty result.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Per-pattern results for a directory, handed to its children so they need not re-check their
/// parents (patternmatcher's `MatchInfo`).
#[derive(Debug, Clone, Default)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of `.dockerignore` patterns; the last pattern that matches a path (or one of
/// its parents) decides whether the path is excluded.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl Matcher {
    /// A matcher that excludes nothing.
    pub fn new_empty() -> Matcher {
        Matcher::default()
    }

    /// Builds a matcher from patterns as patternmatcher's `New` does: trimmed, empty ones
    /// skipped, cleaned, `!` marking an exception.
    pub fn new<I, S>(patterns: I) -> Result<Matcher, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut m = Matcher::default();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let p = clean(p);
            let (text, exclusion) = match p.strip_prefix('!') {
                Some("") => return Err(PatternError::IllegalExclusion),
                Some(rest) => (rest, true),
                None => (p.as_str(), false),
            };
            m.exclusions |= exclusion;
            m.patterns.push(Pattern::compile(text, exclusion)?);
        }
        Ok(m)
    }

    /// Parses the text of a `.dockerignore` file (buildkit's `ReadAll`, then `New`).
    pub fn parse(text: &str) -> Result<Matcher, PatternError> {
        Matcher::new(read_all(text))
    }

    /// Reads the ignore file Docker would use for this Dockerfile: `<Dockerfile>.dockerignore`
    /// next to the Dockerfile wins over `.dockerignore` at the context root; neither means an
    /// empty matcher.
    pub fn for_dockerfile(context_dir: &Path, dockerfile: &Path) -> Result<Matcher, PatternError> {
        let mut specific = dockerfile.as_os_str().to_owned();
        specific.push(".dockerignore");
        for path in [PathBuf::from(specific), context_dir.join(".dockerignore")] {
            match fs::read(&path) {
                Ok(bytes) => return Matcher::parse(&String::from_utf8_lossy(&bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(PatternError::Read { path, source }),
            }
        }
        Ok(Matcher::new_empty())
    }

    /// The compiled patterns, in file order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether a context-relative path is excluded (patternmatcher's `MatchesOrParentMatches`).
    /// A leading `/` or `./` is ignored.
    pub fn matches(&self, rel_path: &str) -> bool {
        let path = normalize(rel_path);
        let mut matched = false;
        for p in &self.patterns {
            // A pattern that cannot change the answer is skipped, as patternmatcher does.
            if p.exclusion != matched {
                continue;
            }
            if p.matches_or_parent(&path) {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// `matches` for a walk: `parent` is the info returned for the parent directory (or the
    /// default for a top-level entry), so parents are not matched again
    /// (patternmatcher's `MatchesUsingParentResults`).
    pub fn matches_with_parent(&self, rel_path: &str, parent: &MatchInfo) -> (bool, MatchInfo) {
        let path = normalize(rel_path);
        let known = parent.parent_matched.len() == self.patterns.len();
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        let mut matched = false;
        for (i, p) in self.patterns.iter().enumerate() {
            let mut hit = known && parent.parent_matched[i];
            if !hit {
                if p.exclusion != matched {
                    continue;
                }
                hit = if known {
                    p.matches_path(&path)
                } else {
                    p.matches_or_parent(&path)
                };
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !p.exclusion;
            }
        }
        (matched, info)
    }

    /// Whether an excluded directory can be skipped whole in a walk: only when no exception
    /// pattern could re-include something below it. This is buildkit's fsutil rule: as soon as
    /// one exception still has a wildcard once a trailing `/**` and then `/*` are stripped, no
    /// directory is skipped; otherwise a directory is kept when an exception starts with it.
    pub fn can_skip_dir(&self, rel_dir: &str) -> bool {
        let exceptions = || self.patterns.iter().filter(|p| p.exclusion);
        let wildcard_exception = exceptions().any(|p| {
            let t = p.text.strip_suffix("/**").unwrap_or(&p.text);
            let t = t.strip_suffix("/*").unwrap_or(t);
            t.contains(['*', '[', ']', '?', '^', '\\'])
        });
        if wildcard_exception {
            return false;
        }
        let dir_slash = format!("{}/", normalize(rel_dir));
        !exceptions().any(|p| format!("{}/", p.text).starts_with(&dir_slash))
    }
}

fn normalize(rel_path: &str) -> String {
    let c = clean(rel_path);
    match c.strip_prefix('/') {
        Some("") => ".".to_string(),
        Some(rest) => rest.to_string(),
        None => c,
    }
}

/// buildkit's `ReadAll`: the patterns of a `.dockerignore` text. A UTF-8 BOM is dropped, lines
/// starting with `#` (before trimming) are comments, and each pattern is trimmed, cleaned and
/// made relative (a leading `/` is dropped), keeping its `!`.
pub fn read_all(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(cleaned);
    }
    out
}

#[cfg(test)]
mod tests;
