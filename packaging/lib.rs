//! Empty: this manifest only carries the package metadata (see Cargo.toml).
