//! Parser, expansion, RUN argv and stage-graph tests. The `testdata/*.Dockerfile` files are
//! compared with `*.expected` snapshots; `UPDATE_EXPECT=1` rewrites the snapshots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::*;

fn render(text: &str, name: &str) -> String {
    let df = match parse(text, Path::new(name)) {
        Ok(df) => df,
        Err(e) => return format!("error: {e}\n"),
    };
    let mut out = format!("{df:#?}\n");
    let shell = ["/bin/sh".to_string(), "-c".to_string()];
    for stage in &df.stages {
        for ins in &stage.instructions {
            let run = match &ins.kind {
                InstructionKind::Run(r) => r,
                InstructionKind::Onbuild { parsed, .. } => match &parsed.kind {
                    InstructionKind::Run(r) => r,
                    _ => continue,
                },
                _ => continue,
            };
            writeln!(out, "line {} runs {:#?}", ins.line, run.command(&shell)).unwrap();
        }
    }
    out
}

#[test]
fn testdata_dockerfiles_match_their_snapshots() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/dockerfile/testdata");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    paths.sort();
    assert!(paths.len() > 10);
    let mut failed = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let got = render(&text, "Dockerfile");
        let expected_path = path.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            eprintln!("--- {}\n{got}", path.display());
            failed.push(path);
        }
    }
    assert!(
        failed.is_empty(),
        "snapshots differ (UPDATE_EXPECT=1 to accept): {failed:?}"
    );
}

fn df(text: &str) -> Dockerfile {
    parse(text, Path::new("Dockerfile")).unwrap()
}

fn err(text: &str) -> String {
    parse(text, Path::new("Dockerfile"))
        .unwrap_err()
        .to_string()
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn error_names_file_and_line() {
    assert_eq!(
        err("FROM a\nRUN x\nFOOBAR y\n"),
        "Dockerfile:3: unknown instruction: FOOBAR"
    );
    let e = parse("FROM a\nCOPY --frm=x a b\n", Path::new("sub/My.Dockerfile")).unwrap_err();
    assert_eq!(e.to_string(), "sub/My.Dockerfile:2: unknown flag: frm");
    assert_eq!(e.line, 2);
}

#[test]
fn shell_text_joins_continuations_and_drops_comment_lines() {
    let d = df("FROM a\nRUN echo a \\\n  # c\n    b \\  \n\n  c\nRUN [\"x\", \"y z\"]\n");
    let ins = &d.stages[0].instructions;
    assert_eq!(ins[0].original, "RUN echo a     b   c");
    assert_eq!(ins[1].line, 7);
    match (&ins[0].kind, &ins[1].kind) {
        (InstructionKind::Run(a), InstructionKind::Run(b)) => {
            assert_eq!(a.command, Command::Shell("echo a     b   c".into()));
            assert_eq!(b.command, Command::Exec(vec!["x".into(), "y z".into()]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_label_and_arg_split_like_buildkit() {
    let d = df("ARG A B=\"x y\"\nFROM a\nENV K=\"v w\" L=z\nENV OLD  a b  c\nLABEL \"q k\"=v\n");
    assert_eq!(
        d.global_args[1],
        ArgDecl {
            name: "B".into(),
            default: Some("\"x y\"".into()),
            line: 1
        }
    );
    let ins = &d.stages[0].instructions;
    assert_eq!(
        ins[0].kind,
        InstructionKind::Env(vec![
            KeyValue {
                key: "K".into(),
                value: "\"v w\"".into()
            },
            KeyValue {
                key: "L".into(),
                value: "z".into()
            },
        ])
    );
    assert_eq!(
        ins[1].kind,
        InstructionKind::Env(vec![KeyValue {
            key: "OLD".into(),
            value: "a b  c".into()
        }])
    );
    let lex = d.lexer();
    let expanded = ins[2].expand(&d.file, &lex, &NoEnv).unwrap();
    assert_eq!(
        expanded,
        InstructionKind::Label(vec![KeyValue {
            key: "q k".into(),
            value: "v".into()
        }])
    );
}

#[test]
fn expand_substitutes_where_docker_does_and_leaves_run_alone() {
    let d = df(
        "FROM a\nCOPY --chown=$U src/$F /d/\nWORKDIR /w/${F}\nRUN echo $F\nEXPOSE $PORTS\nCMD echo $F\n",
    );
    let env = vars(&[("F", "file"), ("U", "1000"), ("PORTS", "90 80/udp")]);
    let lex = d.lexer();
    let ex: Vec<_> = d.stages[0]
        .instructions
        .iter()
        .map(|i| i.expand(&d.file, &lex, &env).unwrap())
        .collect();
    match &ex[0] {
        InstructionKind::Copy(c) => {
            assert_eq!(c.sources, vec![Source::Path("src/file".into())]);
            assert_eq!(c.chown.as_deref(), Some("1000"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ex[1], InstructionKind::Workdir("/w/file".into()));
    assert_eq!(ex[2], d.stages[0].instructions[2].kind);
    assert_eq!(
        ex[3],
        InstructionKind::Expose(vec!["80/udp".into(), "90".into()])
    );
    assert_eq!(ex[4], d.stages[0].instructions[4].kind);
}

#[test]
fn expand_error_names_file_and_line() {
    let d = df("FROM a\n\nWORKDIR ${NOPE:?must be set}\n");
    let e = d.stages[0].instructions[0]
        .expand(&d.file, &d.lexer(), &NoEnv)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:3: failed to process \"${NOPE:?must be set}\": NOPE: must be set"
    );
}

#[test]
fn copy_heredoc_expands_only_with_unquoted_delimiter_and_keeps_quotes() {
    let d = df("FROM a\nCOPY <<EOF <<'RAW' /d/\nv=\"$X\"\nEOF\nr=$X\nRAW\n");
    let ex = d.stages[0].instructions[0]
        .expand(&d.file, &d.lexer(), &vars(&[("X", "1")]))
        .unwrap();
    let InstructionKind::Copy(c) = ex else {
        panic!()
    };
    let contents: Vec<_> = c
        .sources
        .iter()
        .map(|s| match s {
            Source::Heredoc(h) => (h.name.as_str(), h.content.as_str()),
            Source::Path(p) => panic!("{p}"),
        })
        .collect();
    assert_eq!(contents, vec![("EOF", "v=\"1\"\n"), ("RAW", "r=$X\n")]);
}

#[test]
fn run_argv_follows_buildkit_heredoc_rules() {
    let d = df(
        "FROM a\nRUN <<EOF\necho hi\nEOF\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\nRUN cat <<A > a; cat <<B\nx\nA\ny\nB\nRUN --network=none echo plain\n",
    );
    let shell = vec!["/bin/bash".to_string(), "-c".to_string()];
    let cmds: Vec<RunCommand> = d.stages[0]
        .instructions
        .iter()
        .map(|i| match &i.kind {
            InstructionKind::Run(r) => r.command(&shell),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(cmds[0].argv, vec!["/bin/bash", "-c", "echo hi\n"]);
    assert_eq!(cmds[1].argv, vec!["/bin/bash", "-c", "/dev/pipes/EOF"]);
    assert_eq!(
        cmds[1].files,
        vec![(
            "/dev/pipes/EOF".into(),
            "#!/usr/bin/env python3\nprint(1)\n".into(),
            0o755
        )]
    );
    assert_eq!(
        cmds[2].argv,
        vec!["/bin/bash", "-c", "cat <<A > a; cat <<B\nx\nA\ny\nB"]
    );
    assert_eq!(cmds[3].argv, vec!["/bin/bash", "-c", "echo plain"]);
}

#[test]
fn heredoc_bodies_that_look_like_instructions_are_not_parsed() {
    let d = df("FROM a\nRUN cat <<EOF >f\nFROM evil\nRUN nothing\nEOF\nUSER u\n");
    assert_eq!(d.stages.len(), 1);
    assert_eq!(
        d.stages[0].instructions[1].kind,
        InstructionKind::User("u".into())
    );
    assert_eq!(d.stages[0].instructions[1].line, 6);
}

#[test]
fn healthcheck_is_stored_like_docker() {
    let d = df(
        "FROM a\nHEALTHCHECK --interval=1m30s --start-period=500ms --retries=2 CMD [\"curl\", \"-f\"]\n",
    );
    assert_eq!(
        d.stages[0].instructions[0].kind,
        InstructionKind::Healthcheck(Healthcheck::Check {
            test: vec!["CMD".into(), "curl".into(), "-f".into()],
            interval: Duration::from_secs(90),
            timeout: Duration::ZERO,
            start_period: Duration::from_millis(500),
            start_interval: Duration::ZERO,
            retries: 2,
        })
    );
}

#[test]
fn onbuild_keeps_trigger_text_and_rejects_forbidden_triggers() {
    let d = df("FROM a\nONBUILD COPY . /app\n");
    match &d.stages[0].instructions[0].kind {
        InstructionKind::Onbuild { trigger, parsed } => {
            assert_eq!(trigger, "COPY . /app");
            assert!(matches!(parsed.kind, InstructionKind::Copy(_)));
        }
        other => panic!("{other:?}"),
    }
    assert!(err("FROM a\nONBUILD ONBUILD RUN x\n").starts_with("Dockerfile:2: "));
    assert_eq!(
        err("FROM a\nONBUILD MAINTAINER x\n"),
        "Dockerfile:2: MAINTAINER isn't allowed as an ONBUILD trigger"
    );
}

#[test]
fn stage_index_accepts_names_case_insensitively_and_indexes_in_range() {
    let d = df("FROM a AS Builder\nFROM b\n");
    assert_eq!(d.stages[0].name.as_deref(), Some("builder"));
    assert_eq!(d.stage_index("BUILDER"), Some(0));
    assert_eq!(d.stage_index("1"), Some(1));
    assert_eq!(d.stage_index("2"), None);
    assert_eq!(d.stage_index("alpine"), None);
}

#[test]
fn needed_stages_follow_from_copy_from_and_mount_from_dependencies_first() {
    let text = "ARG BASE=base\nFROM alpine AS base\nFROM alpine AS tools\nFROM alpine AS unused\n\
                FROM ${BASE} AS mid\nCOPY --from=tools /t /t\nCOPY --from=busybox:latest /bin/sh /sh\n\
                FROM scratch AS final\nRUN --mount=type=bind,from=mid,target=/m true\nCOPY --from=0 / /\n";
    let d = df(text);
    let env = vars(&[("BASE", "base")]);
    assert_eq!(d.needed_stages(None, &env).unwrap(), vec![0, 1, 3, 4]);
    assert_eq!(d.needed_stages(Some("MID"), &env).unwrap(), vec![0, 1, 3]);
    assert_eq!(d.needed_stages(Some("unused"), &env).unwrap(), vec![2]);
    assert_eq!(
        d.stage_base(3, &vars(&[("BASE", "debian")])).unwrap(),
        Err("debian".to_string())
    );
    let e = d.needed_stages(Some("nope"), &env).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:0: target stage \"nope\" could not be found"
    );
}

#[test]
fn needed_stages_rejects_forward_indexes_variables_in_from_and_cycles() {
    let e = df("FROM a\nCOPY --from=1 / /\nFROM b\n").needed_stages(None, &NoEnv);
    assert!(e.is_err());
    let e = df("FROM a\nCOPY --from=1 / /\nFROM b\n").needed_stages(Some("0"), &NoEnv);
    assert!(e.is_err());
    let e = df("FROM a AS x\nCOPY --from=$S / /\n")
        .needed_stages(None, &NoEnv)
        .unwrap_err();
    assert!(
        e.message
            .starts_with("variable expansion is not supported for --from"),
        "{e}"
    );
    let e = df("FROM y AS x\nFROM x AS y\n")
        .needed_stages(None, &NoEnv)
        .unwrap_err();
    assert!(e.message.contains("circular"), "{e}");
}

#[test]
fn arg_scope_applies_docker_visibility_rules() {
    let mut s = ArgScope::new(
        vars(&[("V", "cli"), ("HTTP_PROXY", "p"), ("UNUSED", "1")]),
        vars(&[("TARGETARCH", "amd64")]),
    );
    s.declare_global("V", Some("default".into()));
    s.declare_global("G", Some("g".into()));
    assert_eq!(s.global_env(), &vars(&[("G", "g"), ("V", "cli")]));
    s.enter_stage();
    assert!(s.stage_env().is_empty());
    s.declare("G", None);
    s.declare("TARGETARCH", None);
    s.declare("L", Some("local".into()));
    assert_eq!(
        s.stage_env(),
        &vars(&[("G", "g"), ("L", "local"), ("TARGETARCH", "amd64")])
    );
    s.enter_stage();
    assert!(s.stage_env().is_empty());
    assert_eq!(s.predefined(), vars(&[("HTTP_PROXY", "p")]));
    assert_eq!(s.unused_build_args(), vec!["UNUSED".to_string()]);
}

#[test]
fn go_durations_parse_like_time_parse_duration() {
    use super::parse::parse_go_duration as p;
    assert_eq!(p("1h2m3.5s"), Some(Duration::from_secs_f64(3723.5)));
    assert_eq!(p("300ms"), Some(Duration::from_millis(300)));
    assert_eq!(p("0"), Some(Duration::ZERO));
    assert_eq!(p("5"), None);
    assert_eq!(p("-1s"), None);
    assert_eq!(p(""), None);
}
