//! The runner's command line, in the library so that its manual page (crates/man) is generated
//! from the same definition `main` parses with.

use clap::Parser;
use gce_agent::CommonArgs;

use crate::ScriptKind;

#[derive(Debug, Parser)]
#[command(
    name = "gce-metadata-script-runner",
    version,
    about = "Run the startup or shutdown scripts from GCE metadata"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Which scripts to run.
    #[arg(value_enum)]
    pub kind: ScriptKind,
}
