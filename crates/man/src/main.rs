//! `gce-man OUT_DIR`: writes every shipped binary's manual page to `OUT_DIR/manN/NAME.N` and
//! prints the paths. scripts/package runs it; the pages are never committed.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .context("usage: gce-man OUT_DIR")?;
    for path in gce_man::generate(std::path::Path::new(&out))? {
        println!("{}", path.display());
    }
    Ok(())
}
