#!/usr/bin/env bash
# Architecture checks (docs: STYLE.md, "Nothing below the daemon imports the
# daemon"; "a file past ~600 lines counts as too big"):
#  1. no module under src/ other than src/main.rs, src/cli/ and the daemon
#     itself (src/daemon/) refers to the daemon: `crate::daemon` paths, `use
#     crate::{…, daemon…}` lists, or `super::daemon` from the crate root's
#     children;
#  2. no .rs file under src/ is longer than MAX_LINES (600) lines, unit
#     tests included (move a large `mod tests` into a sibling tests.rs).
# Prints every offence and exits 1, or exits 0 when clean. Needs only bash,
# coreutils and grep. Run from anywhere: it checks the tree it lives in.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
max_lines="${MAX_LINES:-600}"
cd "$root"

failed=0
up_arrows=()
too_long=()

while IFS= read -r -d '' file; do
    case "$file" in
        src/main.rs | src/cli/* | src/daemon/*) ;;
        *)
            # Whole-line comments out, then one line per file so that `use`
            # lists spanning several lines are seen whole.
            flat="$(grep -v '^[[:space:]]*//' "$file" | tr '\n' ' ' || true)"
            use_lists="$(grep -oE '\buse[[:space:]]+crate::\{[^;]*;' <<<"$flat" || true)"
            if grep -qE '\b(crate|super)::daemon\b' <<<"$flat" ||
                grep -qE '\bdaemon\b' <<<"$use_lists"; then
                up_arrows+=("$file")
            fi
            ;;
    esac
    lines=$(wc -l <"$file")
    if [ "$lines" -gt "$max_lines" ]; then
        too_long+=("$file ($lines lines)")
    fi
done < <(find src -name '*.rs' -print0 | sort -z)

if [ "${#up_arrows[@]}" -gt 0 ]; then
    failed=1
    echo "These modules import the daemon (crate::daemon); only src/main.rs, src/cli/ and src/daemon/ may:"
    printf '  %s\n' "${up_arrows[@]}"
fi
if [ "${#too_long[@]}" -gt 0 ]; then
    failed=1
    echo "These files are longer than $max_lines lines; split them by what changes together:"
    printf '  %s\n' "${too_long[@]}"
fi
if [ "$failed" -eq 0 ]; then
    echo "architecture: ok (no module below the daemon imports it; no file over $max_lines lines)"
fi
exit "$failed"
