#!/usr/bin/env bash
# Prepare onnxruntime-gpu for a GPU machine that has no registry access (docs/gpu.md).
#
#   bash benchmarks/gpu_prepare.sh          # here, on a machine with PyPI: download, split, print the plan
#
# The device machine (python 3.12, torch with CUDA 13, only the CPU onnxruntime) takes at most 64 MiB
# of working tree per call, and the onnxruntime-gpu wheel is about 255 MB. So the wheel is split into
# parts of PART_MIB MiB, one folder each (.gpu/p1, .gpu/p2, ...), each carried by one call; the parts
# stay on the warm machine between calls (ignored files already there are kept), and the last call
# reassembles the wheel, checks its sha256, installs it with pip into /tmp/ortgpu and runs
# benchmarks/gpu.py. .gpu/ is listed in .git/info/exclude, so the wheel never travels uncarried and
# is never committed. The wheel's CUDA provider links against CUDA 13 (libcudart.so.13,
# libcublas.so.13) and loads cuDNN 9: the libraries of the machine's torch (cu130) serve it.
set -euo pipefail

ORT_VERSION=${ORT_VERSION:-1.31.1}
# The device's Python (call 1 prints it first; 3.12 when this was written): the wheel must match it.
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
CP=cp${PYTHON_VERSION/./}
BUDGET=${BUDGET:-330}
PART_MIB=${PART_MIB:-50}
cd "$(git rev-parse --show-toplevel)"
DIR=.gpu

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
mkdir -p "$DIR"
git check-ignore -q "$DIR/p1/x" || { echo "error: $DIR is not ignored by git" >&2; exit 1; }

python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$DIR" "onnxruntime-gpu==$ORT_VERSION"
wheel_path=$(ls "$DIR"/onnxruntime_gpu-"$ORT_VERSION"-"$CP"-*.whl | head -n 1)
wheel=$(basename "$wheel_path")
sha=$(sha256sum "$wheel_path" | cut -d' ' -f1)
echo "$sha  $wheel" >"$DIR/$wheel.sha256"

# One folder per part, each holding its part and the wheel's sha256 (the last call carries only its own).
rm -rf "$DIR"/p[0-9]* "$DIR"/split.tmp.*
split -b "${PART_MIB}M" -d -a 2 "$wheel_path" "$DIR/split.tmp."
parts=()
i=0
for piece in "$DIR"/split.tmp.*; do
    i=$((i + 1))
    mkdir -p "$DIR/p$i"
    mv "$piece" "$DIR/p$i/part"
    cp "$DIR/$wheel.sha256" "$DIR/p$i/"
    parts+=("$DIR/p$i/part")
done
count=$i
# The parts must give back the wheel, byte for byte.
cat "${parts[@]}" | sha256sum | grep -q "^$sha " || { echo "error: the parts do not reassemble" >&2; exit 1; }
# What travels with every call: tracked files and untracked ones git does not ignore (and shared/).
tree=$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | awk -F'\t' '$2 == "total" { s += $1 } END { print s + 0 }')
largest=$(du -b "${parts[@]}" | sort -n | tail -n 1 | cut -f1)
echo "wheel: $wheel_path ($(du -b "$wheel_path" | cut -f1) bytes, sha256 $sha)" >&2
echo "parts: $count of at most $PART_MIB MiB; largest part + working tree = $(( (largest + tree) / 1048576 )) MiB" \
     "(limit 64 MiB per call)" >&2
if (( largest + tree > 64 * 1048576 )); then
    echo "error: a call would carry more than 64 MiB: set PART_MIB lower (e.g. PART_MIB=40)" >&2
    exit 1
fi

files=""
for ((k = 1; k <= count; k++)); do files+=" .gpu/p$k/part"; done
# Run on the device from its repository root; \$ stays literal here, so PWD and OUT are the device's.
final="set -o pipefail; python3 -c 'import sys; sys.exit(sys.version_info[:2] != (${PYTHON_VERSION/./, }))' || \
{ python3 -V; echo WRONG PYTHON: rerun gpu_prepare.sh with PYTHON_VERSION set to it; exit 4; }; W=/tmp/$wheel; for f in$files; do test -f \$f || { echo MISSING \$f: \
the machine was not warm, start again at call 1; exit 3; }; done; cat$files >\$W \
&& echo \"$sha  \$W\" | sha256sum -c && python3 -m pip install -q --no-deps --no-index --no-compile \
--target /tmp/ortgpu \$W && export PYTHONPATH=/tmp/ortgpu:\$PWD PYTHONUNBUFFERED=1 \
&& python3 benchmarks/gpu.py --budget $BUDGET --out \$OUT 2>&1 | tee \$OUT/log.txt"
export1="python3 -V; nvidia-smi -L; PYTHONUNBUFFERED=1 PYTHONPATH=\$PWD python3 benchmarks/gpu.py --export-only --out \$OUT 2>&1 | tee \$OUT/export.log; ls -l .gpu/*"

cat <<EOF

Device plan: $((count)) calls of the device tool's \`run\`, back to back (the machine goes back after
30 s idle, and with it the parts already sent: issue each call as soon as the previous returns).
Call 1 also exports the models (torch is there); the last one installs and measures.

EOF
for ((k = 1; k <= count; k++)); do
    if ((k == 1)); then
        cmd=$export1; timeout=300
    elif ((k < count)); then
        cmd="ls -l .gpu/*"; timeout=60
    else
        cmd=$final; timeout=$((BUDGET + 70))  # the budget, the install, and the last step's overrun
    fi
    python3 - "$k" ".gpu/p$k" "$timeout" "$cmd" <<'PY'
import json, sys
k, carry, timeout, command = sys.argv[1:]
print(f"call {k}: run " + json.dumps({"carry": [carry], "timeout_s": int(timeout), "command": command}))
print(f"         ({len(command)} characters)")
PY
done
cat <<EOF

Then give_back at once. If a reply says "warm": false after call 1, the parts sent before it are
gone: start again at call 1 (a fresh machine costs a minute or more of the 15). The results come
back in \$OUT: gpu-results.json, gpu-results.md, log.txt (and export.log from call 1).
EOF
