#!/usr/bin/env bash
# A commit's engine beside this one in the same device call (timings compare only within a call):
#
#   benchmarks/baseline_tree.sh COMMIT     # here, before the call
#
# writes what `python -m benchmarks.decode_profile` needs of COMMIT (engine, kernels, benchmarks,
# tests/reference) to baseline_tree/ (git-ignored). Name `baseline_tree` in the call's `carry`:
# benchmarks/gpu_check.sh then profiles it first (profile_base.md) beside this tree's profile.md.
set -euo pipefail
commit=${1:?usage: benchmarks/baseline_tree.sh COMMIT}
cd "$(git rev-parse --show-toplevel)"
rm -rf baseline_tree && mkdir baseline_tree
git archive "$commit" engine kernels benchmarks tests/reference | tar -x -C baseline_tree
git rev-parse --short "$commit" > baseline_tree/COMMIT
echo "baseline_tree/: $(cat baseline_tree/COMMIT), $(du -sh baseline_tree | cut -f1); carry it"
