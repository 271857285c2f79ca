#!/usr/bin/env bash
# The embedded model's whole recipe on a lent GPU machine, in one machine hold of several calls
# (each call of the device tool is limited to 10 minutes; the machine stays while calls follow).
#
#   engine/train/gpu_run.sh start            start the pipeline detached (setsid), return at once
#   engine/train/gpu_run.sh follow SECONDS   print its log until it ends or SECONDS pass, then pack
#                                            the newest stage checkpoint and the logs into $OUT
#                                            (and the stages named in $KEEP, e.g. KEEP=teacher)
#
# Needs: fonts in .train_carry/fonts (copies of Debian's fonts-dejavu, -liberation and -freefont,
# see engine/train/fonts.py), or the same packed as .train_carry/fonts.tar.xz (a third of the
# bytes a call carries); optionally .train_carry/sharegpt (a LLaVA-style set, e.g. from
# `python -m app.widget_dialogs`: copied to $W/sharegpt, out of the tree that each call
# replaces, so name $W/sharegpt/train.json in sft.data.sharegpt; or the same packed as
# .train_carry/sharegpt.tar.xz, `tar -C DIR -cJf .train_carry/sharegpt.tar.xz .`: thousands of
# small pictures pass the 64 MiB a call carries sooner than their bytes say), .train_carry/start (a
# write_start folder; made here when absent), .train_carry/STAGE for each stage named in FROM
# (checkpoints of an earlier run: reading and teacher continue from theirs; a distill_layerwise,
# distill_kl or sft counts as done, and the stages after it start from it: e.g. FROM=distill_kl
# STAGES=sft,lora; a .train_carry
# folder not named in FROM is ignored, since the device keeps a warm machine's ignored folders
# from call to call, and a checkpoint carried by an earlier call would otherwise take a stage's
# place unseen, as it did in the seventh session) and .train_carry/wheels
# (packages the device lacks: fla-core, peft, tqdm; installed to /tmp/site). Budgets in
# seconds: T_READ, T_TEACHER, T_L, T_KL, T_SFT, T_LORA. SET: space-separated pipeline --set
# items (e.g. SET="reading.batch_size=256 reading.micro_batch=256"; benchmarks/train_step.py
# says which batch pays). STAGES: the stages to run (default: all; e.g.
# FROM=teacher STAGES=teacher,distill_layerwise,distill_kl,sft,lora to continue a carried teacher).
# Work folder: $W.
set -uo pipefail
FROM=${FROM:-}
W=${W:-/tmp/infinitevl-train}
ALL="reading teacher distill_layerwise distill_kl sft lora"  # engine/train/pipeline.py ORDER
case "${1:-}" in
start)
  mkdir -p "$W"
  if ls .train_carry/wheels/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .train_carry/wheels/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # the fonts go where find_fonts looks first, outside the working tree: each device call
  # replaces the tree, and a data worker opening a font there meanwhile kills the run
  if [ -d .train_carry/fonts ]; then
    mkdir -p /usr/share/fonts/truetype && cp -rn .train_carry/fonts/. /usr/share/fonts/truetype/
  elif [ -f .train_carry/fonts.tar.xz ]; then
    mkdir -p /usr/share/fonts/truetype && tar -xJf .train_carry/fonts.tar.xz --skip-old-files \
      --strip-components=1 -C /usr/share/fonts/truetype || exit 1
  fi
  if [ -d .train_carry/sharegpt ]; then
    rm -rf "$W/sharegpt"; cp -r .train_carry/sharegpt "$W/sharegpt"
  elif [ -f .train_carry/sharegpt.tar.xz ]; then
    rm -rf "$W/sharegpt"; mkdir -p "$W/sharegpt"
    tar -xJf .train_carry/sharegpt.tar.xz -C "$W/sharegpt" || exit 1
  fi
  if [ -d .train_carry/start ]; then rm -rf "$W/start"; cp -r .train_carry/start "$W/start"; fi
  # a checkpoint named in FROM takes that stage's place; reading and teacher continue from
  # theirs (--again), a later stage's counts as done, so the stages after it start from it
  again=""
  for s in ${FROM//,/ }; do
    [[ " ${ALL% lora} " == *" $s "* ]] || { echo "FROM: unknown stage '$s'" >&2; exit 2; }
    [ -d ".train_carry/$s" ] || { echo "FROM names $s, but .train_carry/$s was not carried" >&2; exit 2; }
  done
  # a start is a new run: what an earlier run on this machine left in $W is not its input
  for s in $ALL; do
    rm -rf "${W:?}/$s"
    if [[ ",$FROM," == *",$s,"* ]]; then
      mkdir -p "$W/$s"; cp -r ".train_carry/$s" "$W/$s/checkpoint"
      case $s in reading|teacher) again="$again,$s" ;; esac
    fi
  done
  [ -f "$W/start/config.json" ] || python3 -c "from pathlib import Path; from engine.train.recipe import write_start; write_start(Path('$W/start'))"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  sets=()
  for x in ${SET:-}; do sets+=(--set "$x"); done
  setsid nohup env PYTHONUNBUFFERED=1 python3 -m engine.train.pipeline --work "$W" \
    ${STAGES:+--stages "$STAGES"} \
    --budget reading="${T_READ:-400}" --budget teacher="${T_TEACHER:-300}" \
    --budget distill_layerwise="${T_L:-40}" \
    --budget distill_kl="${T_KL:-60}" --budget sft="${T_SFT:-120}" --budget lora="${T_LORA:-50}" \
    --device "${DEVICE:-cuda}" --num-workers "${NUM_WORKERS:-14}" --again "$again" \
    ${sets[@]+"${sets[@]}"} \
    > "$W/log" 2>&1 < /dev/null &
  echo $! > "$W/pid"
  echo "pipeline started (pid $(cat "$W/pid")), work folder $W"
  ;;
follow)
  limit=${2:-560}; t0=$(date +%s); seen=0
  show() {
    # the log without progress-bar redraws and warnings; a log line written after a bar's last
    # redraw shares its line, so everything before the line's timestamp goes first
    tr '\r' '\n' < "$W/log" \
      | sed -E 's/^.*([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{3} )/\1/' \
      | grep -v -e 'it/s' -e 's/it' -e '^\s*$' -e Warning > "$W/log.clean"
    n=$(wc -l < "$W/log.clean")
    [ "$n" -gt "$seen" ] && sed -n "$((seen + 1)),${n}p" "$W/log.clean" | cut -c1-220
    seen=$n
  }
  while true; do
    show
    kill -0 "$(cat "$W/pid")" 2>/dev/null || { echo "pipeline ended"; break; }
    [ $(($(date +%s) - t0)) -ge "$limit" ] && { echo "still running after ${limit} s"; break; }
    sleep 10
  done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  # the newest stage that has exported: its final checkpoint/, or the export its run made last
  # (latest/, every export_every_s: what a machine taken back mid-stage leaves behind)
  last=""
  for s in $ALL; do
    { [ -d "$W/$s/checkpoint" ] || [ -d "$W/$s/latest" ]; } && last=$s
  done
  echo "newest checkpoint: ${last:-none}"
  # the device tool returns files of at most 16 MiB: a checkpoint travels as 15 MB parts
  # (cat ckpt_STAGE.tar.* | tar xf - gives STAGE's checkpoint/ or latest/ folder back)
  for s in $(echo "$last ${KEEP:-}" | tr ' ' '\n' | sort -u); do
    # the newer of the two: while a stage continues (--again) its checkpoint/ is the old one
    d=$(cd "$W/$s" 2>/dev/null && ls -td checkpoint latest 2>/dev/null | head -1)
    [ -n "$d" ] && tar cf - -C "$W/$s" "$d" | split -b 15M - "$OUT/ckpt_${s}.tar."
  done
  (cd "$W" && tar czf "$OUT/logs.tgz" log.clean $(ls ./*/loss.png ./*/losses.jsonl 2>/dev/null))
  ls -la "$OUT"
  ;;
*)
  echo "usage: $0 start | follow SECONDS" >&2
  exit 2
  ;;
esac
