//! `.dockerignore` patterns with the semantics of Docker's pattern matcher.
