//! Dispatch-time work on parsed instructions: variable expansion where BuildKit expands, the argv
//! of RUN, and the stage graph.

use std::path::Path;

use super::lex::{Env, NoEnv, ShellLex};
use super::parse::parse_marker;
use super::{
    ArgDecl, Command, CopyInstruction, Dockerfile, Flag, Instruction, InstructionKind, KeyValue,
    ParseError, RunInstruction, Source,
};

/// An instruction's kind with every word Docker expands already expanded.
pub type Expanded = InstructionKind;

impl Instruction {
    /// Expands the words BuildKit expands, with `env` (the stage's ENV over its ARGs):
    /// ARG names and defaults; ENV and LABEL keys and values; COPY/ADD sources, destination,
    /// `--chown`, `--chmod` (and ADD `--checksum`), and heredoc bodies whose delimiter is unquoted
    /// (with quotes kept, as they are file content); WORKDIR, USER, STOPSIGNAL; each VOLUME;
    /// EXPOSE (which may split into several ports); RUN `--mount`/`--network`/... values.
    /// Left alone, as in BuildKit: RUN/CMD/ENTRYPOINT/HEALTHCHECK commands and RUN heredocs (the
    /// shell expands them at run time), SHELL, ONBUILD triggers (expanded when they fire),
    /// MAINTAINER, and COPY `--from` (BuildKit rejects variables there; `needed_stages` checks).
    pub fn expand(
        &self,
        file: &Path,
        lex: &ShellLex,
        env: &dyn Env,
    ) -> Result<Expanded, ParseError> {
        let err = |e: super::LexError| ParseError {
            file: file.to_path_buf(),
            line: self.line,
            message: e.to_string(),
        };
        let w = |s: &str| lex.process_word(s, env).map_err(err);
        // BuildKit expands heredoc bodies with a lexer that always uses `\` and keeps quotes,
        // which are file content there.
        let body_lex = ShellLex::new('\\').skip_process_quotes(true);
        let body = |s: &str| body_lex.process_word(s, env).map_err(err);
        let kvs = |v: &[KeyValue]| -> Result<Vec<KeyValue>, ParseError> {
            v.iter()
                .map(|kv| {
                    Ok(KeyValue {
                        key: w(&kv.key)?,
                        value: w(&kv.value)?,
                    })
                })
                .collect()
        };
        Ok(match &self.kind {
            InstructionKind::Arg(decls) => InstructionKind::Arg(
                decls
                    .iter()
                    .map(|d| {
                        Ok(ArgDecl {
                            name: w(&d.name)?,
                            default: d.default.as_deref().map(w).transpose()?,
                            line: d.line,
                        })
                    })
                    .collect::<Result<_, ParseError>>()?,
            ),
            InstructionKind::Env(v) => InstructionKind::Env(kvs(v)?),
            InstructionKind::Label(v) => InstructionKind::Label(kvs(v)?),
            InstructionKind::Copy(c) => InstructionKind::Copy(expand_copy(c, &w, &body)?),
            InstructionKind::Add(c) => InstructionKind::Add(expand_copy(c, &w, &body)?),
            InstructionKind::Workdir(s) => InstructionKind::Workdir(w(s)?),
            InstructionKind::User(s) => InstructionKind::User(w(s)?),
            InstructionKind::Stopsignal(s) => InstructionKind::Stopsignal(w(s)?),
            InstructionKind::Volume(v) => {
                InstructionKind::Volume(v.iter().map(|s| w(s)).collect::<Result<_, _>>()?)
            }
            InstructionKind::Expose(v) => {
                let mut ports = Vec::new();
                for p in v {
                    ports.extend(lex.process_words(p, env).map_err(err)?);
                }
                ports.sort();
                InstructionKind::Expose(ports)
            }
            InstructionKind::Run(r) => InstructionKind::Run(RunInstruction {
                flags: r
                    .flags
                    .iter()
                    .map(|f| {
                        Ok(Flag {
                            name: f.name.clone(),
                            value: f.value.as_deref().map(w).transpose()?,
                        })
                    })
                    .collect::<Result<_, ParseError>>()?,
                command: r.command.clone(),
                heredocs: r.heredocs.clone(),
            }),
            other => other.clone(),
        })
    }
}

type Expander<'a> = &'a dyn Fn(&str) -> Result<String, ParseError>;

fn expand_copy(
    c: &CopyInstruction,
    w: Expander<'_>,
    body: Expander<'_>,
) -> Result<CopyInstruction, ParseError> {
    let mut out = c.clone();
    for s in &mut out.sources {
        match s {
            Source::Path(p) => *p = w(p)?,
            Source::Heredoc(h) if h.expand => h.content = body(&h.content)?,
            Source::Heredoc(_) => {}
        }
    }
    out.dest = w(&c.dest)?;
    out.chown = c.chown.as_deref().map(w).transpose()?;
    out.chmod = c.chmod.as_deref().map(w).transpose()?;
    out.checksum = c.checksum.as_deref().map(w).transpose()?;
    Ok(out)
}

/// What the engine runs for a RUN step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommand {
    /// The process's argv.
    pub argv: Vec<String>,
    /// Files that must exist, read-only, while it runs: `(absolute path, content, mode)`.
    pub files: Vec<(String, String, u32)>,
}

impl RunInstruction {
    /// The argv of this RUN given the stage's SHELL (`["/bin/sh", "-c"]` by default), as
    /// BuildKit's dispatchRun builds it:
    /// - exec form: the JSON array as is;
    /// - shell form: SHELL + [text];
    /// - a command line that is only one heredoc (`RUN <<EOF`): if the body starts with `#!` it
    ///   is written to `/dev/pipes/<name>` (mode 0755) and SHELL + ["/dev/pipes/<name>"] runs it;
    ///   otherwise SHELL + [body]. Either way the body is not expanded by img: the shell does.
    /// - any other heredoc use (`RUN cat <<EOF >f`, several heredocs): the command line with
    ///   each body and its delimiter appended after a newline, given to SHELL as one script, so
    ///   the shell sees real heredocs.
    pub fn command(&self, shell: &[String]) -> RunCommand {
        let with_shell = |arg: String| shell.iter().cloned().chain(std::iter::once(arg)).collect();
        let text = match &self.command {
            Command::Exec(argv) => {
                return RunCommand {
                    argv: argv.clone(),
                    files: Vec::new(),
                };
            }
            Command::Shell(text) => text,
        };
        if self.heredocs.is_empty() {
            return RunCommand {
                argv: with_shell(text.clone()),
                files: Vec::new(),
            };
        }
        if parse_marker(text).is_some() {
            let doc = &self.heredocs[0];
            if doc.content.starts_with("#!") {
                let path = format!("/dev/pipes/{}", doc.name);
                return RunCommand {
                    argv: with_shell(path.clone()),
                    files: vec![(path, doc.content.clone(), 0o755)],
                };
            }
            return RunCommand {
                argv: with_shell(doc.content.clone()),
                files: Vec::new(),
            };
        }
        let mut script = text.clone();
        for d in &self.heredocs {
            script.push('\n');
            script.push_str(&d.content);
            script.push_str(&d.name);
        }
        RunCommand {
            argv: with_shell(script),
            files: Vec::new(),
        }
    }
}

impl Dockerfile {
    /// The stages needed to build `target` (the last stage when None), dependencies first, the
    /// target last. A stage depends on the stage its FROM names (after expanding global ARGs
    /// with `global_env`), on `COPY --from=<stage>` and on `RUN --mount=from=<stage>`.
    ///
    /// Docker's rule for a `--from` value: a number is a stage index and must be less than the
    /// index of the stage using it; otherwise a stage name if a stage has it; otherwise an image
    /// reference, which is not an error here (the engine pulls it). A FROM that names no stage
    /// is likewise an image. Variables in `COPY --from` are an error, as in BuildKit. An unknown
    /// `target` is an error, and so is a dependency cycle.
    pub fn needed_stages(
        &self,
        target: Option<&str>,
        global_env: &dyn Env,
    ) -> Result<Vec<usize>, ParseError> {
        let target = match target {
            None => self
                .stages
                .len()
                .checked_sub(1)
                .ok_or_else(|| self.error(0, "no build stages"))?,
            Some(t) => {
                let lower = t.to_ascii_lowercase();
                self.stages
                    .iter()
                    .find(|s| s.name.as_deref() == Some(lower.as_str()))
                    .map(|s| s.index)
                    .ok_or_else(|| {
                        self.error(0, format!("target stage {t:?} could not be found"))
                    })?
            }
        };
        let mut deps = Vec::with_capacity(self.stages.len());
        for s in &self.stages {
            deps.push(self.stage_deps(s.index, global_env)?);
        }
        let mut order = Vec::new();
        let mut state = vec![0u8; self.stages.len()]; // 0 new, 1 visiting, 2 done
        self.visit(target, &deps, &mut state, &mut order)?;
        Ok(order)
    }

    fn visit(
        &self,
        i: usize,
        deps: &[Vec<usize>],
        state: &mut [u8],
        order: &mut Vec<usize>,
    ) -> Result<(), ParseError> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                return Err(
                    self.error(self.stages[i].line, "circular dependency detected on stage")
                );
            }
            _ => {}
        }
        state[i] = 1;
        for &d in &deps[i] {
            self.visit(d, deps, state, order)?;
        }
        state[i] = 2;
        order.push(i);
        Ok(())
    }

    /// The base image or stage of stage `index`, with global ARGs expanded: `Ok(Err(image))` for
    /// an image reference, `Ok(Ok(stage))` for a stage.
    pub fn stage_base(
        &self,
        index: usize,
        global_env: &dyn Env,
    ) -> Result<Result<usize, String>, ParseError> {
        let s = &self.stages[index];
        let base = self
            .lexer()
            .process_word(&s.base, global_env)
            .map_err(|e| self.error(s.line, e.to_string()))?;
        if base.is_empty() {
            return Err(self.error(
                s.line,
                format!("base name ({}) should not be blank", s.base),
            ));
        }
        let lower = base.to_ascii_lowercase();
        Ok(
            match self
                .stages
                .iter()
                .find(|o| o.name.as_deref() == Some(lower.as_str()))
            {
                Some(o) if o.index != index => Ok(o.index),
                _ => Err(base),
            },
        )
    }

    fn stage_deps(&self, index: usize, global_env: &dyn Env) -> Result<Vec<usize>, ParseError> {
        let mut out = Vec::new();
        if let Ok(i) = self.stage_base(index, global_env)? {
            out.push(i);
        }
        for ins in &self.stages[index].instructions {
            match &ins.kind {
                InstructionKind::Copy(c) => {
                    if let Some(from) = &c.from
                        && let Some(i) = self.stage_of_from(index, ins.line, from)?
                    {
                        out.push(i);
                    }
                }
                InstructionKind::Run(r) => {
                    for f in r.flags.iter().filter(|f| f.name == "mount") {
                        let value = f.value.as_deref().unwrap_or_default();
                        let value = self
                            .lexer()
                            .process_word(value, global_env)
                            .unwrap_or_else(|_| value.to_string());
                        let from = value.split(',').find_map(|kv| kv.strip_prefix("from="));
                        if let Some(from) = from
                            && let Some(i) = self.stage_of_from(index, ins.line, from)?
                        {
                            out.push(i);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// `--from` of stage `index`: the stage it names, or None for an image.
    fn stage_of_from(
        &self,
        index: usize,
        line: usize,
        from: &str,
    ) -> Result<Option<usize>, ParseError> {
        let unexpanded = ShellLex::new(self.escape).process_word(from, &NoEnv).ok();
        if unexpanded.as_deref() != Some(from) {
            return Err(self.error(line, "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"));
        }
        if let Ok(n) = from.parse::<usize>() {
            if n >= index {
                return Err(self.error(
                    line,
                    format!("invalid from flag value {n}: refers to current or future build stage"),
                ));
            }
            return Ok(Some(n));
        }
        let lower = from.to_ascii_lowercase();
        Ok(self
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
            .map(|s| s.index))
    }
}
