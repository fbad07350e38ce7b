//! Dockerfile text to `Dockerfile`: parse-dockerfile's tokens plus BuildKit's logical lines,
//! heredocs, key/value splitting and flag rules.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use parse_dockerfile as pd;
use regex::Regex;

use super::lex::{NoEnv, ShellLex};
use super::{
    ArgDecl, Command, CopyInstruction, Dockerfile, Flag, Healthcheck, Heredoc, Instruction,
    InstructionKind, KeyValue, ParseError, RunInstruction, Source, Stage,
};

/// Parses `text`, read from `file` (used only in messages).
///
/// parse-dockerfile only knows a heredoc that starts a RUN command line, and only one; BuildKit
/// allows any number anywhere in the line (`RUN cat <<A >a && cat <<B >b`). So RUN heredocs are
/// read here, and their bodies blanked out (same length, so every offset stays valid) before
/// parse-dockerfile tokenises the text again. The alternative, a second full parser, was
/// rejected: it would duplicate everything the crate gets right.
pub fn parse(text: &str, file: &Path) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let err = |line: usize, message: String| ParseError {
        file: file.to_path_buf(),
        line,
        message,
    };
    let mut masked = text.as_bytes().to_vec();
    let mut run_heredocs: Vec<(usize, Vec<Heredoc>)> = Vec::new();
    loop {
        let masked_text = std::str::from_utf8(&masked).expect("masking keeps utf-8");
        match find_unmasked_run(text, masked_text, &run_heredocs) {
            Err(e) => return Err(crate_error(text, &e, err)),
            Ok(None) => break,
            Ok(Some(found)) => {
                let (docs, body_end) = read_heredocs(text, found.line_end, &found.markers)
                    .map_err(|line| {
                        err(
                            line_of(text, found.start),
                            format!("unterminated heredoc (text ends at line {line})"),
                        )
                    })?;
                for b in &mut masked[found.line_end..body_end] {
                    if *b != b'\n' {
                        *b = b' ';
                    }
                }
                if let Some(lt) = found.leading_heredoc {
                    masked[lt + 1] = b'x';
                }
                run_heredocs.push((found.start, docs));
            }
        }
    }
    let masked_text = std::str::from_utf8(&masked).expect("masking keeps utf-8");
    let parsed = pd::parse(masked_text).map_err(|e| crate_error(text, &e, err))?;
    let directives = &parsed.parser_directives;
    let escape = directives.escape.as_ref().map_or('\\', |d| d.value.value);
    let cx = Cx {
        text,
        escape,
        file,
        run_heredocs: &run_heredocs,
    };
    let mut df = Dockerfile {
        file: file.to_path_buf(),
        escape,
        syntax: directives
            .syntax
            .as_ref()
            .map(|d| d.value.value.to_string()),
        global_args: Vec::new(),
        stages: Vec::new(),
    };
    for ins in &parsed.instructions {
        if let pd::Instruction::From(from) = ins {
            let line = line_of(text, from.from.span.start);
            let mut platform = None;
            for f in &from.options {
                match (&*f.name.value, &f.value) {
                    ("platform", Some(v)) => platform = Some(v.value.to_string()),
                    ("platform", None) => {
                        return Err(err(line, "missing a value on flag: platform".into()));
                    }
                    (other, _) => return Err(err(line, format!("unknown flag: {other}"))),
                }
            }
            let name = match &from.as_ {
                None => None,
                Some((_, n)) => {
                    let lower = n.value.to_ascii_lowercase();
                    if !stage_name_re().is_match(&lower) {
                        return Err(err(
                            line,
                            format!(
                                "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                                n.value
                            ),
                        ));
                    }
                    if df
                        .stages
                        .iter()
                        .any(|s| s.name.as_deref() == Some(lower.as_str()))
                    {
                        return Err(err(line, format!("duplicate stage name {lower:?}")));
                    }
                    Some(lower)
                }
            };
            df.stages.push(Stage {
                index: df.stages.len(),
                name,
                base: from.image.value.to_string(),
                platform,
                line,
                original: cx.logical(from.from.span.start).0.trim().to_string(),
                instructions: Vec::new(),
            });
            continue;
        }
        let ins = cx.convert(ins)?;
        match df.stages.last_mut() {
            Some(stage) => stage.instructions.push(ins),
            None => match ins.kind {
                InstructionKind::Arg(decls) => df.global_args.extend(decls),
                // parse-dockerfile already rejects this; kept so the invariant is local.
                _ => return Err(err(ins.line, "no build stage in current context".into())),
            },
        }
    }
    Ok(df)
}

/// parse-dockerfile's message, without its own "at line" suffix, reworded where BuildKit's
/// wording is better known.
/// A parse-dockerfile error as ours. It reports an unterminated heredoc where the text ends; the
/// user needs the line that opened it.
fn crate_error(text: &str, e: &pd::Error, err: impl Fn(usize, String) -> ParseError) -> ParseError {
    let message = crate_message(e);
    let line = if message.starts_with("unterminated heredoc") {
        opening_heredoc_line(text, e.line())
    } else {
        e.line()
    };
    err(line, message)
}

/// The last line at or before `end` (1-based) that opens a heredoc (`<<`), or `end`.
fn opening_heredoc_line(text: &str, end: usize) -> usize {
    text.lines()
        .take(end)
        .enumerate()
        .filter(|(_, l)| l.contains("<<"))
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(end)
}

fn crate_message(e: &pd::Error) -> String {
    let m = format!("{e:#}");
    if let Some(word) = m
        .strip_prefix("unknown instruction '")
        .and_then(|r| r.strip_suffix('\''))
    {
        return format!("unknown instruction: {}", word.to_ascii_uppercase());
    }
    if m == "expected FROM" {
        return "no build stage in current context (instruction before the first FROM)".into();
    }
    if m == "expected at least one FROM instruction" {
        return "file with no instructions: a Dockerfile needs a FROM".into();
    }
    if let Some(r) = m.strip_prefix("expected end of here-document (") {
        return format!("unterminated heredoc ({}", r);
    }
    m
}

fn stage_name_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new("^[a-z][a-z0-9-_.]*$").expect("valid regex"))
}

/// 1-based line of byte offset `pos`.
pub(crate) fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct FoundRun {
    start: usize,
    line_end: usize,
    markers: Vec<Marker>,
    /// Offset of a `<<` that parse-dockerfile would read as a heredoc itself.
    leading_heredoc: Option<usize>,
}

/// The first RUN (or ONBUILD RUN) whose heredocs have not been read yet.
fn find_unmasked_run(
    text: &str,
    masked: &str,
    done: &[(usize, Vec<Heredoc>)],
) -> Result<Option<FoundRun>, pd::Error> {
    let mut iter = pd::parse_iter(masked)?;
    let esc = directive_escape(masked);
    for item in iter.by_ref() {
        let ins = match item {
            Ok(i) => i,
            // A later pass (pd::parse) reports it with the whole file in view.
            Err(_) => return Ok(None),
        };
        let (start, run) = match &ins {
            pd::Instruction::Run(r) => (r.run.span.start, r),
            pd::Instruction::Onbuild(o) => match &*o.instruction {
                pd::Instruction::Run(r) => (o.onbuild.span.start, r),
                _ => continue,
            },
            _ => continue,
        };
        let pd::Command::Shell(shell) = &run.arguments else {
            continue;
        };
        if done.iter().any(|(s, _)| *s == start) {
            continue;
        }
        let (line, line_end) = logical_line(text, start, esc);
        if !line.contains("<<") {
            continue;
        }
        let markers = heredoc_markers(&line);
        if markers.is_empty() {
            continue;
        }
        let leading_heredoc = if run.here_docs.is_empty() {
            None
        } else {
            text[start..shell.span.start].rfind("<<").map(|i| start + i)
        };
        return Ok(Some(FoundRun {
            start,
            line_end,
            markers,
            leading_heredoc,
        }));
    }
    Ok(None)
}

/// The `# escape=` directive's character (parse-dockerfile checks the directive's syntax).
fn directive_escape(text: &str) -> char {
    for line in text.lines() {
        let Some(d) = line.trim_start().strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = d.split_once('=') else {
            break;
        };
        if k.trim().eq_ignore_ascii_case("escape") {
            return if v.trim() == "`" { '`' } else { '\\' };
        }
    }
    '\\'
}

/// BuildKit's logical line starting at `start`: continuation lines joined (the escape character
/// and the blanks after it removed), comment lines and empty lines inside it dropped, line ends
/// (`\n`, `\r\n`) removed. Returns the line and the offset just after it.
pub(crate) fn logical_line(text: &str, start: usize, escape: char) -> (String, usize) {
    let mut out = String::new();
    let mut pos = start;
    let mut first = true;
    while pos < text.len() {
        let nl = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
        let raw = text[pos..nl].trim_end_matches(['\r', '\n']);
        pos = (nl + 1).min(text.len());
        if !first {
            let t = raw.trim_start();
            if t.starts_with('#') || t.is_empty() {
                continue;
            }
        }
        first = false;
        match strip_continuation(raw, escape) {
            Some(body) => out.push_str(body),
            None => {
                out.push_str(raw);
                return (out, pos);
            }
        }
    }
    (out, pos)
}

/// `^(.*?)\\[ \t]*$`: the line without its continuation character, or None if it has none.
fn strip_continuation(line: &str, escape: char) -> Option<&str> {
    let t = line.trim_end_matches([' ', '\t']);
    t.strip_suffix(escape)
}

/// A heredoc named on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub name: String,
    pub expand: bool,
    pub chomp: bool,
}

fn heredoc_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^(\d*)<<(-?)\s*([^<]*)$").expect("valid regex"))
}

/// BuildKit's `ParseHeredoc`: `word` as a heredoc marker, if it is one.
pub(crate) fn parse_marker(word: &str) -> Option<Marker> {
    let c = heredoc_re().captures(word)?;
    let chomp = &c[2] == "-";
    let rest = &c[3];
    if rest.is_empty() {
        return None;
    }
    let lex = ShellLex::new('\\').skip_unset_env(true);
    let words = lex.process_words(rest, &NoEnv).ok()?;
    if words.len() != 1 {
        return None;
    }
    let raw = lex.raw_quotes(true).process_words(rest, &NoEnv).ok()?;
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    // A quote that the unquoting lexer removed means part of the delimiter was quoted.
    let expand = raw.len() == 1 && quotes(&words[0]) == quotes(&raw[0]);
    Some(Marker {
        name: words[0].clone(),
        expand,
        chomp,
    })
}

/// BuildKit's `heredocsFromLine`: every heredoc marker among the words of `line`.
pub(crate) fn heredoc_markers(line: &str) -> Vec<Marker> {
    let lex = ShellLex::new('\\')
        .raw_quotes(true)
        .raw_escapes(true)
        .skip_unset_env(true);
    let words = lex.process_words(line, &NoEnv).unwrap_or_default();
    words.iter().filter_map(|w| parse_marker(w)).collect()
}

/// Reads one body per marker from `pos`. Errors with the line where the text ended.
fn read_heredocs(
    text: &str,
    mut pos: usize,
    markers: &[Marker],
) -> Result<(Vec<Heredoc>, usize), usize> {
    let mut docs = Vec::new();
    for m in markers {
        let mut content = String::new();
        let mut terminated = false;
        while pos < text.len() {
            let nl = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
            let line = &text[pos..nl];
            pos = nl;
            let mut candidate = line.trim_end_matches(['\r', '\n']);
            if m.chomp {
                candidate = candidate.trim_start_matches('\t');
            }
            if candidate == m.name {
                terminated = true;
                break;
            }
            content.push_str(line);
        }
        if !terminated {
            return Err(line_of(text, pos));
        }
        if m.chomp {
            content = chomp(&content);
        }
        docs.push(Heredoc {
            name: m.name.clone(),
            content,
            expand: m.expand,
            chomp: m.chomp,
        });
    }
    Ok((docs, pos))
}

/// `<<-`: leading tabs removed from every line.
fn chomp(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// BuildKit's `parseWords`: white-space separated words, quotes and escapes kept.
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut blank_ok = false;
    let chars: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        let last = i + 1 == chars.len();
        if !in_word {
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            in_word = true;
        }
        match quote {
            None => {
                if ch.is_whitespace() {
                    if blank_ok || !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                    in_word = false;
                    blank_ok = false;
                    i += 1;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    quote = Some(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    if last {
                        i += 1;
                        continue;
                    }
                    cur.push(ch);
                    i += 1;
                }
                cur.push(chars[i]);
            }
            Some(q) => {
                if ch == q {
                    quote = None;
                }
                if ch == escape && q != '\'' {
                    if last {
                        quote = None;
                        i += 1;
                        continue;
                    }
                    cur.push(ch);
                    i += 1;
                }
                cur.push(chars[i]);
            }
        }
        i += 1;
    }
    if in_word && (blank_ok || !cur.is_empty()) {
        words.push(cur);
    }
    words
}

struct Cx<'a> {
    text: &'a str,
    escape: char,
    file: &'a Path,
    run_heredocs: &'a [(usize, Vec<Heredoc>)],
}

impl Cx<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    fn logical(&self, start: usize) -> (String, usize) {
        logical_line(self.text, start, self.escape)
    }

    /// The logical line from `start` to its end, trimmed (an instruction's arguments).
    fn rest(&self, start: usize) -> String {
        self.logical(start).0.trim().to_string()
    }

    /// The arguments of the instruction whose keyword ends at `kw_end`.
    fn args(&self, kw_end: usize) -> String {
        self.rest(kw_end)
    }

    fn command(&self, c: &pd::Command<'_>) -> Command {
        match c {
            pd::Command::Exec(v) => {
                Command::Exec(v.value.iter().map(|s| s.value.to_string()).collect())
            }
            pd::Command::Shell(s) => Command::Shell(self.rest(s.span.start)),
            // The enum is non_exhaustive; a new form would need handling here first.
            _ => Command::Shell(String::new()),
        }
    }

    fn convert(&self, ins: &pd::Instruction<'_>) -> Result<Instruction, ParseError> {
        let start = keyword_span(ins).start;
        let line = line_of(self.text, start);
        let original = self.logical(start).0.trim().to_string();
        let kw_end = keyword_span(ins).end;
        let kind = match ins {
            // Only reachable as an ONBUILD trigger: a top-level FROM starts a stage.
            pd::Instruction::From(_) => {
                return Err(self.err(line, "FROM isn't allowed as an ONBUILD trigger"));
            }
            pd::Instruction::Arg(_) => {
                let words = parse_words(&self.args(kw_end), self.escape);
                let mut decls = Vec::new();
                for w in words {
                    let (name, default) = match w.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (w, None),
                    };
                    if name.is_empty() {
                        return Err(self.err(line, "ARG names can not be blank"));
                    }
                    decls.push(ArgDecl {
                        name,
                        default,
                        line,
                    });
                }
                InstructionKind::Arg(decls)
            }
            pd::Instruction::Env(_) => {
                InstructionKind::Env(self.name_vals(line, "ENV", &self.args(kw_end))?)
            }
            pd::Instruction::Label(_) => {
                InstructionKind::Label(self.name_vals(line, "LABEL", &self.args(kw_end))?)
            }
            pd::Instruction::Run(r) => {
                let mut flags = Vec::new();
                for f in &r.options {
                    let name = f.name.value.to_string();
                    if !matches!(name.as_str(), "mount" | "network" | "security" | "device") {
                        return Err(self.err(line, format!("unknown flag: {name}")));
                    }
                    if f.value.is_none() {
                        return Err(self.err(line, format!("missing a value on flag: {name}")));
                    }
                    flags.push(Flag {
                        name,
                        value: f.value.as_ref().map(|v| v.value.to_string()),
                    });
                }
                let command = self.command(&r.arguments);
                let outer = self
                    .run_heredocs
                    .iter()
                    .find(|(s, _)| *s == start || self.onbuild_inner_start(*s, start));
                let heredocs = outer.map(|(_, d)| d.clone()).unwrap_or_default();
                InstructionKind::Run(RunInstruction {
                    flags,
                    command,
                    heredocs,
                })
            }
            pd::Instruction::Copy(c) => InstructionKind::Copy(
                self.copy(line, "COPY", &original, &c.options, &c.src, &c.dest)?,
            ),
            pd::Instruction::Add(a) => InstructionKind::Add(
                self.copy(line, "ADD", &original, &a.options, &a.src, &a.dest)?,
            ),
            pd::Instruction::Workdir(_) => InstructionKind::Workdir(self.args(kw_end)),
            pd::Instruction::User(_) => InstructionKind::User(self.args(kw_end)),
            pd::Instruction::Stopsignal(_) => InstructionKind::Stopsignal(self.args(kw_end)),
            pd::Instruction::Maintainer(_) => InstructionKind::Maintainer(self.args(kw_end)),
            pd::Instruction::Expose(_) => InstructionKind::Expose(
                self.args(kw_end)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
            ),
            pd::Instruction::Volume(v) => InstructionKind::Volume(match &v.arguments {
                pd::JsonOrStringArray::Json(a) => {
                    let vols: Vec<String> =
                        a.value.iter().map(|s| s.value.trim().to_string()).collect();
                    if vols.is_empty() {
                        return Err(self.err(line, "VOLUME requires at least one argument"));
                    }
                    if vols.iter().any(String::is_empty) {
                        return Err(self.err(line, "VOLUME specified can not be an empty string"));
                    }
                    vols
                }
                pd::JsonOrStringArray::String(_) => self
                    .args(kw_end)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
            }),
            pd::Instruction::Cmd(c) => InstructionKind::Cmd(self.command(&c.arguments)),
            pd::Instruction::Entrypoint(e) => {
                InstructionKind::Entrypoint(self.command(&e.arguments))
            }
            pd::Instruction::Shell(s) => {
                InstructionKind::Shell(s.arguments.iter().map(|a| a.value.to_string()).collect())
            }
            pd::Instruction::Healthcheck(h) => {
                InstructionKind::Healthcheck(self.healthcheck(line, h)?)
            }
            pd::Instruction::Onbuild(o) => {
                let inner = self.convert(&o.instruction)?;
                if matches!(&*o.instruction, pd::Instruction::Maintainer(_)) {
                    return Err(self.err(line, "MAINTAINER isn't allowed as an ONBUILD trigger"));
                }
                let mut trigger = self.rest(keyword_span(&o.instruction).start);
                let docs: Vec<&Heredoc> = match &inner.kind {
                    InstructionKind::Run(r) => r.heredocs.iter().collect(),
                    InstructionKind::Copy(c) | InstructionKind::Add(c) => c
                        .sources
                        .iter()
                        .filter_map(|s| match s {
                            Source::Heredoc(h) => Some(h),
                            Source::Path(_) => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                for d in docs {
                    trigger.push('\n');
                    trigger.push_str(&d.content);
                    trigger.push_str(&d.name);
                }
                InstructionKind::Onbuild {
                    trigger,
                    parsed: Box::new(inner),
                }
            }
            _ => return Err(self.err(line, "unsupported instruction")),
        };
        Ok(Instruction {
            line,
            original,
            kind,
        })
    }

    /// ONBUILD RUN heredocs are keyed by the ONBUILD's offset; `convert` of the inner RUN sees
    /// its own offset, which lies after it on the same line.
    fn onbuild_inner_start(&self, outer: usize, inner: usize) -> bool {
        outer < inner && !self.text[outer..inner].contains('\n')
    }

    /// ENV and LABEL: `k=v k2=v2` or the old `k v` form (BuildKit's `parseNameVal`).
    fn name_vals(&self, line: usize, cmd: &str, rest: &str) -> Result<Vec<KeyValue>, ParseError> {
        let words = parse_words(rest, self.escape);
        let Some(first) = words.first() else {
            return Err(self.err(line, format!("{cmd} requires at least one argument")));
        };
        if !first.contains('=') {
            let mut parts = rest.splitn(2, [' ', '\t', '\r', '\x0b', '\x0c']);
            let key = parts.next().unwrap_or_default().to_string();
            let value = parts.next().map(|v| v.trim_start().to_string());
            return match value {
                Some(value) if !value.is_empty() => Ok(vec![KeyValue { key, value }]),
                _ => Err(self.err(line, format!("{cmd} must have two arguments"))),
            };
        }
        let mut out = Vec::new();
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                return Err(self.err(
                    line,
                    format!(
                        "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
                    ),
                ));
            };
            if k.is_empty() {
                return Err(self.err(line, format!("{cmd} names can not be blank")));
            }
            out.push(KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            });
        }
        Ok(out)
    }

    fn copy(
        &self,
        line: usize,
        cmd: &str,
        original: &str,
        options: &[pd::Flag<'_>],
        src: &[pd::Source<'_>],
        dest: &pd::UnescapedString<'_>,
    ) -> Result<CopyInstruction, ParseError> {
        let mut c = CopyInstruction::default();
        let is_copy = cmd == "COPY";
        for f in options {
            let name = &*f.name.value;
            let value = f.value.as_ref().map(|v| v.value.to_string());
            let need = |v: Option<String>| {
                v.ok_or_else(|| self.err(line, format!("missing a value on flag: {name}")))
            };
            let boolean = |v: Option<String>| match v.as_deref() {
                None | Some("true") => Ok(true),
                Some("false") => Ok(false),
                Some(other) => Err(self.err(
                    line,
                    format!("expecting boolean value for flag {name}, not: {other}"),
                )),
            };
            match name {
                "chown" => c.chown = Some(need(value)?),
                "chmod" => c.chmod = Some(need(value)?),
                "link" => c.link = boolean(value)?,
                "exclude" => c.exclude.push(need(value)?),
                "from" if is_copy => c.from = Some(need(value)?),
                "parents" if is_copy => c.parents = boolean(value)?,
                "checksum" if !is_copy => c.checksum = Some(need(value)?),
                "keep-git-dir" if !is_copy => c.keep_git_dir = boolean(value)?,
                "unpack" if !is_copy => c.unpack = Some(boolean(value)?),
                _ => return Err(self.err(line, format!("unknown flag: {name}"))),
            }
        }
        // Heredoc names come from BuildKit's reading of the command line; bodies from
        // parse-dockerfile, in the same order.
        let mut markers = heredoc_markers(original).into_iter();
        for s in src {
            c.sources.push(match s {
                pd::Source::Path(p) => Source::Path(p.value.to_string()),
                pd::Source::HereDoc(h) => {
                    let m = markers
                        .next()
                        .ok_or_else(|| self.err(line, "heredoc marker not found"))?;
                    Source::Heredoc(Heredoc {
                        name: m.name,
                        content: h.value.to_string(),
                        expand: h.expand,
                        chomp: m.chomp,
                    })
                }
                _ => return Err(self.err(line, "unsupported COPY source")),
            });
        }
        c.dest = dest.value.to_string();
        if parse_marker(&c.dest).is_some() {
            return Err(self.err(
                line,
                format!("{cmd} cannot accept a heredoc as a destination"),
            ));
        }
        Ok(c)
    }

    fn healthcheck(
        &self,
        line: usize,
        h: &pd::HealthcheckInstruction<'_>,
    ) -> Result<Healthcheck, ParseError> {
        let pd::HealthcheckArguments::Cmd { arguments, .. } = &h.arguments else {
            if !h.options.is_empty() {
                return Err(self.err(line, "HEALTHCHECK NONE takes no arguments"));
            }
            return Ok(Healthcheck::None);
        };
        let mut durations = [Duration::ZERO; 4];
        let mut retries = 0;
        for f in &h.options {
            let name = &*f.name.value;
            let value = f
                .value
                .as_ref()
                .map(|v| v.value.to_string())
                .unwrap_or_default();
            let slot = match name {
                "interval" => 0,
                "timeout" => 1,
                "start-period" => 2,
                "start-interval" => 3,
                "retries" => {
                    retries = value.parse::<i64>().map_err(|_| {
                        self.err(line, format!("invalid value for --retries: {value:?}"))
                    })?;
                    if retries < 0 {
                        return Err(
                            self.err(line, format!("--retries cannot be negative ({retries})"))
                        );
                    }
                    continue;
                }
                _ => return Err(self.err(line, format!("unknown flag: {name}"))),
            };
            let d = parse_go_duration(&value).ok_or_else(|| {
                self.err(line, format!("invalid duration for --{name}: {value:?}"))
            })?;
            if !d.is_zero() && d < Duration::from_millis(1) {
                return Err(self.err(line, format!("interval {name:?} cannot be less than 1ms")));
            }
            durations[slot] = d;
        }
        let test = match self.command(arguments) {
            Command::Exec(argv) => {
                if argv.is_empty() {
                    return Err(self.err(line, "Missing command after HEALTHCHECK CMD"));
                }
                std::iter::once("CMD".to_string()).chain(argv).collect()
            }
            Command::Shell(text) => {
                if text.is_empty() {
                    return Err(self.err(line, "Missing command after HEALTHCHECK CMD"));
                }
                vec!["CMD-SHELL".to_string(), text]
            }
        };
        let [interval, timeout, start_period, start_interval] = durations;
        Ok(Healthcheck::Check {
            test,
            interval,
            timeout,
            start_period,
            start_interval,
            retries: u32::try_from(retries).unwrap_or(u32::MAX),
        })
    }
}

fn keyword_span(ins: &pd::Instruction<'_>) -> std::ops::Range<usize> {
    use pd::Instruction as I;
    match ins {
        I::Add(i) => i.add.span.clone(),
        I::Arg(i) => i.arg.span.clone(),
        I::Cmd(i) => i.cmd.span.clone(),
        I::Copy(i) => i.copy.span.clone(),
        I::Entrypoint(i) => i.entrypoint.span.clone(),
        I::Env(i) => i.env.span.clone(),
        I::Expose(i) => i.expose.span.clone(),
        I::From(i) => i.from.span.clone(),
        I::Healthcheck(i) => i.healthcheck.span.clone(),
        I::Label(i) => i.label.span.clone(),
        I::Maintainer(i) => i.maintainer.span.clone(),
        I::Onbuild(i) => i.onbuild.span.clone(),
        I::Run(i) => i.run.span.clone(),
        I::Shell(i) => i.shell.span.clone(),
        I::Stopsignal(i) => i.stopsignal.span.clone(),
        I::User(i) => i.user.span.clone(),
        I::Volume(i) => i.volume.span.clone(),
        I::Workdir(i) => i.workdir.span.clone(),
        _ => 0..0,
    }
}

/// Go's `time.ParseDuration` (what Docker uses for HEALTHCHECK flags): `1h2m3.5s`, `300ms`,
/// units ns, us, µs, ms, s, m, h; a bare `0` is allowed. Negative durations are rejected.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = after;
    }
    Some(Duration::from_secs_f64(total))
}
