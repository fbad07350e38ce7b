//! Architecture invariants checked by a test instead of by review (after rust-analyzer's
//! `xtask/src/tidy.rs`): which module may name rocksdb, memmap2, fuser and the network crates,
//! which files may start processes, that every source file opens with a `//!` line, and that
//! none is over 1,000 lines.
//!
//! The rules are data at the top of this file. Paths are relative to the workspace root and
//! match as module prefixes: `imgfs/src/meta` is `meta.rs` and everything under `meta/`, so a
//! module that grows into a directory keeps its rule; a path ending in `.rs` is that file alone.
//! Only code is searched: comments, string and character literals are blanked first.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// A crate (or path) that only some modules may name, because ARCHITECTURE.md gives it to them.
struct Rule {
    /// What the failure message calls the thing.
    name: &'static str,
    /// Words or paths that count as using it, matched at word boundaries in code.
    patterns: &'static [&'static str],
    /// Where it may be used (module prefixes, see the top of the file).
    allowed: &'static [&'static str],
    /// Whether test code (see `is_test_code`) and `bench/` are exempt.
    tests_exempt: bool,
    /// The invariant, for the failure message.
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        name: "rocksdb",
        patterns: &["rocksdb"],
        allowed: &["imgfs/src/meta"],
        tests_exempt: false,
        why: "only imgfs's metadata module imports rocksdb",
    },
    Rule {
        name: "memmap2",
        patterns: &["memmap2"],
        allowed: &["imgfs/src/chunks"],
        tests_exempt: false,
        why: "only the chunk store maps memory",
    },
    Rule {
        name: "fuser",
        patterns: &["fuser"],
        allowed: &["imgfs/src/fuse", "imgfs/src/bin/imgfs/mount.rs"],
        tests_exempt: false,
        why: "only the FUSE adapter (and the mount process that drives its session) imports fuser",
    },
    Rule {
        name: "the network",
        patterns: &[
            "reqwest",
            "oci_client",
            "rustls",
            "hyper",
            "tokio::net",
            "std::net::TcpStream",
            "TcpStream",
            "TcpListener",
            "UdpSocket",
            "ToSocketAddrs",
        ],
        allowed: &["builder/src/registry"],
        tests_exempt: true,
        why: "the registry client is the only module on the network",
    },
    Rule {
        name: "a concrete snapshot backend",
        patterns: &[
            "FuseSnapshotter",
            "OverlaySnapshotter",
            "imgfs::Store",
            "imgfs::fuse",
        ],
        allowed: &["imgfs/src", "tools/src", "builder/src/state.rs"],
        tests_exempt: true,
        why: "the builder knows backends only as `dyn Snapshotter`; state.rs picks one for the img binary",
    },
    Rule {
        name: "process spawning",
        // `process::{.., Command, ..}` groups are caught by `spawns_in_use_group`.
        patterns: &[
            "process::Command",
            "Command::new",
            "CommandExt",
            "fork",
            "vfork",
            "posix_spawn",
            "posix_spawnp",
            "execv",
            "execve",
            "execvp",
            "execvpe",
            "fexecve",
        ],
        allowed: PROCESS_BOUNDARIES,
        tests_exempt: true,
        why: "only the process boundaries listed in ARCHITECTURE.md, \"Processes\", start processes",
    },
];

/// The files that may start processes. ARCHITECTURE.md's "Processes" section lists exactly these
/// (`architecture_md_lists_the_process_boundaries` checks both ways), each with its reason.
const PROCESS_BOUNDARIES: &[&str] = &[
    "builder/src/runc.rs",
    "builder/src/userns.rs",
    "builder/src/registry/auth.rs",
    "builder/src/doctor.rs",
    "imgfs/src/bin/imgfs/mount.rs",
    "builder/src/bin/img/mount.rs",
];

/// Restricted crates as dependencies: a package not named here may not depend on the crate.
const DEPENDENCY_RULES: &[(&str, &[&str])] = &[
    ("rocksdb", &["imgfs"]),
    ("memmap2", &["imgfs"]),
    ("fuser", &["imgfs"]),
    ("oci-client", &["builder"]),
    ("reqwest", &["builder"]),
    ("rustls", &["builder"]),
    ("hyper", &["builder"]),
];

/// Text that no file of the repository may contain: package mirror hosts (a machine's mirror is
/// its apt configuration's business, and debootstrap has a default), and paths outside the
/// repository (docs and scripts must work from a clone). This file itself is not searched.
const OUTSIDE_REFERENCES: &[(&str, &str)] = &[
    (
        "debian.org",
        "a Debian mirror host: use the machine's apt sources or debootstrap's default",
    ),
    (
        "ubuntu.com",
        "an Ubuntu mirror host: use the machine's apt sources",
    ),
    ("../shared/", "a path outside the repository"),
    ("/work/", "a path outside the repository"),
    (
        "/var/tmp/x/",
        "a one-off script outside the repository: put it in bench/",
    ),
];

/// Files searched for `OUTSIDE_REFERENCES` besides `SOURCE_DIRS`.
const DOC_DIRS: &[&str] = &["docs"];
const ROOT_FILES: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "Cargo.toml",
    ".cargo/config.toml",
];

/// The most lines a source file may have: past that a file has more than one job.
const MAX_LINES: usize = 1000;

/// The workspace's own sources (relative to the root); `imgfs/vendor` is fuser's, not ours.
const SOURCE_DIRS: &[&str] = &["imgfs", "builder", "tools", "bench", "tests"];
const NOT_OURS: &[&str] = &["imgfs/vendor"];

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    path: String,
    line: usize,
    rule: String,
    message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.message)
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Whether `path` is the module `prefix` names: the file itself, `prefix.rs`, or under `prefix/`.
fn under(path: &str, prefix: &str) -> bool {
    if prefix.ends_with(".rs") || prefix.ends_with(".toml") {
        return path == prefix;
    }
    path == prefix
        || path.strip_suffix(".rs") == Some(prefix)
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Test code: the `tests` package, every crate's `tests/`, `tests.rs` modules and their
/// directories (`foo/tests/`), and the benchmarks, which time external programs.
fn is_test_code(path: &str) -> bool {
    path.starts_with("tests/")
        || path.starts_with("bench/")
        || path.split('/').any(|c| c == "tests" || c == "tests.rs")
}

/// Every workspace file with one of `extensions`, as paths relative to the root, sorted.
fn workspace_files(root: &Path, extensions: &[&str]) -> Vec<String> {
    files_under(root, SOURCE_DIRS, extensions)
}

/// Every file under `dirs` whose name ends with one of `extensions` ("" for all), sorted.
fn files_under(root: &Path, dirs: &[&str], extensions: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    for dir in dirs {
        let walk = walkdir::WalkDir::new(root.join(dir))
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                let name = e.file_name().to_string_lossy();
                let rel = relative(root, e.path());
                !(e.file_type().is_dir()
                    && (name == "target" || name.starts_with('.') || NOT_OURS.contains(&&*rel)))
            });
        for entry in walk {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_file() && extensions.iter().any(|x| name.ends_with(x)) {
                files.push(relative(root, entry.path()));
            }
        }
    }
    files.sort();
    files
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// `text` with comments, string literals and character literals replaced by spaces (newlines
/// kept, so line numbers stay right). Lifetimes stay. Good enough for rustfmt-formatted code.
fn code_only(text: &str) -> String {
    let s = text.as_bytes();
    let mut out = s.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(s.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < s.len() && depth > 0 {
                if s[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if s[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some(hashes) = raw_string_start(s, i) {
            // r"..", r#".."#, br".." : ends at a quote followed by as many hashes.
            let open = i + s[i..].iter().position(|&b| b == b'"').unwrap() + 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let end = s[open..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(s.len(), |n| open + n + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if s[i] == b'"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != b'"' {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(s.len());
            blank(&mut out, i, end);
            i = end;
        } else if s[i] == b'\'' {
            // A character literal ('x', '\n', '\u{..}', '"'), or else a lifetime or label.
            let end = if rest.get(1) == Some(&b'\\') {
                rest.get(3..)
                    .and_then(|r| r.iter().position(|&b| b == b'\''))
                    .map(|n| i + n + 4)
            } else {
                // `i` is at an ASCII quote, so `i + 1` is a char boundary.
                text[i + 1..].chars().next().and_then(|c| {
                    let n = c.len_utf8();
                    (rest.get(1 + n) == Some(&b'\'')).then_some(i + n + 2)
                })
            };
            match end {
                Some(end) => {
                    blank(&mut out, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// If a raw (byte) string starts at `i` and `i` is not inside an identifier, its number of `#`s.
fn raw_string_start(s: &[u8], i: usize) -> Option<usize> {
    if i > 0 && is_ident_byte(s[i - 1]) {
        return None;
    }
    let j = if s[i..].starts_with(b"br") {
        i + 2
    } else if s[i] == b'r' {
        i + 1
    } else {
        return None;
    };
    let hashes = s[j..].iter().take_while(|&&b| b == b'#').count();
    (s.get(j + hashes) == Some(&b'"')).then_some(hashes)
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `line` names `pattern` as a word or path: no identifier character on either side,
/// and not a field or method of that name (`x.fork()`).
fn names(line: &str, pattern: &str) -> bool {
    let b = line.as_bytes();
    line.match_indices(pattern).any(|(at, _)| {
        let end = at + pattern.len();
        let before_ok = at == 0 || !(is_ident_byte(b[at - 1]) || b[at - 1] == b'.');
        let after_ok = end == b.len() || !is_ident_byte(b[end]);
        before_ok && after_ok
    })
}

/// Lines (1-based) where a `process::{...}` use group imports `Command`.
fn spawns_in_use_group(code: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    for (at, _) in code.match_indices("process::{") {
        let group = &code[at..];
        let group = &group[..group.find('}').unwrap_or(group.len())];
        if names(group, "Command") {
            lines.push(code[..at].matches('\n').count() + 1);
        }
    }
    lines
}

fn check_sources(root: &Path, violations: &mut Vec<Violation>) {
    for path in workspace_files(root, &[".rs"]) {
        let text = std::fs::read_to_string(root.join(&path)).unwrap();

        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            violations.push(Violation {
                path: path.clone(),
                line: 1,
                rule: "doc".into(),
                message: "the file does not open with a `//!` line saying what it owns".into(),
            });
        }

        let lines = text.lines().count();
        if lines > MAX_LINES {
            violations.push(Violation {
                path: path.clone(),
                line: MAX_LINES + 1,
                rule: "length".into(),
                message: format!(
                    "{lines} lines: split the file along its jobs (at most {MAX_LINES} lines a file)"
                ),
            });
        }

        let code = code_only(&text);
        for rule in RULES {
            if rule.allowed.iter().any(|p| under(&path, p))
                || (rule.tests_exempt && is_test_code(&path))
            {
                continue;
            }
            let mut hits: Vec<(usize, &str)> = Vec::new();
            for (n, line) in code.lines().enumerate() {
                if let Some(p) = rule.patterns.iter().find(|p| names(line, p)) {
                    hits.push((n + 1, p));
                }
            }
            if rule.name == "process spawning" {
                hits.extend(
                    spawns_in_use_group(&code)
                        .into_iter()
                        .map(|n| (n, "Command")),
                );
            }
            hits.sort();
            hits.dedup_by_key(|h| h.0);
            for (line, pattern) in hits {
                violations.push(Violation {
                    path: path.clone(),
                    line,
                    rule: rule.name.into(),
                    message: format!(
                        "`{pattern}` here, but {} (allowed in: {})",
                        rule.why,
                        rule.allowed.join(", ")
                    ),
                });
            }
        }
    }
}

/// The dependency tables of a manifest: `(line, crate)` for every key of a
/// `[dependencies]`, `[dev-dependencies]` or `[build-dependencies]` table (target-specific ones
/// included), whether written `name = ..` or `name.workspace = true`.
fn dependencies(manifest: &str) -> Vec<(usize, String)> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for (n, line) in manifest.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            let table = line.trim_matches(|c| c == '[' || c == ']');
            in_deps = table.ends_with("dependencies");
            continue;
        }
        if !in_deps || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split(['=', '.']).next().unwrap_or("").trim();
        let key = key.trim_matches('"');
        if !key.is_empty() {
            deps.push((n + 1, key.to_owned()));
        }
    }
    deps
}

fn check_manifests(root: &Path, violations: &mut Vec<Violation>) {
    for path in workspace_files(root, &["Cargo.toml"]) {
        let package = path.split('/').next().unwrap();
        let manifest = std::fs::read_to_string(root.join(&path)).unwrap();
        for (line, dep) in dependencies(&manifest) {
            let Some((_, owners)) = DEPENDENCY_RULES.iter().find(|(c, _)| *c == dep) else {
                continue;
            };
            if !owners.contains(&package) {
                violations.push(Violation {
                    path: path.clone(),
                    line,
                    rule: format!("dependency {dep}"),
                    message: format!(
                        "package `{package}` depends on `{dep}`, which only {} may use",
                        owners.join(", ")
                    ),
                });
            }
        }
    }
}

/// Fails with every violation.
fn report(violations: Vec<Violation>) {
    let errors: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
    assert!(
        errors.is_empty(),
        "tidy: {} problem(s) (rules at the top of tests/it/tidy.rs):\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn sources_keep_the_architecture_invariants() {
    let root = workspace_root();
    let mut violations = Vec::new();
    check_sources(&root, &mut violations);
    check_manifests(&root, &mut violations);
    violations.sort();
    report(violations);
}

/// The bullet list of ARCHITECTURE.md's "## Processes" section: the first backticked word of
/// each `- ` line, up to the next heading.
fn documented_process_boundaries(architecture: &str) -> BTreeSet<String> {
    architecture
        .lines()
        .skip_while(|l| l.trim() != "## Processes")
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("- `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn architecture_md_lists_the_process_boundaries() {
    let text = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).unwrap();
    let documented = documented_process_boundaries(&text);
    let allowed: BTreeSet<String> = PROCESS_BOUNDARIES.iter().map(|&p| p.to_owned()).collect();
    assert_eq!(
        documented, allowed,
        "ARCHITECTURE.md's \"## Processes\" list (left) and PROCESS_BOUNDARIES in tests/it/tidy.rs \
         (right) must name the same files"
    );
    for path in &allowed {
        assert!(
            workspace_root().join(path).is_file(),
            "process boundary {path} does not exist"
        );
    }
}

#[test]
fn no_file_names_a_mirror_or_a_path_outside_the_repository() {
    let root = workspace_root();
    let mut files = files_under(&root, SOURCE_DIRS, &[""]);
    files.extend(files_under(&root, DOC_DIRS, &[""]));
    files.extend(ROOT_FILES.iter().map(|&f| f.to_owned()));
    let mut errors = Vec::new();
    for path in files.iter().filter(|p| *p != "tests/it/tidy.rs") {
        // Binary files (test data) are not read as text, and need not be.
        let Ok(text) = std::fs::read_to_string(root.join(path)) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for (pattern, why) in OUTSIDE_REFERENCES {
                if line.contains(pattern) {
                    errors.push(format!("{path}:{}: `{pattern}`: {why}", n + 1));
                }
            }
        }
    }
    assert!(
        errors.is_empty(),
        "tidy: {} reference(s) outside the repository:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn the_tidy_checks_see_through_comments_and_strings() {
    let code = code_only(
        "//! rocksdb\nlet a = \"fuser\"; // rocksdb\nlet b = r#\"x \"memmap2\"\"#;\n\
         fn f<'a>(c: &'a str) -> char { '\"' }\n/* fork() /* nested */ fork() */ fuser::X\n",
    );
    assert!(!names(&code, "rocksdb") && !names(&code, "memmap2") && !names(&code, "fork"));
    assert!(names(&code, "fuser") && code.contains("'a str"));
    assert_eq!(code.lines().count(), 5);
    assert!(names("let x = nix::unistd::fork();", "fork"));
    assert!(!names(
        &code_only("cmd.arg(\"--no-fork\"); x.fork()"),
        "fork"
    ));
    assert!(!names("fusermount3", "fuser"));
    assert_eq!(
        spawns_in_use_group("use a;\nuse std::process::{ExitStatus,\n Command};\n"),
        vec![2]
    );
    assert!(spawns_in_use_group("use std::process::{ExitCode};").is_empty());
    assert!(under("imgfs/src/meta.rs", "imgfs/src/meta"));
    assert!(under("imgfs/src/meta/key.rs", "imgfs/src/meta"));
    assert!(!under("imgfs/src/metadata.rs", "imgfs/src/meta"));
    assert!(!under("builder/src/runc/tests.rs", "builder/src/runc.rs"));
    assert!(is_test_code("builder/src/image/tests.rs") && is_test_code("imgfs/tests/it/x.rs"));
    assert!(!is_test_code("builder/src/runc.rs"));
    assert_eq!(
        dependencies(
            "[package]\nname = \"x\"\n[dependencies]\nfuser.workspace = true\n# c\nnix = { x = 1 }\n[target.'cfg(unix)'.dev-dependencies]\n\"rocksdb\" = \"1\"\n"
        ),
        vec![
            (4, "fuser".into()),
            (6, "nix".into()),
            (8, "rocksdb".into())
        ]
    );
}
