//! Builds the C side of `src/decode/gzip.rs` against the system's ISA-L (`libisal-dev` on
//! Debian; `scripts/install-deps.sh` installs it), found with pkg-config.

fn main() {
    println!("cargo:rerun-if-changed=src/decode/isal_gzip.c");
    let isal = pkg_config::Config::new()
        .atleast_version("2.30")
        .probe("libisal")
        .unwrap_or_else(|e| {
            panic!("ISA-L (libisal, 2.30 or later) is needed to build dupmirror; on Debian: apt-get install libisal-dev\n{e}")
        });
    cc::Build::new()
        .file("src/decode/isal_gzip.c")
        .includes(&isal.include_paths)
        .warnings(true)
        .compile("dupmirror_isal_gzip");
}
