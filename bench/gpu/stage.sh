#!/usr/bin/env bash
# bash bench/gpu/stage.sh CARRY_FOLDER: on the GPU machine, check a carried folder's files against its SHA256SUMS and
# copy them to /tmp/gpu-stage, which outlives the call while the machine stays warm (run.sh joins and installs).
set -euo pipefail
src=$1
stage=${GPU_STAGE:-/tmp/gpu-stage}
(cd "$src" && sha256sum --quiet -c SHA256SUMS)
mkdir -p "$stage"
cp "$src"/* "$stage"/
echo "staged $(ls "$src" | wc -l) files from $src; $stage holds $(du -sh "$stage" | cut -f1)"
