#!/usr/bin/env bash
# Proves that cim-spec and cim-model stay no_std (DESIGN.md), and that the proof can fail:
# 1. builds crates/nostd-check, a #![no_std] crate with its own panic handler that links
#    both (any std in their dependency graph makes that build fail);
# 2. on a scratch copy of the tree with `extern crate std;` added to cim-spec, demands
#    that the same build FAILS with the duplicate `panic_impl` error.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# nostd-check is a workspace of its own (see the root Cargo.toml's `exclude`).
manifest=crates/nostd-check/Cargo.toml
export CARGO_TARGET_DIR="$root/target/nostd-check"
echo "no_std check: building nostd-check against cim-spec and cim-model"
cargo build --quiet --manifest-path "$manifest"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$scratch"/ 2>/dev/null || true
sed -i 's/^extern crate alloc;$/extern crate alloc;\nextern crate std;/' "$scratch/crates/cim-spec/src/lib.rs"
grep -q '^extern crate std;$' "$scratch/crates/cim-spec/src/lib.rs" || {
    echo "no_std self-test: could not inject a std import into the scratch copy" >&2
    exit 1
}
log="$scratch/build.log"
if (cd "$scratch" && CARGO_TARGET_DIR="$root/target/nostd-selftest" cargo build --quiet --manifest-path "$manifest") >"$log" 2>&1; then
    echo "no_std self-test FAILED: nostd-check still builds after cim-spec imported std" >&2
    exit 1
fi
if ! grep -q 'duplicate lang item' "$log"; then
    echo "no_std self-test: the build failed, but not for the expected reason:" >&2
    cat "$log" >&2
    exit 1
fi
echo "no_std check: ok (and a std import in cim-spec is caught)"
