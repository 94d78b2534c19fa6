"""Side-by-side tables from scripts/gpu/run.sh's bench.jsonl (xent, every swept configuration) and
peers.jsonl (PyTorch eager, Liger-Kernel on CUDA). Times are device times of the fused loss + gradient
(xent: timestamp queries over back-to-back device-resident calls; peers: CUDA events); 'floor' is one
read + one write of the logits at the device copy bandwidth torch measured (else xent's own copy
kernel's); 'fwd % of read' is the loss alone's GB/s (logits read) over xent's read kernel's, measured
in the same run. Per shape the fastest xent configuration is marked with *. A second table has the
host-to-host calls, where timed (not with --device-only): the fused call from host memory to host
memory against its ceiling, the logits up and the gradient down at the transfer rates measured in the
same run."""
import json
import sys


def load(path):
    try:
        return [json.loads(line) for line in open(path) if line.strip().startswith("{")]
    except OSError:
        return []


def config(b):
    parts = [f"wg{b.get('workgroup_size')}", str(b.get("row_split") or "off")]
    if b.get("split_kernel"):
        # Slices that waited in vain for their row and were finished by the repair dispatch (a second read).
        repaired = f", {b['repaired_slices']}/{b['split_slices']} slices repaired" if b.get("split_slices") else ""
        parts.append(f"split ran{repaired}")
    # The setting reaches only f32 rows that are not in groups of 4, in the fused kernel.
    if b.get("unaligned_f32") and b.get("dtype", "f32") == "f32" and b["classes"] % 4 and not b.get("split_kernel"):
        parts.append(f"f32 {b['unaligned_f32']}")
    if b.get("gradient_order") == "backward":
        parts.append("gradient backward")
    if b.get("shader_checks") == "full":
        parts.append("full shader checks")
    if b.get("transfer_piece_mib"):
        parts.append(f"pieces of {b['transfer_piece_mib']} MiB")
    return " ".join(parts)


def fmt(value, places=3):
    return f"{value:.{places}f}" if isinstance(value, (int, float)) else "–"


bench = [b for b in load(sys.argv[1]) if b.get("backend") == "gpu"]
peers = load(sys.argv[2] if len(sys.argv) > 2 else "/nonexistent")
torch_copy = next((p["gbps"] for p in peers if p.get("impl") == "torch_copy"), None)
peer = {}
for p in peers:
    if "median_ms" in p and "rows" in p:
        dtype = p.get("dtype", "float32")
        dtype = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(dtype, dtype)
        peer[(p["impl"], p["rows"], p["classes"], dtype)] = p["median_ms"]
print(f"device copy (torch, read+write): {torch_copy:.0f} GB/s" if torch_copy else "device copy: torch not run; floor from xent's copy kernel")
print("| shape | dtype | config | xent kernel ms | xent fwd ms | fwd % of read | copy GB/s | read GB/s | torch eager ms | Liger ms | floor ms | % of floor | ÷ Liger |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
best = {}
for b in bench:
    key = (b["rows"], b["classes"], b.get("dtype", "f32"))
    if isinstance(b.get("kernel_ms"), (int, float)) and (key not in best or b["kernel_ms"] < best[key]):
        best[key] = b["kernel_ms"]
for b in sorted(bench, key=lambda b: (b["rows"], b["classes"], b.get("dtype", "f32"), b.get("kernel_ms") or 1e9)):
    n, c, dtype = b["rows"], b["classes"], b.get("dtype", "f32")
    k = b.get("kernel_ms")
    size = 2 if dtype in ("bf16", "f16") else 4
    copy = torch_copy or b.get("copy_gbps")
    floor = 2 * n * c * size / (copy * 1e6) if copy else None
    liger = peer.get(("liger_fwd_bwd_inplace", n, c, dtype))
    eager = peer.get(("torch_eager_fwd_bwd", n, c, dtype))
    mark = "*" if k is not None and best.get((n, c, dtype)) == k else ""
    read_share = b.get("forward_fraction_of_read")
    print(f"| {n}×{c} | {dtype} | {config(b)} | {fmt(k)}{mark} | {fmt(b.get('forward_kernel_ms'))} | "
          f"{fmt(100 * read_share if read_share else None, 0)} | {fmt(b.get('copy_gbps'), 0)} | {fmt(b.get('read_gbps'), 0)} | "
          f"{fmt(eager)} | {fmt(liger)} | {fmt(floor)} | {fmt(100 * floor / k if floor and k else None, 0)} | "
          f"{fmt(k / liger if k and liger else None, 2)} |")

hosted = [b for b in bench if b.get("host_timed") and isinstance(b.get("median_ms"), (int, float))]
if hosted:
    print()
    print("| shape | dtype | config | host→host ms | up GB/s | down GB/s | ceiling ms | % of ceiling |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for b in sorted(hosted, key=lambda b: (b["rows"], b["classes"], b.get("dtype", "f32"), b["median_ms"])):
        n, c, dtype = b["rows"], b["classes"], b.get("dtype", "f32")
        size = 2 if dtype in ("bf16", "f16") else 4
        up, down = b.get("upload_gbps"), b.get("download_gbps")
        ceiling = n * c * size / (up * 1e6) + n * c * size / (down * 1e6) if up and down else None
        print(f"| {n}×{c} | {dtype} | {config(b)} | {fmt(b['median_ms'])} | {fmt(up, 1)} | {fmt(down, 1)} | "
              f"{fmt(ceiling)} | {fmt(100 * ceiling / b['median_ms'] if ceiling else None, 0)} |")
