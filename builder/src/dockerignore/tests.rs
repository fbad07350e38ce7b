//! Tests of the pattern matcher: patternmatcher's own table plus the `.dockerignore` reader.

use super::*;

/// (pattern, path, excluded): mostly moby/patternmatcher's `TestMatches` table.
const SINGLE_PATTERN_CASES: &[(&str, &str, bool)] = &[
    ("**", "file", true),
    ("**", "file/", true),
    ("**/", "file", true),
    ("**/", "file/", true),
    ("**", "/", true),
    ("**/", "/", true),
    ("**", "dir/file", true),
    ("**/", "dir/file", true),
    ("**", "dir/file/", true),
    ("**/", "dir/file/", true),
    ("**/**", "dir/file", true),
    ("**/**", "dir/file/", true),
    ("dir/**", "dir/file", true),
    ("dir/**", "dir/file/", true),
    ("dir/**", "dir/dir2/file", true),
    ("dir/**", "dir/dir2/file/", true),
    ("**/dir", "dir", true),
    ("**/dir", "dir/file", true),
    ("**/dir2/*", "dir/dir2/file", true),
    ("**/dir2/*", "dir/dir2/file/", true),
    ("**/dir2/**", "dir/dir2/dir3/file", true),
    ("**/dir2/**", "dir/dir2/dir3/file/", true),
    ("**file", "file", true),
    ("**file", "dir/file", true),
    ("**/file", "dir/file", true),
    ("**file", "dir/dir/file", true),
    ("**/file", "dir/dir/file", true),
    ("**/file*", "dir/dir/file", true),
    ("**/file*", "dir/dir/file.txt", true),
    ("**/file*txt", "dir/dir/file.txt", true),
    ("**/file*.txt", "dir/dir/file.txt", true),
    ("**/file*.txt*", "dir/dir/file.txt", true),
    ("**/**/*.txt", "dir/dir/file.txt", true),
    ("**/**/*.txt2", "dir/dir/file.txt", false),
    ("**/*.txt", "file.txt", true),
    ("**/**/*.txt", "file.txt", true),
    ("a**/*.txt", "a/file.txt", true),
    ("a**/*.txt", "a/dir/file.txt", true),
    ("a**/*.txt", "a/dir/dir/file.txt", true),
    ("a/*.txt", "a/dir/file.txt", false),
    ("a/*.txt", "a/file.txt", true),
    ("a/*.txt**", "a/file.txt", true),
    ("a[b-d]e", "ae", false),
    ("a[b-d]e", "ace", true),
    ("a[b-d]e", "aae", false),
    ("a[^b-d]e", "aze", true),
    (".*", ".foo", true),
    (".*", "foo", false),
    ("abc.def", "abcdef", false),
    ("abc.def", "abc.def", true),
    ("abc.def", "abcZdef", false),
    ("abc?def", "abcZdef", true),
    ("abc?def", "abcdef", false),
    ("a\\\\", "a\\", true),
    ("**/foo/bar", "foo/bar", true),
    ("**/foo/bar", "dir/foo/bar", true),
    ("**/foo/bar", "dir/dir2/foo/bar", true),
    ("abc/**", "abc", false),
    ("abc/**", "abc/def", true),
    ("abc/**", "abc/def/ghi", true),
    ("**/.foo", ".foo", true),
    ("**/.foo", "bar.foo", false),
    ("a(b)c/def", "a(b)c/def", true),
    ("a(b)c/def", "a(b)c/xyz", false),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
    ),
    (
        "dist/*.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
    ),
    // Our own cases.
    ("*", "a/b", true),
    ("*.go", "a/b.go", false),
    ("*/*.go", "a/b.go", true),
    ("a?c", "a/c", false),
    ("[a-c]x", "bx", true),
    ("[a-c]x", "dx", false),
    ("[\\]]x", "]x", true),
    ("[^a]", "/", true),
    ("[z-a]", "a", false),
    ("\\*x", "*x", true),
    ("\\*x", "ax", false),
    ("docs", "docs/sub/README.md", true),
    ("./docs/../src", "src/main.rs", true),
    ("a/**/b", "a/b", true),
    ("a/**/b", "a/x/y/b", true),
    ("a/**/b", "ab", false),
    // The suffix fast path: `**foo` is a plain string suffix, as in patternmatcher.
    ("**foo", "afoo", true),
    ("ü*", "über", true),
];

#[test]
fn single_patterns_match_like_patternmatcher() {
    for (pattern, path, want) in SINGLE_PATTERN_CASES {
        let m = Matcher::new([pattern]).unwrap();
        assert_eq!(m.matches(path), *want, "pattern {pattern:?} path {path:?}");
    }
}

#[test]
fn walk_matching_with_parent_results_agrees_with_matches() {
    let patterns = [
        "docs",
        "!docs/keep*",
        "**/*.log",
        "!important.log",
        "a/**/c",
    ];
    let m = Matcher::new(patterns).unwrap();
    let paths = [
        "docs",
        "docs/keep.md",
        "docs/x",
        "docs/sub/keep.md",
        "src/x.log",
        "src/important.log",
        "important.log",
        "a/b/c/d",
        "a/b",
    ];
    for path in paths {
        // Build the parent chain's info the way a walk would.
        let mut info = MatchInfo::default();
        let mut got = false;
        let parts: Vec<&str> = path.split('/').collect();
        for n in 1..=parts.len() {
            let prefix = parts[..n].join("/");
            let (hit, next) = m.matches_with_parent(&prefix, &info);
            got = hit;
            info = next;
        }
        assert_eq!(got, m.matches(path), "path {path:?}");
        let (direct, _) = m.matches_with_parent(path, &MatchInfo::default());
        assert_eq!(direct, m.matches(path), "path {path:?} without parent info");
    }
}

#[test]
fn later_patterns_override_earlier_ones() {
    let m = Matcher::new(["*.md", "!README.md", "README.md"]).unwrap();
    assert!(m.matches("README.md"));
    let m = Matcher::new(["!fileutils.go", "*.go"]).unwrap();
    assert!(m.matches("fileutils.go"));
    let m = Matcher::new(["*.go", "!fileutils.go"]).unwrap();
    assert!(!m.matches("fileutils.go"));
    assert!(m.matches("other.go"));
}

#[test]
fn exception_reincludes_file_under_excluded_directory() {
    for excl in ["docs", "docs/", "docs/*"] {
        let m = Matcher::new([excl, "!docs/README.md"]).unwrap();
        assert!(!m.matches("docs/README.md"), "{excl}");
        assert!(m.matches("docs/other.md"), "{excl}");
    }
}

#[test]
fn context_root_is_never_excluded_by_a_wildcard() {
    let m = Matcher::new(["*.go"]).unwrap();
    assert!(!m.matches("."));
    assert!(!Matcher::new_empty().matches("anything"));
}

#[test]
fn malformed_patterns_are_errors() {
    for bad in ["[", "a\\", "[]a]", "[-a]", "[a-]", "[^]", "x[a"] {
        assert!(
            matches!(Matcher::new([bad]), Err(PatternError::BadPattern { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        Matcher::new(["!"]),
        Err(PatternError::IllegalExclusion)
    ));
    assert!(matches!(
        Matcher::parse("!/\n"),
        Err(PatternError::IllegalExclusion)
    ));
}

#[test]
fn reader_drops_comments_blank_lines_bom_and_leading_slash() {
    let text =
        "\u{feff}# comment\n  \n/abs/path\n  spaced  \n! neg/../x\n #not comment\n./a//b/\n/\n";
    assert_eq!(
        read_all(text),
        vec!["abs/path", "spaced", "!x", "#not comment", "a/b", "/"]
    );
}

#[test]
fn reader_keeps_windows_line_endings_out_of_patterns() {
    assert!(Matcher::parse("/docs\n").unwrap().matches("docs/a"));
    // New alone (no reader) keeps a leading slash, which then matches nothing relative.
    assert!(!Matcher::new(["/docs"]).unwrap().matches("docs/a"));
    let m = Matcher::parse("target\r\n!target/keep\r\n").unwrap();
    assert!(m.matches("target/x"));
    assert!(!m.matches("target/keep"));
}

#[test]
fn excluded_directory_is_skipped_only_when_no_exception_could_reach_inside() {
    let m = Matcher::new(["node_modules", "build"]).unwrap();
    assert!(m.can_skip_dir("node_modules"));
    let m = Matcher::new(["build", "!build/keep/this"]).unwrap();
    assert!(!m.can_skip_dir("build"));
    assert!(!m.can_skip_dir("build/keep"));
    assert!(m.can_skip_dir("build/other"));
    assert!(m.can_skip_dir("buil"));
    let m = Matcher::new(["build", "!**/*.keep"]).unwrap();
    assert!(!m.can_skip_dir("build"));
    // A trailing glob does not count as a wildcard; the prefix before it decides.
    let m = Matcher::new(["build", "other", "!build/keep/**"]).unwrap();
    assert!(!m.can_skip_dir("build"));
    assert!(m.can_skip_dir("other"));
    // One wildcard exception anywhere keeps every directory walked.
    let m = Matcher::new(["build", "other", "!build/k*/x"]).unwrap();
    assert!(!m.can_skip_dir("other"));
}

#[test]
fn clean_matches_go_filepath_clean() {
    for (input, want) in [
        ("", "."),
        ("/", "/"),
        ("a/b/../c", "a/c"),
        ("../a", "../a"),
        ("/../a", "/a"),
        ("a/../..", ".."),
        ("./a/./b/", "a/b"),
        ("//a//b", "/a/b"),
    ] {
        assert_eq!(clean(input), want, "{input:?}");
    }
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".dockerignore"), "a\n").unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    let dockerfile = dir.path().join("sub/Dockerfile.dev");
    fs::write(&dockerfile, "FROM scratch\n").unwrap();

    let m = Matcher::for_dockerfile(dir.path(), &dockerfile).unwrap();
    assert!(m.matches("a"));

    fs::write(dir.path().join("sub/Dockerfile.dev.dockerignore"), "b\n").unwrap();
    let m = Matcher::for_dockerfile(dir.path(), &dockerfile).unwrap();
    assert!(!m.matches("a"));
    assert!(m.matches("b"));

    let empty = tempfile::tempdir().unwrap();
    let m = Matcher::for_dockerfile(empty.path(), &empty.path().join("Dockerfile")).unwrap();
    assert!(m.patterns().is_empty());
}
