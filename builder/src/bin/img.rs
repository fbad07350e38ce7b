//! The `img` command line.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "img",
    about = "Build and manage container images without a daemon",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version of img and of imgfs.
    Version,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Version => println!("{}", builder::version_string()),
    }
    Ok(())
}
