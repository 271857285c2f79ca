#!/usr/bin/env bash
# One device call that checks and times the engine on a lent GPU (docs/gpu-session.md):
#
#   benchmarks/gpu_check.sh COMMIT [SECONDS]      # run from the repository root on the device
#
# COMMIT names the tree in the reports (compute it where .git is current: the device's copy of
# .git can be stale). Carry .train_carry/wheels (pytest, fla-core, ...) and .whl/bnb. Each step
# gets at most what is left of SECONDS (default 540); the outputs, packed in $OUT/gpu_check.tgz:
#   profile_base.md decode_profile of baseline_tree/ (benchmarks/baseline_tree.sh COMMIT, carried),
#                   when there is one: the same tables for an earlier commit, in the same call
#   gpu_tests.txt   pytest -m gpu -v over tests/kernels and tests/engine (first: a run cut short
#                   still names its failures; TESTS_S seconds, default 170), then
#                   gpu_tests_timing.txt: the tests that assert a measured time, alone
#   profile.md      decode_profile: the graphed decode step's kernels and GEMV speeds, and the
#                   frame step's kernels
#   profile_prefill.md   decode_profile --prefill 131072: the 128K prefill's kernels
#   conv_blocks.md  benchmarks/conv_blocks.py: the prompt convolution's block shapes, timed
#   RESULTS.md      bench_engine: prefill/decode per context, roofline, streaming, Transformer
#   profile_nopdl.md   the decode step's profile with INFINITEVL_PDL=0 (kernels.pdl, programmatic
#                   dependent launch, off)
#   profile_glu.md  the decode step with INFINITEVL_GEMV_GLU=1 (kernels.gemv.silu_mul_linear)
#   profile_sweep.md   the GEMV tiles on each weight shape
#   profile_cublas.md  the decode step with INFINITEVL_GEMV_KERNEL=0 (cuBLAS for every GEMV)
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
  # STEPS="profile.md bench.txt ..." runs only the steps named (a call split in two on a warm machine)
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $file "* ]]; then return; fi
  left=$((budget - (SECONDS - start)))
  if ((left < 20)); then echo "$file: skipped, budget spent"; return; fi
  ((cap > left)) && cap=$left
  timeout "$cap" "$@" > "$out/$file" 2>&1
  echo "$file: exit $? at $((SECONDS - start)) s"
  if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_check.tgz" -C "$out" .; fi
}

# a baseline commit's decode and frame profile in the same call, when baseline_tree/ was carried
# (benchmarks/baseline_tree.sh COMMIT): timings compare only within a call
if [ -f baseline_tree/COMMIT ]; then
  (cd baseline_tree && step profile_base.md 100 env PYTHONPATH="/tmp/site:$PWD" python3 -m \
    benchmarks.decode_profile --prefill 0 --paths fused)
  echo "baseline $(cat baseline_tree/COMMIT):"
  grep -hs "^## Decode\|^## Frame" "$out"/profile_base.md
fi
# the whole GPU suite first, -v: each test's result is written as it ends, so a run cut short
# still names its failures; then the timings. STEPS="FILE ..." runs only the steps named.
# (the tests that assert a measured time run after, alone on the GPU)
step gpu_tests.txt "${TESTS_S:-170}" python3 -m pytest -v --tb=short -m "gpu and not timing" -n 8 \
  -p no:cacheprovider tests/kernels tests/engine
grep -E "FAILED|^E  |passed|failed" "$out/gpu_tests.txt" 2>/dev/null | head -30
step gpu_tests_timing.txt 60 python3 -m pytest -v --tb=short -m "gpu and timing" -p no:cacheprovider \
  tests/kernels tests/engine
grep -E "FAILED|^E  |passed|failed" "$out/gpu_tests_timing.txt" 2>/dev/null | head -10
step profile.md 120 python3 -m benchmarks.decode_profile --prefill 0 --paths fused
grep -hs "^## Decode\|^## Frame\|measured choices" "$out"/profile.md
# the decode step without kernels.pdl (programmatic dependent launch, on by default): what it buys
step profile_nopdl.md 80 env INFINITEVL_PDL=0 python3 -m benchmarks.decode_profile --prefill 0 \
  --paths fused --no-frames
grep -hs "^## Decode" "$out"/profile_nopdl.md
# the 128K prefill's kernels (what limits the prefill target)
step profile_prefill.md 120 python3 -m benchmarks.decode_profile --prefill 131072 --paths fused \
  --no-frames
grep -hs "Prefill of" "$out"/profile_prefill.md
# the prompt convolution's block shapes at 256 and 8,192 tokens (kernels.short_conv.prefill_triton)
step conv_blocks.md 60 python3 -m benchmarks.conv_blocks
bench_s=${BENCH_S:-200}  # BENCH_S: the bench's share (a call of its own takes ~400 s for 1K-1M, 1,000 frames)
step bench.txt "$bench_s" python3 -m benchmarks.bench_engine --out "$out" --budget-s $((bench_s - 20)) \
  --commit "$commit"
# kernels.gemv.silu_mul_linear (opt-in: on the H100 it timed slower than the two kernels)
step profile_glu.md 80 env INFINITEVL_GEMV_GLU=1 python3 -m benchmarks.decode_profile \
  --prefill 0 --paths fused --no-frames
step profile_sweep.md 150 python3 -m benchmarks.decode_profile --prefill 0 --paths fused \
  --gemv-sweep --no-frames
step profile_cublas.md 80 env INFINITEVL_GEMV_KERNEL=0 python3 -m benchmarks.decode_profile \
  --prefill 0 --paths fused --no-frames
step quant.md 120 python3 -m benchmarks.quant_bench --device cuda --config 4b
grep -s "^|" "$out/quant.md"
for q in none int8 nf4; do
  step "eval_$q.md" 90 python3 benchmarks/eval_default_model.py --device cuda --quant "$q" \
    --num 20 --docs 5 --max-new-tokens 96 ${MODEL:+--model "$MODEL"}
  grep -s "^| \(screenshots\|unseen\|page-1\|OCR latency\)" "$out/eval_$q.md"
done
