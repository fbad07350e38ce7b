//! `--chmod` values of COPY/ADD: parsed (`Chmod::parse`) and applied to a source's mode.

use super::ContextError;

/// A `--chmod` value: octal, or chmod(1)'s symbolic form (`u=rwX,go=rX`), which BuildKit's
/// Dockerfile frontend accepts in recent versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<ChmodClause>),
}

/// One `who op perms` clause of a symbolic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChmodClause {
    /// Bits of the classes named (u: 0o4700, g: 0o2070, o: 0o1007 masks).
    who: u32,
    op: char,
    perms: String,
}

impl Chmod {
    pub fn parse(value: &str) -> Result<Chmod, ContextError> {
        let bad = || ContextError::BadChmod {
            value: value.to_string(),
        };
        if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) {
            let mode = u32::from_str_radix(value, 8).map_err(|_| bad())?;
            return if mode > 0o7777 {
                Err(bad())
            } else {
                Ok(Chmod::Octal(mode))
            };
        }
        let mut clauses = Vec::new();
        for part in value.split(',') {
            let who_end = part.find(|c: char| !"ugoa".contains(c)).ok_or_else(bad)?;
            let mut who = 0;
            for c in part[..who_end].chars() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    _ => 0o7777,
                };
            }
            if who == 0 {
                who = 0o7777;
            }
            let rest = &part[who_end..];
            // Several ops may follow one who: `u+x-w`.
            let mut ops = rest
                .char_indices()
                .filter(|(_, c)| "+-=".contains(*c))
                .peekable();
            if ops.peek().map(|(i, _)| *i) != Some(0) {
                return Err(bad());
            }
            let starts: Vec<(usize, char)> = ops.collect();
            for (k, (at, op)) in starts.iter().enumerate() {
                let end = starts.get(k + 1).map(|(i, _)| *i).unwrap_or(rest.len());
                let perms = &rest[at + 1..end];
                if !perms.chars().all(|c| "rwxXst".contains(c)) {
                    return Err(bad());
                }
                clauses.push(ChmodClause {
                    who,
                    op: *op,
                    perms: perms.to_string(),
                });
            }
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode a file or directory gets, given its mode in the source.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for c in clauses {
                    let mut bits = 0;
                    for p in c.perms.chars() {
                        bits |= match p {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            'X' if is_dir || mode & 0o111 != 0 => 0o111,
                            's' => 0o6000,
                            't' => 0o1000,
                            _ => 0,
                        };
                    }
                    let bits = bits & c.who;
                    mode = match c.op {
                        '+' => mode | bits,
                        '-' => mode & !bits,
                        _ => (mode & !(c.who & 0o7777)) | bits,
                    };
                }
                mode
            }
        }
    }
}
