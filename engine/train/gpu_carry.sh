#!/usr/bin/env bash
# Rebuild the git-ignored folders that device calls carry (docs/gpu-session.md), on a workspace
# that lacks them: a session's ignored folders are not kept for the next one.
#
#   engine/train/gpu_carry.sh        from the repository root, after `make system-deps`
#
#   .train_carry/fonts   copies of Debian's fonts-dejavu-core, fonts-liberation and
#                        fonts-freefont-ttf (engine/train/fonts.py; the device has no fonts)
#   .train_carry/fonts.tar.xz  the same packed: 6 MB against 19, for a call that carries a
#                        data set too (carry one of the two; gpu_run.sh unpacks it)
#   .train_carry/wheels  what the device's Python 3.12 lacks: fla-core, peft, tqdm, pytest and
#                        its plugins, hypothesis (engine/train/gpu_run.sh and
#                        benchmarks/gpu_check.sh install them to /tmp/site)
#   .whl/bnb             bitsandbytes unpacked, keeping only its CPU library and the CUDA 13.0
#                        one the device's torch uses (benchmarks/gpu_check.sh puts it on PYTHONPATH)
#
# A folder that exists is left as it is. Downloads come from the package registry only.
set -euo pipefail
cd "$(dirname "$0")/../.."

FONT_PACKAGES="dejavu liberation freefont"  # folders under /usr/share/fonts/truetype
# pinned: the versions the device runs were tested with (torch 2.11, transformers 5.17 are there)
WHEELS="fla-core==0.6.0 peft==0.21.2 accelerate==1.16.0 tqdm==4.70.1 psutil==7.2.2 \
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-xdist==3.8.0 execnet==2.1.2 \
  pytest-timeout==2.4.0 hypothesis==6.155.7 sortedcontainers==2.4.0"
BITSANDBYTES="bitsandbytes==0.48.2"
# the device's Python and platform (its README's download command)
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 "$@"
}

if [ ! -d .train_carry/fonts ]; then
  mkdir -p .train_carry/fonts.tmp
  for f in $FONT_PACKAGES; do
    src=/usr/share/fonts/truetype/$f
    [ -d "$src" ] || { echo "missing $src: run make system-deps first" >&2; exit 1; }
    cp -r "$src" .train_carry/fonts.tmp/
  done
  mv .train_carry/fonts.tmp .train_carry/fonts
fi

if [ ! -f .train_carry/fonts.tar.xz ]; then
  tar -cJf .train_carry/fonts.tar.xz.tmp -C .train_carry fonts
  mv .train_carry/fonts.tar.xz.tmp .train_carry/fonts.tar.xz
fi

if [ ! -d .train_carry/wheels ]; then
  rm -rf .train_carry/wheels.tmp
  # shellcheck disable=SC2086
  download -d .train_carry/wheels.tmp $WHEELS
  mv .train_carry/wheels.tmp .train_carry/wheels
fi

if [ ! -d .whl/bnb ]; then
  rm -rf .whl/bnb.tmp .whl/dl
  download -d .whl/dl "$BITSANDBYTES"
  python3 -m zipfile -e .whl/dl/bitsandbytes-*.whl .whl/bnb.tmp
  find .whl/bnb.tmp/bitsandbytes -name 'libbitsandbytes_*.so' \
    ! -name libbitsandbytes_cpu.so ! -name libbitsandbytes_cuda130.so -delete
  rm -rf .whl/dl
  mv .whl/bnb.tmp .whl/bnb
fi

du -sh .train_carry/fonts .train_carry/fonts.tar.xz .train_carry/wheels .whl/bnb
