#!/usr/bin/env bash
# Builds the book (docs/, mdBook) into docs/book/ and checks the links of
# README.md, the book and benches/README.md (mdBook does not fail on a
# broken internal link; scripts/check-doc-links.py does).
#
#   scripts/build-book.sh
#
# mdBook is installed on first use with `cargo install` (pinned, --locked,
# without its default features: no live-reload server, watcher or search
# index) into ${BULK_EXPORT_TOOLS:-~/.cache/bulk-export/tools}, outside the
# clone, so that another clone or `cargo clean` does not build it again and
# a second run starts at once. The first install compiles mdBook: a few
# minutes on two cores. Needs cargo and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

MDBOOK_VERSION=0.5.4
TOOLS=${BULK_EXPORT_TOOLS:-$HOME/.cache/bulk-export/tools}
MDBOOK=$TOOLS/bin/mdbook

if [ ! -x "$MDBOOK" ] || [ "$("$MDBOOK" --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
  echo "installing mdBook $MDBOOK_VERSION into $TOOLS (once)" >&2
  # Not built as part of this workspace: no clippy wrapper, no -D warnings,
  # and a target folder of cargo's own choosing (removed when it is done).
  env -u RUSTC_WORKSPACE_WRAPPER -u RUSTFLAGS -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
    cargo install mdbook --locked --version "$MDBOOK_VERSION" --no-default-features \
    --root "$TOOLS" --force
fi

"$MDBOOK" build docs
python3 scripts/check-doc-links.py
