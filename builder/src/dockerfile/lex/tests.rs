//! Tables of BuildKit's lexer behaviour (its envVarTest, wordsTest and lex_test.go cases).

use std::collections::HashMap;

use super::*;

/// Variables of one table row.
type Vars = &'static [(&'static str, &'static str)];

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `None` means the word must be rejected.
const WORD_CASES: &[(&str, Option<&str>)] = &[
    ("hello", Some("hello")),
    ("he'll'o", Some("hello")),
    ("he'llo", None),
    ("he\\'llo", Some("he'llo")),
    ("he\\\\'llo", None),
    ("abc\\tdef", Some("abctdef")),
    ("\"abc\\tdef\"", Some("abc\\tdef")),
    ("\"abc\\\\tdef\"", Some("abc\\tdef")),
    ("'abc\\tdef'", Some("abc\\tdef")),
    ("hello\\", Some("hello")),
    ("hello\\\\", Some("hello\\")),
    ("\"hello", None),
    ("\"hello\\\"", None),
    ("\"hel'lo\"", Some("hel'lo")),
    ("'hello", None),
    ("'hello\\'", Some("hello\\")),
    ("'hello\\there'", Some("hello\\there")),
    ("'hello\\\\there'", Some("hello\\\\there")),
    ("\"''\"", Some("''")),
    ("$.", Some("$.")),
    ("he$1x", Some("hex")),
    ("he$.x", Some("he$.x")),
    ("he$pwd.", Some("he.")),
    ("he$PWD", Some("he/home")),
    ("he\\$PWD", Some("he$PWD")),
    ("he\\\\$PWD", Some("he\\/home")),
    ("\"he\\$PWD\"", Some("he$PWD")),
    ("\"he\\\\$PWD\"", Some("he\\/home")),
    ("\\${}", Some("${}")),
    ("\\${}aaa", Some("${}aaa")),
    ("he\\${}xx", Some("he${}xx")),
    ("${}", None),
    ("he${}xx", None),
    ("he${hi}", Some("he")),
    ("he${hi}xx", Some("hexx")),
    ("he${PWD}", Some("he/home")),
    ("he${.}", None),
    ("he${XXX:-000}xx", Some("he000xx")),
    ("he${PWD:-000}xx", Some("he/homexx")),
    ("he${XXX:-$PWD}xx", Some("he/homexx")),
    ("he${XXX:-${PWD:-yyy}}xx", Some("he/homexx")),
    ("he${XXX:-${YYY:-yyy}}xx", Some("heyyyxx")),
    ("he${XXX:YYY}", None),
    ("he${XXX?}", None),
    ("he${XXX:?}", None),
    ("he${PWD?}", Some("he/home")),
    ("he${PWD:?}", Some("he/home")),
    ("he${NULL?}", Some("he")),
    ("he${NULL:?}", None),
    ("he${XXX:+${PWD}}xx", Some("hexx")),
    ("he${PWD:+${XXX}}xx", Some("hexx")),
    ("he${PWD:+${SHELL}}xx", Some("hebashxx")),
    ("he${XXX:+000}xx", Some("hexx")),
    ("he${PWD:+000}xx", Some("he000xx")),
    ("'he${XX}'", Some("he${XX}")),
    ("\"he${PWD}\"", Some("he/home")),
    ("\"he'$PWD'\"", Some("he'/home'")),
    ("\"$PWD\"", Some("/home")),
    ("'$PWD'", Some("$PWD")),
    ("'\\$PWD'", Some("\\$PWD")),
    ("'\"hello\"'", Some("\"hello\"")),
    ("he${PWD", None),
    ("he${PWD:=000}xx", None),
    ("he${PWD:+${PWD}:}xx", Some("he/home:xx")),
    ("he${XXX:-\\$PWD:}xx", Some("he$PWD:xx")),
    ("he${XXX:-\\${PWD}z}xx", Some("he${PWDz}xx")),
    ("안녕'하세요", None),
    ("안'녕'하세요", Some("안녕하세요")),
    ("안녕\\t하세요", Some("안녕t하세요")),
    ("안녕$KOREAN", Some("안녕한국어")),
    ("${{aaa}", None),
    ("${aaa}}", Some("}")),
    ("${aaa", None),
    ("${aaa:-bbb}}", Some("bbb}")),
    ("${aaa:-bbb", None),
    ("${aaa:-${bbb:-ccc}}", Some("ccc")),
    ("${aaa:-bbb ${foo}", None),
    ("${aaa:-bbb {foo}", Some("bbb {foo")),
    ("${:}", None),
    ("${:-bbb}", None),
    ("${:+bbb}", None),
    // Positional and special parameters are never set in a Dockerfile.
    ("$1", Some("")),
    ("${1:-bbb}", Some("bbb")),
    ("${1:+bbb}", Some("")),
    ("$999aaa", Some("aaa")),
    ("${001:-bbb}aaa", Some("bbbaaa")),
    ("$@@@", Some("@@")),
    ("${@:-bbb}aaa", Some("bbbaaa")),
    ("$*", Some("")),
    ("${#}", Some("")),
    ("${?:-bbb}", Some("bbb")),
    ("$-", Some("")),
    ("$$", Some("")),
    ("${!:-bbb}", Some("bbb")),
    ("$0", Some("")),
];

#[test]
fn process_word_matches_buildkit_env_var_table() {
    let lex = ShellLex::new('\\');
    let env = env(&[
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]);
    for (input, expected) in WORD_CASES {
        let got = lex.process_word(input, &env);
        match expected {
            Some(e) => assert_eq!(got.as_deref(), Ok(*e), "input {input:?}"),
            None => assert!(got.is_err(), "input {input:?} gave {got:?}"),
        }
    }
}

/// Env, input, expected words (`None`: error).
const WORDS_CASES: &[(Vars, &str, Option<&[&str]>)] = &[
    (&[], "hello", Some(&["hello"])),
    (&[], "hello${hi}bye", Some(&["hellobye"])),
    (&[("hi", "hi")], "hello${hi}bye", Some(&["hellohibye"])),
    (
        &[("space", "abc  def")],
        "hello${space}bye",
        Some(&["helloabc", "defbye"]),
    ),
    (
        &[("space", "abc  def")],
        "hello\"${space}\"bye",
        Some(&["helloabc  defbye"]),
    ),
    (
        &[("space", "abc  def")],
        "hello \"${space}\"bye",
        Some(&["hello", "abc  defbye"]),
    ),
    (
        &[("leading", "  ab c")],
        "hello${leading}def",
        Some(&["hello", "ab", "cdef"]),
    ),
    (
        &[("leading", "  ab c")],
        "hello\"${leading}\" def",
        Some(&["hello  ab c", "def"]),
    ),
    (
        &[("leading", "  ab c")],
        "hello${leading}",
        Some(&["hello", "ab", "c"]),
    ),
    (
        &[("trailing", "ab c   ")],
        "hello${trailing}",
        Some(&["helloab", "c"]),
    ),
    (
        &[("trailing", "ab c   ")],
        "hello${trailing}d",
        Some(&["helloab", "c", "d"]),
    ),
    (
        &[("trailing", "ab c   ")],
        "hello\"${trailing}\"d",
        Some(&["helloab c   d"]),
    ),
    (&[], "hello\" there  \"", Some(&["hello there  "])),
    (&[], "hello there     ", Some(&["hello", "there"])),
    (&[], "hello\\ there", Some(&["hello there"])),
    (&[], "hello\" there", None),
    (&[], "hello\\\" there", Some(&["hello\"", "there"])),
    (&[], "hello\"\\\\there\"", Some(&["hello\\there"])),
    (&[], "hello\"\\there\"", Some(&["hello\\there"])),
    (&[], "hello'\\\\there'", Some(&["hello\\\\there"])),
    (&[], "hello'$there'", Some(&["hello$there"])),
    (&[], "\"\" a ''", Some(&["a"])),
];

#[test]
fn process_words_splits_after_substitution_like_buildkit() {
    let lex = ShellLex::new('\\');
    for (pairs, input, expected) in WORDS_CASES {
        let got = lex.process_words(input, &env(pairs));
        match expected {
            Some(e) => {
                let e: Vec<String> = e.iter().map(|s| s.to_string()).collect();
                assert_eq!(got, Ok(e), "input {input:?}");
            }
            None => assert!(got.is_err(), "input {input:?} gave {got:?}"),
        }
    }
}

/// Env, input, expected (`None`: error): the modifiers of lex_test.go's TestProcessWithMatches.
const MODIFIER_CASES: &[(Vars, &str, Option<&str>)] = &[
    (
        &[("FOO", "xxx"), ("BAR", "")],
        "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
        Some("xxx  ccc"),
    ),
    (
        &[("FOO", "xxx"), ("BAR", "")],
        "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
        Some("xxx bbb ccc"),
    ),
    (&[("FOO", "xxx")], "${FOO:-}", Some("xxx")),
    (
        &[("FOO", "xxx"), ("BAR", "")],
        "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
        Some("aaa bbb "),
    ),
    (
        &[("FOO", "xxx"), ("BAR", "")],
        "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
        Some("aaa  "),
    ),
    (&[("FOO", "xxx")], "${FOO?aaa}", Some("xxx")),
    (&[("BAR", "")], "${BAR?bbb}", Some("")),
    (&[], "${BAZ?ccc}", None),
    (&[("BAR", "")], "${BAR:?bbb}", None),
    (&[], "${BAZ:?}", None),
    (&[("FOO", "xxx")], "${FOO=aaa}", None),
    (&[("FOO", "xxx")], "${FOO=:aaa}", None),
    (
        &[("FOO", "()[]{}^$.*?|\\x")],
        "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
        Some("x"),
    ),
    (&[("FOO", "xx**")], "${FOO%%\\**}", Some("xx")),
    (&[("FOO", "xxyy")], "${FOO#*x*y}", Some("y")),
    (&[("FOO", "xxyy")], "${FOO#*}", Some("xxyy")),
    (&[("FOO", "xxyy"), ("BAR", "x")], "${FOO#$BAR}", Some("xyy")),
    (&[("FOO", "xxyy"), ("BAR", "")], "${FOO#$BAR}", Some("xxyy")),
    (&[("FOO", "xxyy")], "${FOO#}", Some("xxyy")),
    (&[("FOO", "xxyy")], "${FOO##*x}", Some("yy")),
    (&[("FOO", "xxyy")], "${FOO##}", Some("xxyy")),
    (&[("FOO", "???y")], "${FOO#?\\?}", Some("?y")),
    (
        &[("FOO", "xxyy")],
        "${ABC:-.}${FOO%x}${ABC:-.}",
        Some(".xxyy."),
    ),
    (&[("FOO", "a***yy*")], "${FOO%%\\**\\*}", Some("a")),
    (&[("FOO", "xxyy")], "${FOO%}", Some("xxyy")),
    (&[("FOO", "file.tar.gz")], "${FOO%.*}", Some("file.tar")),
    (&[("FOO", "file.tar.gz")], "${FOO%%.*}", Some("file")),
    (&[], "${FOO:#}", None),
    (&[], "${FOO:%%}", None),
    (
        &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        Some("/foo.*/*.txt - /foo..*.txt"),
    ),
    (
        &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        Some("/tmp/bar.txt - /bar.txt"),
    ),
    (
        &[
            ("FOO", "/a/foo/b/c.txt"),
            ("NEEDLE", "/?/"),
            ("REPLACEMENT", "/"),
        ],
        "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        Some("/foo/b/c.txt - /foo/c.txt"),
    ),
    (
        &[("FOO", "/tmp/foo.txt")],
        "${FOO//\\//\\/}",
        Some("\\/tmp\\/foo.txt"),
    ),
    (&[("FOO", "a$b")], "${FOO/a/$$1}", Some("1$b")),
    (
        &[("FOO", "xxyy"), ("BAR", "")],
        "${FOO/$BAR/ww}",
        Some("wwxxyy"),
    ),
    (&[("FOO", "xxyy")], "${FOO//ww}", None),
    (&[("FOO", "xxyy")], "${FOO///}", Some("xxyy")),
    (&[], "${FOO///}", Some("")),
    (
        &[
            ("VERSION", "v1"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "arm64"),
            ("TARGETVARIANT", ""),
        ],
        "x-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tgz",
        Some("x-v1.linux-arm64.tgz"),
    ),
];

#[test]
fn modifiers_behave_like_buildkit() {
    let lex = ShellLex::new('\\');
    for (pairs, input, expected) in MODIFIER_CASES {
        let got = lex.process_word(input, &env(pairs));
        match expected {
            Some(e) => assert_eq!(got.as_deref(), Ok(*e), "input {input:?}"),
            None => assert!(got.is_err(), "input {input:?} gave {got:?}"),
        }
    }
}

#[test]
fn mandatory_variable_message_is_expanded_and_names_the_variable() {
    let lex = ShellLex::new('\\');
    let err = lex.process_word(
        "${VAR:?message here$ARG}",
        &env(&[("VAR", ""), ("ARG", "x")]),
    );
    assert_eq!(err.unwrap_err().message, "VAR: message herex");
    let err = lex.process_word("${VAR?}", &env(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to process \"${VAR?}\": VAR: is not allowed to be unset"
    );
}

#[test]
fn backtick_escape_leaves_backslash_literal() {
    let lex = ShellLex::new('`');
    let e = env(&[("X", "1")]);
    assert_eq!(lex.process_word("c:\\dir\\$X", &e).unwrap(), "c:\\dir\\1");
    assert_eq!(lex.process_word("a`$X`\"", &e).unwrap(), "a$X\"");
}

#[test]
fn skip_unset_env_keeps_unset_references_as_written() {
    let lex = ShellLex::new('\\').skip_unset_env(true);
    let e = env(&[("A", "1")]);
    assert_eq!(
        lex.process_word("$A $B ${B} ${B:-x} ${B/a/b}", &e).unwrap(),
        "1 $B ${B} ${B:-x} ${B/a/b}"
    );
}

#[test]
fn raw_quotes_and_escapes_keep_the_source_characters() {
    let lex = ShellLex::new('\\').raw_quotes(true).raw_escapes(true);
    assert_eq!(
        lex.process_words("cat <<'EOF' \"a b\" c\\ d", &NoEnv)
            .unwrap(),
        vec!["cat", "<<'EOF'", "\"a b\"", "c\\ d"]
    );
    assert_eq!(
        lex.process_words("x << EOF", &NoEnv).unwrap(),
        vec!["x", "<< EOF"]
    );
}

#[test]
fn image_env_list_lookup_takes_the_last_entry() {
    let list = vec!["A=1".to_string(), "B".to_string(), "A=2".to_string()];
    assert_eq!(Env::get(list.as_slice(), "A"), Some("2".into()));
    assert_eq!(Env::get(list.as_slice(), "B"), Some(String::new()));
    assert_eq!(Env::get(list.as_slice(), "C"), None);
}

#[test]
fn shell_patterns_escape_regex_syntax_and_reject_bad_escapes() {
    let re = shell_pattern_to_regex("(()[]{\\}^$.\\*\\?|\\\\", true, true).unwrap();
    assert_eq!(re.as_str(), "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\");
    for bad in ["\\", "\\x", "\\\\\\"] {
        assert!(shell_pattern_to_regex(bad, true, true).is_err(), "{bad}");
    }
    assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
    assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
    assert_eq!(reverse_pattern("ab\\"), "\\ba");
}
