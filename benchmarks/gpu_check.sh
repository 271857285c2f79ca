#!/usr/bin/env bash
# One device call that checks and times the engine on a lent GPU (docs/gpu-session.md):
#
#   benchmarks/gpu_check.sh COMMIT [SECONDS]      # run from the repository root on the device
#
# COMMIT names the tree in the reports (compute it where .git is current: the device's copy of
# .git can be stale). Carry .train_carry/wheels (pytest, fla-core, ...) and .whl/bnb. Each step
# gets at most what is left of SECONDS (default 540); the outputs, packed in $OUT/gpu_check.tgz:
#   gpu_tests_decode.txt   pytest -m gpu over the GEMV, graph timing, RoPE, CUDA graph and fused
#                   decode tests
#   gpu_tests_optin.txt    the same with the opt-in decode kernels on (INFINITEVL_ROPE_KERNEL=1,
#                   INFINITEVL_GEMV_GLU=1)
#   profile.md, profile_optin.md   decode_profile of the graphed decode step (kernels, GEMV speeds),
#                   by default and with the opt-in kernels
#   RESULTS.md      bench_engine: prefill/decode per context, roofline, streaming, Transformer
#   profile_sweep.md   the GEMV tiles on each weight shape, and the frame step's kernels
#   profile_cublas.md  the decode step with INFINITEVL_GEMV_KERNEL=0 (cuBLAS for every GEMV)
#   gpu_tests.txt   pytest -m gpu over tests/kernels and tests/engine (what the budget leaves)
#   quant.md        quant_bench --config 4b: bf16 / int8 / NF4 memory, speed, KL
#   eval_none.md, eval_int8.md, eval_nf4.md   eval_default_model on the GPU: the task scores of
#                   the embedded model (or $MODEL, a checkpoint folder on the device) unquantized,
#                   int8 and NF4 (bitsandbytes)
set -uo pipefail
commit=${1:?usage: benchmarks/gpu_check.sh COMMIT [SECONDS]}
budget=${2:-540}
# the files are written in /tmp/gpu_check and packed after every step into $OUT/gpu_check.tgz
# (a device call returns at most 8 files; a call cut short still returns the steps done)
out=/tmp/gpu_check
rm -rf "$out" && mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .train_carry/wheels/*.whl \
  > "$out/pip.txt" 2>&1 || echo "wheels: not installed (see pip.txt)"
export PYTHONPATH="/tmp/site:$PWD/.whl/bnb:$PWD"
start=$SECONDS

step() {  # step FILE CAP_SECONDS COMMAND...: run with what is left of the budget, at most CAP
  local file=$1 cap=$2 left
  shift 2
  left=$((budget - (SECONDS - start)))
  if ((left < 20)); then echo "$file: skipped, budget spent"; return; fi
  ((cap > left)) && cap=$left
  timeout "$cap" "$@" > "$out/$file" 2>&1
  echo "$file: exit $? at $((SECONDS - start)) s"
  if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_check.tgz" -C "$out" .; fi
}

# the tests of what decode dispatches to first, the timings next, the whole GPU suite last
# one process: xdist's workers would each compile every kernel (the fourteenth session's 90 s
# were not enough with -n 4)
decode_tests=(tests/kernels/test_gemv.py tests/kernels/test_graph_timing.py
  tests/kernels/test_rope.py tests/engine/test_cuda_graph.py tests/engine/test_fused_decode.py)
step gpu_tests_decode.txt 120 python3 -m pytest -q -m gpu -p no:cacheprovider "${decode_tests[@]}"
tail -3 "$out/gpu_tests_decode.txt" 2>/dev/null
# the opt-in decode kernels (kernels/rope, kernels.gemv.silu_mul_linear): on by default once
# these pass and the profile below shows them faster
optin=(INFINITEVL_ROPE_KERNEL=1 INFINITEVL_GEMV_GLU=1)
step gpu_tests_optin.txt 100 env "${optin[@]}" python3 -m pytest -q -m gpu -p no:cacheprovider \
  "${decode_tests[@]}"
grep -E "^E  |FAILED|passed|failed" "$out/gpu_tests_optin.txt" 2>/dev/null | head -20
step profile.md 80 python3 -m benchmarks.decode_profile --prefill 0 --paths fused --no-frames
step profile_optin.md 80 env "${optin[@]}" python3 -m benchmarks.decode_profile --prefill 0 \
  --paths fused --no-frames
grep -hs "^## Decode\|^## Batch\|measured choices" "$out"/profile*.md
step bench.txt 200 python3 -m benchmarks.bench_engine --out "$out" --budget-s 180 --commit "$commit"
step profile_sweep.md 150 python3 -m benchmarks.decode_profile --prefill 0 --paths fused \
  --gemv-sweep
step profile_cublas.md 80 env INFINITEVL_GEMV_KERNEL=0 python3 -m benchmarks.decode_profile \
  --prefill 0 --paths fused --no-frames
step gpu_tests.txt 170 python3 -m pytest -q -m gpu -n 4 -p no:cacheprovider tests/kernels tests/engine
tail -3 "$out/gpu_tests.txt" 2>/dev/null
step quant.md 120 python3 -m benchmarks.quant_bench --device cuda --config 4b
grep -s "^|" "$out/quant.md"
for q in none int8 nf4; do
  step "eval_$q.md" 90 python3 benchmarks/eval_default_model.py --device cuda --quant "$q" \
    --num 20 --docs 5 --max-new-tokens 96 ${MODEL:+--model "$MODEL"}
  grep -s "^| \(screenshots\|unseen\|page-1\|OCR latency\)" "$out/eval_$q.md"
done
