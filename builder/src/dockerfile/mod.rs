//! The Dockerfile frontend: parsing (parse-dockerfile) and word expansion (BuildKit shell lexer semantics).

pub mod lex;
