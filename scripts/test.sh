#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit + property + end-to-end tests
# (real gateway, real upstream, real redis-server on loopback), then the black-box conformance
# check of ../shared/conformance when it is present.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh --test

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test
# The fuzz targets are a workspace of their own (`cargo fuzz`, docs/hardening.md), outside
# `cargo test`: check that they still build against the library's API.
cargo check --manifest-path fuzz/Cargo.toml

conformance=../shared/conformance/run.py
if [ -f "$conformance" ]; then
  python3 "$conformance" --bin target/debug/termsgate
fi
