//! The Dockerfile frontend: everything the build engine needs from a Dockerfile, so the engine
//! never touches Dockerfile text.
//!
//! `parse` turns text into `Dockerfile` (stages of typed, unexpanded `Instruction`s, with line
//! numbers and the source text Docker records in history). `Instruction::expand` substitutes
//! variables exactly where BuildKit does, at dispatch time, with the stage's environment.
//! `RunInstruction::command` gives the argv of a RUN step. `Dockerfile::needed_stages` is the stage
//! graph. Parsing never touches the file system.
//!
//! Tokenising is parse-dockerfile's; this module adds what that crate leaves out (BuildKit's
//! logical lines, key/value splitting, heredocs anywhere in a RUN line, flag checking) and keeps
//! BuildKit's error messages where they matter.

pub mod lex;

mod args;
mod expand;
mod parse;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use args::{ArgScope, PLATFORM_ARGS, PREDEFINED_ARGS};
pub use expand::{Expanded, RunCommand};
pub use lex::{Env, LexError, NoEnv, ShellLex};
pub use parse::parse;

/// A Dockerfile error with the place it comes from: displays as `Dockerfile:12: message`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct ParseError {
    /// The Dockerfile's name as it was given to `parse`.
    pub file: PathBuf,
    /// 1-based line number (0 when the error is about the file as a whole).
    pub line: usize,
    /// What is wrong, lowercase.
    pub message: String,
}

/// A parsed Dockerfile. Nothing in it is expanded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The file name given to `parse`, for messages.
    pub file: PathBuf,
    /// The escape character (`\` or `` ` `` from the `# escape=` directive).
    pub escape: char,
    /// The `# syntax=` directive: img has only its built-in frontend, so the engine can print a
    /// note that it ignores this.
    pub syntax: Option<String>,
    /// The ARGs before the first FROM; visible only in FROM lines unless a stage redeclares them.
    pub global_args: Vec<ArgDecl>,
    /// The stages in file order.
    pub stages: Vec<Stage>,
}

/// One `FROM` and the instructions up to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Position in the file, from 0.
    pub index: usize,
    /// The `AS` name, lowercased as Docker does.
    pub name: Option<String>,
    /// The image or stage reference as written (may contain `${ARG}` of global args).
    pub base: String,
    /// `--platform`, unexpanded.
    pub platform: Option<String>,
    /// Line of the FROM.
    pub line: usize,
    /// The FROM line as written on one line.
    pub original: String,
    /// The stage's instructions.
    pub instructions: Vec<Instruction>,
}

/// One instruction of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// First line of the instruction.
    pub line: usize,
    /// The instruction's source on one line, continuations joined as BuildKit joins them (what
    /// Docker puts in history `created_by`); heredoc bodies are not included.
    pub original: String,
    /// What the instruction says.
    pub kind: InstructionKind,
}

/// A variable declared by ARG, with its default as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// The name as written (expanded at dispatch).
    pub name: String,
    /// `ARG name=default`: the default as written, quotes included.
    pub default: Option<String>,
    /// Line of the ARG instruction.
    pub line: usize,
}

/// A `key=value` pair of ENV or LABEL, both as written (quotes included; expanded at dispatch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// A command of RUN, CMD, ENTRYPOINT or HEALTHCHECK CMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// JSON form: the argv as written.
    Exec(Vec<String>),
    /// Shell form: the text given to the SHELL, continuations joined.
    Shell(String),
}

/// A flag as written: `--name=value` or `--name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
}

/// A here-document of RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`<<"EOF"` gives `EOF`); COPY uses it as the file
    /// name.
    pub name: String,
    /// The body, every line with its newline; for `<<-` leading tabs are already removed.
    pub content: String,
    /// False when any part of the delimiter was quoted: then the body is never expanded.
    pub expand: bool,
    /// `<<-`: leading tabs were stripped from the body.
    pub chomp: bool,
}

/// A source of COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path in the context (or stage), or a URL for ADD; as written.
    Path(String),
    /// An inline file.
    Heredoc(Heredoc),
}

/// COPY or ADD. The fields a command does not take stay at their defaults: the parser rejects
/// `ADD --from` and `COPY --checksum` as unknown flags, as BuildKit does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyInstruction {
    pub sources: Vec<Source>,
    pub dest: String,
    /// COPY `--from`: a stage name, a stage index or an image reference.
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    /// COPY `--parents`.
    pub parents: bool,
    /// `--exclude` patterns, in order.
    pub exclude: Vec<String>,
    /// ADD `--checksum`.
    pub checksum: Option<String>,
    /// ADD `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// ADD `--unpack` (None: BuildKit's default, unpack local archives only).
    pub unpack: Option<bool>,
}

/// RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstruction {
    /// `--mount`, `--network`, `--security`, `--device` as written, in order.
    pub flags: Vec<Flag>,
    pub command: Command,
    /// The heredocs named in a shell-form command line, in order.
    pub heredocs: Vec<Heredoc>,
}

/// HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: stored by Docker as test `["NONE"]`.
    None,
    /// `HEALTHCHECK [flags] CMD ...`.
    Check {
        /// As Docker stores it: `["CMD", argv...]` or `["CMD-SHELL", text]`.
        test: Vec<String>,
        /// Zero when not given (Docker's "inherit/default").
        interval: Duration,
        timeout: Duration,
        start_period: Duration,
        start_interval: Duration,
        retries: u32,
    },
}

/// What an instruction says, one variant per instruction (FROM starts a `Stage` instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionKind {
    Arg(Vec<ArgDecl>),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Run(RunInstruction),
    Copy(CopyInstruction),
    Add(CopyInstruction),
    Workdir(String),
    User(String),
    /// The port words as written (each may expand to several).
    Expose(Vec<String>),
    /// The paths, from the JSON form or split at white space.
    Volume(Vec<String>),
    Cmd(Command),
    Entrypoint(Command),
    /// The JSON array.
    Shell(Vec<String>),
    Stopsignal(String),
    Healthcheck(Healthcheck),
    Onbuild {
        /// The trigger as Docker stores it in the image config (`ONBUILD` removed, heredoc
        /// bodies appended).
        trigger: String,
        /// The trigger parsed, for checking now.
        parsed: Box<Instruction>,
    },
    Maintainer(String),
}

impl InstructionKind {
    /// The instruction's keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Arg(_) => "ARG",
            Self::Env(_) => "ENV",
            Self::Label(_) => "LABEL",
            Self::Run(_) => "RUN",
            Self::Copy(_) => "COPY",
            Self::Add(_) => "ADD",
            Self::Workdir(_) => "WORKDIR",
            Self::User(_) => "USER",
            Self::Expose(_) => "EXPOSE",
            Self::Volume(_) => "VOLUME",
            Self::Cmd(_) => "CMD",
            Self::Entrypoint(_) => "ENTRYPOINT",
            Self::Shell(_) => "SHELL",
            Self::Stopsignal(_) => "STOPSIGNAL",
            Self::Healthcheck(_) => "HEALTHCHECK",
            Self::Onbuild { .. } => "ONBUILD",
            Self::Maintainer(_) => "MAINTAINER",
        }
    }
}

impl Dockerfile {
    /// The lexer for this file's escape character.
    pub fn lexer(&self) -> ShellLex {
        ShellLex::new(self.escape)
    }

    /// The stage that `name_or_index` names: a stage name (case-insensitive), or a number less
    /// than the number of stages. Docker only allows numbers of earlier stages; `needed_stages`
    /// checks that for the stage that refers.
    pub fn stage_index(&self, name_or_index: &str) -> Option<usize> {
        let lower = name_or_index.to_ascii_lowercase();
        if let Some(s) = self
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            return Some(s.index);
        }
        name_or_index
            .parse::<usize>()
            .ok()
            .filter(|&i| i < self.stages.len())
    }

    fn error(&self, line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.clone(),
            line,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests;
