#!/usr/bin/env bash
# The project's own run on a lent GPU machine: ../shared/gpu/run.sh with the sweeps this project
# needs (`xent bench` arguments, a per-shape timeout, a config column in the table). Pack first, here,
# in the project root: `bash ../shared/gpu/prepare.sh` (builds .gpu/ and .gl/), then
# `git rev-parse HEAD > .gpu/commit` (the GPU machine has no .git); rehearse here with
# `QUICK=1 bash scripts/gpu/run.sh`; then `run` on the GPU machine with command
# `bash scripts/gpu/run.sh` and carry [".gpu", ".gl"].
#
# Env: SHAPES (comma-separated ROWSxCLASSES[xDTYPE]), REPS (10), TESTS=0 to skip the test binaries,
# BENCH_ARGS (extra `xent bench` arguments, default below: device-resident timings of the fused and
# split kernels side by side), UNALIGNED_ARGS (added for f32 shapes of C not a multiple of 4: unaligned
# f32 rows as entries and as vectors; compare.py shows how many split slices were repaired), BENCH_TIMEOUT
# (seconds per shape, 120), PEERS=0 to skip PyTorch and Liger, QUICK=1 for a rehearsal on lavapipe;
# then, unless EXTRA=0, in what is left of BUDGET (560) seconds from the start: the gradient pass's
# order (ORDER_SHAPES, `--gradient-order forward,backward`, into bench_orders.jsonl / table_orders.md),
# the workgroup sweep
# (WORKGROUP_SHAPES, `--workgroup-size 256,512,1024 --row-split off,8`) and the host path's transfer
# pieces (`--transfer-piece-mib 16,64,256,8192`, host-to-host against the transfer ceiling: first
# HOST_SMALL_SHAPES, the 64x1000 latency target, before the other sweeps, then HOST_SHAPES after
# them), SWEEP_REPS (5) each, into bench_workgroups.jsonl / table_workgroups.md and
# bench_host.jsonl / table_host.md; last the shader checks (CHECKS_SHAPES, `--shader-checks
# trusted,full`: naga's forced loop bound off, the default, and on; bench_checks.jsonl / table_checks.md).
# Results (in $OUT, else /tmp/xent-gpu-out): log.txt info.txt tests.txt bench.jsonl peers.jsonl table.md;
# bench.jsonl grows line by line, so a run cut short by its timeout keeps what it measured.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd); cd "$root"
g="$root/.gpu"; here="$root/scripts/gpu"
[ -x "$g/xent" ] || { echo "no .gpu/xent: run  bash ../shared/gpu/prepare.sh  in the project root first"; exit 2; }
out=${OUT:-/tmp/xent-gpu-out}; mkdir -p "$out"; exec > >(tee -a "$out/log.txt") 2>&1
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
if [ -z "${QUICK:-}" ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if ls "$g"/liger_kernel-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$g"/liger_kernel-*.whl && export PYTHONPATH=/tmp/site
  fi
  SHAPES=${SHAPES:-8192x128256,8192x128256xbf16,8192x50257,8192x50257xbf16,4096x32000,64x1000}
else
  SHAPES=${SHAPES:-64x4096,16x1001,64x1000,64x4096xbf16}
  WORKGROUP_SHAPES=${WORKGROUP_SHAPES:-64x4096}; HOST_SMALL_SHAPES=${HOST_SMALL_SHAPES:-64x1000}; HOST_SHAPES=${HOST_SHAPES:-300x2000}
  ORDER_SHAPES=${ORDER_SHAPES:-64x20000}; CHECKS_SHAPES=${CHECKS_SHAPES:-64x20000,64x4096xbf16}
  PEERS=0
fi
REPS=${REPS:-10}; BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
BENCH_ARGS=${BENCH_ARGS:---device-only --row-split off,auto,8}
# Added for f32 shapes whose classes are not a multiple of 4, the only rows the setting reaches.
UNALIGNED_ARGS=${UNALIGNED_ARGS:---unaligned-f32 entries,vectors}
X="$g/xent"; T0=$(date +%s)
el() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }
# The commit measured: `git rev-parse HEAD > .gpu/commit` after prepare.sh (the GPU machine has no .git).
commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || cat "$g/commit" 2>/dev/null || echo unknown)
el "device, commit $commit, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "commit $commit" > "$out/commit.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1; "$X" info 2>&1; } | tee "$out/info.txt" | head -20
if [ "${TESTS:-1}" != 0 ]; then
  el "test binaries on this GPU"
  mkdir -p /tmp/tb && python3 -c "import tarfile; tarfile.open('$g/tests.tar.xz').extractall('/tmp/tb')"
  ck=$(cat "$g/checkout_path"); [ -e "$ck" ] || { mkdir -p "$(dirname "$ck")"; ln -sfn "$root" "$ck"; }
  # The CLI's test binaries run the xent binary at the path cargo built it (target is not carried).
  [ -x "$ck/target/release/xent" ] || { mkdir -p "$ck/target/release" && cp "$g/xent" "$ck/target/release/xent"; }
  for t in /tmp/tb/xent-gpu-tests/*; do
    echo "--- $(basename "$t")"; (cd "$ck" && timeout 150 "$t" --test-threads 4 2>&1 | grep -E "^test result|FAILED|panicked" | head -12)
  done | tee "$out/tests.txt"
fi
el "xent bench $BENCH_ARGS [$UNALIGNED_ARGS where C % 4 != 0] (one shape per process, at most ${BENCH_TIMEOUT}s each)"
# The SM clock beside the bench: a cold clock shows here.
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,utilization.gpu --format=csv -lms 200 > "$out/clocks.csv" 2>&1 &
  smi=$!
fi
for s in ${SHAPES//,/ }; do
  IFS=x read -r n c dt <<< "$s"
  # shellcheck disable=SC2086
  extra=""; [ "${dt:-f32}" = f32 ] && [ $(( c % 4 )) != 0 ] && extra=$UNALIGNED_ARGS
  timeout "$BENCH_TIMEOUT" "$X" bench --json --backend gpu --reps "$REPS" --rows "$n" --classes "$c" --dtype "${dt:-f32}" $BENCH_ARGS $extra >> "$out/bench.jsonl"
  el "$s done (rc $?)"
done
[ -n "${smi:-}" ] && kill "$smi" 2>/dev/null
if [ "${PEERS:-1}" != 0 ]; then
  el "PyTorch eager and Liger-Kernel on CUDA, same shapes"
  timeout 240 python3 "$g/peers_gpu.py" "$SHAPES" "$REPS" > "$out/peers.jsonl"
fi
el "side by side"; python3 "$here/compare.py" "$out/bench.jsonl" "$out/peers.jsonl" | tee "$out/table.md"
# The sweeps after the main run, inside what is left of BUDGET seconds (one `run` command may take 600):
# the host path at 64x1000 (the latency target), the gradient order, the workgroup sizes with and
# without the split kernel, the host path's transfer pieces at 8192x128256 (each deciding a default),
# then the shader checks (measuring the default's gain).
if [ "${EXTRA:-1}" != 0 ]; then
  budget=${BUDGET:-560}
  left() { echo $(( budget - ($(date +%s) - T0) )); }
  sweep() {  # sweep FILE SHAPES ARGS...: one shape per process while time is left
    local file=$1 shapes=$2; shift 2
    for s in ${shapes//,/ }; do
      local t; t=$(left); [ "$t" -gt 20 ] || { el "no time left for $s"; break; }
      IFS=x read -r n c dt <<< "$s"
      timeout "$t" "$X" bench --json --backend gpu --reps "${SWEEP_REPS:-5}" --rows "$n" --classes "$c" --dtype "${dt:-f32}" "$@" >> "$out/$file"
      el "$s done (rc $?)"
    done
  }
  el "host transfer pieces, small shapes ($(left)s left)"
  sweep bench_host.jsonl "${HOST_SMALL_SHAPES:-64x1000}" --transfer-piece-mib 16,64,256,8192
  el "gradient order sweep ($(left)s left)"
  sweep bench_orders.jsonl "${ORDER_SHAPES:-4096x32000,8192x50257,8192x128256}" --device-only --gradient-order forward,backward
  python3 "$here/compare.py" "$out/bench_orders.jsonl" "$out/peers.jsonl" | tee "$out/table_orders.md"
  el "workgroup sweep ($(left)s left)"
  sweep bench_workgroups.jsonl "${WORKGROUP_SHAPES:-4096x32000,8192x128256}" --device-only --workgroup-size 256,512,1024 --row-split off,8
  python3 "$here/compare.py" "$out/bench_workgroups.jsonl" "$out/peers.jsonl" | tee "$out/table_workgroups.md"
  el "host transfer pieces, large shapes ($(left)s left)"
  sweep bench_host.jsonl "${HOST_SHAPES:-8192x128256}" --transfer-piece-mib 16,64,256,8192
  python3 "$here/compare.py" "$out/bench_host.jsonl" | tee "$out/table_host.md"
  el "shader checks sweep ($(left)s left)"
  sweep bench_checks.jsonl "${CHECKS_SHAPES:-8192x128256,8192x50257xbf16}" --device-only --shader-checks trusted,full
  python3 "$here/compare.py" "$out/bench_checks.jsonl" "$out/peers.jsonl" | tee "$out/table_checks.md"
fi
