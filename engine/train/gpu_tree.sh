#!/usr/bin/env bash
# Keep what a device call sends under its 64 MiB. A call sends the tracked and the untracked but
# not ignored files of this checkout, plus its `carry` folders. The two committed checkpoints
# (resources/default-model ~34 MB, checkpoints/teacher ~31 MB) and the code come to ~67 MB: over
# the limit on their own, before the fonts and wheels a training call carries.
#
#   engine/train/gpu_tree.sh size          the MB a call would send now, without its carry folders
#   engine/train/gpu_tree.sh hide PATH...  stop sending PATHs: they leave the index (git rm
#                                          --cached) and are ignored (.git/info/exclude); the files
#                                          stay on disk, untouched
#   engine/train/gpu_tree.sh show          undo every hide: the paths are tracked again
#
# Hide only around device calls, and `show` before any commit: a commit made while a path is
# hidden records its deletion. `hide` refuses while anything else is staged, and `show` puts back
# exactly what `hide` took out. A conversion call (docs/gpu-session.md) hides
# resources/default-model; an engine check hides both checkpoints.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
EXCLUDE=$(git rev-parse --git-path info/exclude)
HIDDEN=$(git rev-parse --git-path gpu_tree_hidden)  # the paths hidden now, one a line

sending_mb() {
  git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {printf "%.1f\n", s / 1e6}'
}

case "${1:-}" in
size)
  echo "$(sending_mb) MB sent by a device call, besides its carry folders (limit: 67.1 MB = 64 MiB)"
  ;;
hide)
  shift
  [ $# -gt 0 ] || { echo "hide: name the paths to hide" >&2; exit 2; }
  if ! git diff --cached --quiet; then
    echo "hide: the index has staged changes; commit or unstage them first" >&2
    exit 1
  fi
  for p in "$@"; do
    p=${p%/}
    [ -n "$(git ls-files -- "$p")" ] || { echo "hide: $p is not tracked" >&2; exit 2; }
  done
  mkdir -p "$(dirname "$EXCLUDE")"
  for p in "$@"; do
    p=${p%/}
    git rm -r -q --cached -- "$p"
    echo "/$p" >> "$EXCLUDE"
    echo "$p" >> "$HIDDEN"
    echo "hidden: $p"
  done
  echo "$(sending_mb) MB sent now; run '$0 show' after the device calls"
  ;;
show)
  [ -f "$HIDDEN" ] || { echo "nothing hidden"; exit 0; }
  while read -r p; do
    grep -v -x -F -- "/$p" "$EXCLUDE" > "$EXCLUDE.tmp" || true
    mv "$EXCLUDE.tmp" "$EXCLUDE"
    git reset -q -- "$p"
    echo "tracked again: $p"
  done < "$HIDDEN"
  rm "$HIDDEN"
  ;;
*)
  echo "usage: $0 size | hide PATH... | show" >&2
  exit 2
  ;;
esac
