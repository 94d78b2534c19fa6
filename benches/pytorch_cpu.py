#!/usr/bin/env python3
"""Time PyTorch CPU cross-entropy forward+backward, optionally next to `xent bench`.

    /opt/torchvenv/bin/python benches/pytorch_cpu.py                       # torch only
    /opt/torchvenv/bin/python benches/pytorch_cpu.py --xent target/release/xent
    /opt/torchvenv/bin/python benches/pytorch_cpu.py --shapes 64x1000,8192x50257 --reps 20

What is timed, per rep: ``loss = F.cross_entropy(logits, targets)`` (mean reduction,
float32 logits with requires_grad, int64 targets) followed by ``loss.backward()``,
with ``logits.grad = None`` before each rep (what ``optimizer.zero_grad()`` does by
default), so each rep allocates its gradient as in training. The median of --reps
reps after --warmup untimed reps is reported. ``torch.set_num_threads(os.cpu_count())``.

glibc malloc: by default the script re-executes itself with
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` in the environment. glibc
otherwise serves each large tensor (hundreds of MB here) with a fresh mmap and returns
it on free, so every rep pays page faults for the output and gradient buffers; with the
variables set the heap keeps the pages and PyTorch is timed at its best. Pass
--no-malloc-env to time the default behaviour. The xent binary, when given, is run as a
child of this process and so inherits the same environment.

With --xent PATH, for every shape it also runs
``PATH bench --backend cpu --rows R --classes C --json`` (plus any --xent-arg), which
prints one JSON object per line with at least rows, classes, backend and median_ms, and
prints a table: shape, torch median ms, xent cpu median ms, torch/xent ratio.
A missing or failing binary is reported in the table and does not stop the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
GUARD = "XENT_PYTORCH_BENCH_REEXEC"
DEFAULT_SHAPES = "64x1000,1024x32000,4096x32000"


def parse_shapes(s: str):
    shapes = []
    for part in s.split(","):
        part = part.strip().lower()
        if not part:
            continue
        r, c = part.split("x")
        shapes.append((int(r), int(c)))
    return shapes


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="PyTorch CPU cross_entropy fwd+bwd timing (optionally vs. xent)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES,
                    help=f"comma-separated RxC list (default {DEFAULT_SHAPES})")
    ap.add_argument("--reps", type=int, default=10, help="timed reps per shape (default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed reps first (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch.set_num_threads (default os.cpu_count())")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--xent", metavar="PATH", help="path of the xent binary to compare with")
    ap.add_argument("--xent-arg", action="append", default=[], metavar="ARG",
                    help="extra argument passed to `xent bench` (repeatable)")
    ap.add_argument("--xent-timeout", type=float, default=600.0,
                    help="seconds allowed per xent run (default 600)")
    ap.add_argument("--no-malloc-env", action="store_true",
                    help="do not re-exec with the glibc malloc variables")
    ap.add_argument("--json", action="store_true",
                    help="also print one JSON object per shape")
    return ap.parse_args(argv)


def maybe_reexec(args):
    """Re-exec with the malloc variables (glibc reads them only at start-up)."""
    if args.no_malloc_env or os.environ.get(GUARD):
        return
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    env = dict(os.environ)
    env.update(MALLOC_ENV)
    env[GUARD] = "1"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)


def malloc_env_active():
    return all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())


def time_torch(rows, classes, reps, warmup, seed):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=g, dtype=torch.float32).requires_grad_(True)
    targets = torch.randint(0, classes, (rows,), generator=g, dtype=torch.int64)
    times = []
    for i in range(warmup + reps):
        logits.grad = None
        t0 = time.perf_counter()
        loss = F.cross_entropy(logits, targets)
        loss.backward()
        t1 = time.perf_counter()
        if i >= warmup:
            times.append((t1 - t0) * 1e3)
    assert logits.grad is not None and torch.isfinite(loss).item()
    del logits, targets, loss
    return statistics.median(times), min(times), times


def run_xent(path, rows, classes, extra, timeout):
    """Return (median_ms, None) or (None, reason)."""
    if not path:
        return None, None
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return None, f"no executable at {path}"
    cmd = [path, "bench", "--backend", "cpu", "--rows", str(rows), "--classes", str(classes),
           "--json", *extra]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f}s"
    except OSError as e:
        return None, f"could not run: {e}"
    if p.returncode != 0:
        err = (p.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return None, f"exit {p.returncode}: {err[:120]}"
    found = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or "median_ms" not in obj:
            continue
        if obj.get("rows", rows) != rows or obj.get("classes", classes) != classes:
            continue
        if str(obj.get("backend", "cpu")).lower() != "cpu":
            continue
        found.append(float(obj["median_ms"]))
    if not found:
        return None, "no JSON line with median_ms in its output"
    return found[-1], None


def main():
    args = parse_args()
    maybe_reexec(args)

    import torch

    torch.set_num_threads(args.threads)
    shapes = parse_shapes(args.shapes)
    print(f"torch {torch.__version__} | python {platform.python_version()} | "
          f"threads {torch.get_num_threads()} (cpu_count {os.cpu_count()}) | "
          f"malloc env {'ON' if malloc_env_active() else 'off'} | "
          f"reps {args.reps} after {args.warmup} warm-up", flush=True)
    if args.xent:
        print(f"xent: {args.xent} bench --backend cpu --rows R --classes C --json "
              + " ".join(args.xent_arg), flush=True)

    results = []
    for rows, classes in shapes:
        med, best, _ = time_torch(rows, classes, args.reps, args.warmup, args.seed)
        xmed, why = run_xent(args.xent, rows, classes, args.xent_arg, args.xent_timeout)
        res = {"rows": rows, "classes": classes, "torch_median_ms": med, "torch_min_ms": best,
               "xent_cpu_median_ms": xmed, "malloc_env": malloc_env_active(),
               "threads": torch.get_num_threads(), "torch_version": torch.__version__}
        if xmed:
            res["torch_over_xent"] = med / xmed
        if why:
            res["xent_error"] = why
        results.append(res)
        print(f"  {rows}x{classes}: torch median {med:.3f} ms (min {best:.3f})"
              + (f", xent cpu {xmed:.3f} ms" if xmed is not None else "")
              + (f" [xent: {why}]" if why else ""), flush=True)

    print()
    hdr = f"{'shape':>14} | {'torch ms':>10} | {'xent cpu ms':>11} | {'torch/xent':>10}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        shape = f"{r['rows']}x{r['classes']}"
        x = r["xent_cpu_median_ms"]
        xs = f"{x:11.3f}" if x is not None else f"{'n/a':>11}"
        ratio = f"{r['torch_over_xent']:10.2f}" if r.get("torch_over_xent") is not None else f"{'n/a':>10}"
        print(f"{shape:>14} | {r['torch_median_ms']:10.3f} | {xs} | {ratio}")
    if args.json:
        for r in results:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
