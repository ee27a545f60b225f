#!/usr/bin/env bash
# Runs cargo-mutants on the mutants an earlier full run left alive in the sync client and server
# (docs/bench.md, "The missed mutants, with their checks"), not on all ~180: minutes instead of
# most of an hour on a two-core machine.
#
#   scripts/mutants-missed.sh [COMMIT]     # default HEAD; prints cargo-mutants' summary
#
# The mutants are chosen by function and operator, not by line (lines move as the files change),
# so a few neighbours in the same functions come along. cargo-mutants runs `--in-place` in a
# disposable export of COMMIT (it rewrites the files it tests, and the working tree may be shared),
# with the settings of .cargo/mutants.toml. Results: $OUT/mutants.out (caught.txt, missed.txt, ...).
set -euo pipefail

commit="${1:-HEAD}"
root="$(git rev-parse --show-toplevel)"
work="$(mktemp -d "${TMPDIR:-/tmp}/drill-mutants.XXXXXX")"
OUT="${OUT:-$work/out}"
mkdir -p "$work/tree" "$OUT"
git -C "$root" archive "$commit" | tar -x -C "$work/tree"

missed=(
    -F 'replace \+ with [-*] in Client::push'                               # renumbering: base + 1 + i
    -F 'replace \+ with [-*] in Client::commit'                             # next.max(w + 1)
    -F 'replace (\|\||!=) with (&&|==) in Client::reconciled'               # which writes were renumbered
    -F 'replace < with <= in Client::reconciled'                            # reconcile cursor regression
    -F 'replace match guard code == "staleWriteId" with true in Client::push'
    -F 'replace Client::outbox_write_id'
    -F 'replace \+= with [-*]= in Client::pull'                             # the page count
    -F 'replace ExportedState::to_json'
    -F 'replace Client::replica '
    -F 'replace < with <= in Client::pull'                                  # the page budget
    -F 'replace \|\| with && in Client::pull'                               # the pulled event's chain check
    -F 'replace < with > in Client::push'                                   # version-1 pushes carry no op ids
    -F 'replace \* with \+ in Server::compact'                              # retention at twice the kept events
    -F 'replace > with >= in Server::pull'                                  # hasMore means more items
)

cd "$work/tree"
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_INCREMENTAL=true \
    cargo mutants --package drill-stack --in-place --baseline skip --timeout 180 --build-timeout 900 \
    --file stack/src/client.rs --file stack/src/server.rs "${missed[@]}" -o "$OUT"
