#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for the `xent` crate.

Run (torch lives outside the repo, see tests/fixtures/pytorch/README.md):

    /opt/torchvenv/bin/python scripts/gen_fixtures.py [--out tests/fixtures/pytorch]

Everything is deterministic: every case group draws its inputs from
``numpy.random.default_rng(BASE_SEED + crc32(group))`` and torch runs
single-threaded in float64.

Inputs are generated as float32 and saved as float32; the reference is computed
by PyTorch on the exact float64 conversion of those float32 values, so the Rust
side can feed the very same f32 inputs and compare against f64 truth.

Layout (see also the README written next to the manifest)
---------------------------------------------------------
``<out>/manifest.json``  {"torch_version", "numpy_version", "formulas", "cases": [...]}
``<out>/<case>/logits.npy``   float32, the loss's first argument ("input_kind" says
                               what it is: logits, probs (bce_probs, entropy) or
                               log_probs (kl_div)). Shape (N, C) or (N, C, d1, ...).
``<out>/<case>/targets.npy``  int64 class indices (N,) / (N, d1, ...) for hard-target
                               cross_entropy, otherwise float32 with the input's shape.
``<out>/<case>/weight.npy``   float32 (C,) optional (manifest "has_weight").
``<out>/<case>/pos_weight.npy`` float32 (C,) optional (manifest "has_pos_weight").
``<out>/<case>/loss.npy``     float64, () for mean/sum/batchmean; for "none" the
                               per-row shape (N,) / (N, d1, ...) for cross_entropy
                               and entropy, the element shape (N, C) for bce_* and kl_div.
``<out>/<case>/grad.npy``     float64, d(loss)/d(input) with the input's shape; for
                               reduction "none" it is d(sum of loss)/d(input).
Extra outputs are listed in the case's "files" map.

Formulas that are not PyTorch built-ins (computed with explicit float64 torch
code, gradients by autograd; Liger-Kernel / flash-attention semantics)
---------------------------------------------------------------------------
softcap (t > 0):  x' = t * tanh(x / t), applied elementwise to the logits
                  before everything else (softmax, lse, loss).
z-loss (s >= 0):  lse_i = logsumexp_c x'_ic;
                  loss_i = CE_i(x') + s * lse_i**2   for rows with target != ignore_index,
                  loss_i = 0                         for ignored rows;
                  mean = sum_i loss_i / #{i : target_i != ignore_index},
                  sum  = sum_i loss_i, none = loss_i.
                  "z_term.npy" stores the z part alone (s*lse^2, same reduction).
Keras-style binary label smoothing (eps): y' = y * (1 - eps) + eps / 2, then the
                  PyTorch BCE (with logits or on probabilities) on y'.
                  targets.npy stores the *unsmoothed* y; manifest label_smoothing = eps.
entropy:          H(P)_i = -sum_c P_ic log P_ic (0 log 0 = 0, torch.special.entr).
                  input_kind "probs": P is the input itself (grad = -(log P + 1)).
                  input_kind "logits": P = softmax(x) over the class dim.
                  mean = mean over rows, sum = sum over rows, none = per row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "gen_fixtures.py needs PyTorch. Install it outside the repo:\n"
        "  python3 -m venv /opt/torchvenv && /opt/torchvenv/bin/pip install torch numpy\n"
        "then run: /opt/torchvenv/bin/python scripts/gen_fixtures.py\n"
    )
    sys.exit(2)

BASE_SEED = 20240611
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures" / "pytorch"

FORMULAS = {
    "cross_entropy": "torch.nn.functional.cross_entropy(x, target, weight, ignore_index, reduction, label_smoothing) in float64",
    "bce_with_logits": "torch.nn.functional.binary_cross_entropy_with_logits(x, y', weight, pos_weight, reduction); weight and pos_weight are (C,) broadcast over rows",
    "bce_probs": "torch.nn.functional.binary_cross_entropy(p, y', weight, reduction); PyTorch clamps log(p), log(1-p) at >= -100",
    "kl_div": "torch.nn.functional.kl_div(input=log q, target, reduction, log_target); mean = mean over all N*C elements, batchmean = sum / N",
    "entropy": "H(P)_i = -sum_c P_ic log P_ic (torch.special.entr); input_kind probs: P = input; input_kind logits: P = softmax(input, dim=1); mean over rows",
    "softcap": "x' = t * tanh(x / t) applied to logits before softmax/lse (Liger-Kernel softcap)",
    "z_loss": "per row: loss_i = CE_i(x') + s * logsumexp(x'_i)^2 for non-ignored rows, 0 for ignored rows; mean divides by the number of non-ignored rows (Liger-Kernel / flash-attention); z_term.npy = the s*lse^2 part alone with the same reduction",
    "label_smoothing_binary": "Keras-style y' = y * (1 - eps) + eps / 2 (bce_with_logits, bce_probs); targets.npy holds the unsmoothed y",
    "grad": "grad.npy = d loss / d input (first argument); for reduction none d(sum(loss))/d input",
    "identity": "ce_soft_identity_*: loss.npy = H(P,Q) = soft-target cross_entropy with Q = softmax(logits); entropy.npy = H(P); kl.npy = KL(P||Q) = kl_div(log_softmax(logits) in float64, P) with batchmean for mean; H(P,Q) = H(P) + KL(P||Q)",
}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def rng_for(group: str) -> np.random.Generator:
    return np.random.default_rng(BASE_SEED + zlib.crc32(group.encode()))


def f64(a: np.ndarray) -> torch.Tensor:
    """Exact float64 tensor of a float32 array."""
    assert a.dtype == np.float32, a.dtype
    return torch.from_numpy(a.astype(np.float64))


def normal32(rng, shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def softmax_rows32(rng, shape, temp=1.0, zero_frac=0.0) -> np.ndarray:
    """float32 probability vectors along dim 1 (class dim)."""
    z = rng.standard_normal(shape) * temp
    p = np.exp(z - z.max(axis=1, keepdims=True))
    if zero_frac > 0:
        mask = rng.random(shape) < zero_frac
        # keep at least the argmax of each row non-zero
        keep = np.zeros(shape, dtype=bool)
        np.put_along_axis(keep, np.expand_dims(p.argmax(axis=1), 1), True, axis=1)
        p = np.where(mask & ~keep, 0.0, p)
    p = p / p.sum(axis=1, keepdims=True)
    return p.astype(np.float32)


def hard_targets(rng, n_shape, c) -> np.ndarray:
    return rng.integers(0, c, size=n_shape, dtype=np.int64)


def weights32(rng, c) -> np.ndarray:
    return rng.uniform(0.2, 2.0, size=c).astype(np.float32)


def autograd(fn, x32: np.ndarray):
    """Run fn on the float64 version of x32; return (loss, grad of loss or of sum(loss))."""
    x = f64(x32).requires_grad_(True)
    out = fn(x)
    if isinstance(out, tuple):
        loss, extras = out[0], out[1:]
    else:
        loss, extras = out, ()
    total = loss.sum() if loss.dim() > 0 else loss
    total.backward()
    extras = tuple(e.detach().numpy().astype(np.float64) for e in extras)
    return loss.detach().numpy().astype(np.float64), x.grad.numpy().astype(np.float64), extras


def finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


class Writer:
    def __init__(self, out: Path):
        self.out = out
        self.cases = []
        self.names = set()

    def add(self, *, name, group, family, reduction, input_kind, logits, targets=None,
            weight=None, pos_weight=None, loss, grad, extra=None, ignore_index=None,
            label_smoothing=0.0, soft_targets=False, pos_weight_scalar=None,
            log_target=False, z_loss_scale=0.0, softcap=None, note=None):
        assert name not in self.names, name
        self.names.add(name)
        d = self.out / name
        d.mkdir(parents=True, exist_ok=True)
        files = {}

        def save(role, fname, arr, dtype):
            arr = np.asarray(arr)
            assert arr.dtype == dtype, (name, role, arr.dtype, dtype)
            np.save(d / fname, arr)
            files[role] = fname

        save("logits", "logits.npy", logits, np.float32)
        if targets is not None:
            save("targets", "targets.npy", targets,
                 np.float32 if targets.dtype == np.float32 else np.int64)
        if weight is not None:
            save("weight", "weight.npy", weight, np.float32)
        if pos_weight is not None:
            save("pos_weight", "pos_weight.npy", pos_weight, np.float32)
        save("loss", "loss.npy", loss, np.float64)
        if grad is not None:
            assert grad.shape == logits.shape, (name, grad.shape, logits.shape)
            save("grad", "grad.npy", grad, np.float64)
        for role, arr in (extra or {}).items():
            save(role, f"{role}.npy", arr, np.float64)

        loss = np.asarray(loss)
        entry = {
            "name": name,
            "group": group,
            "family": family,
            "reduction": reduction,
            "input_kind": input_kind,
            "logits_shape": list(logits.shape),
            "targets_shape": list(targets.shape) if targets is not None else None,
            "targets_dtype": str(targets.dtype) if targets is not None else None,
            "loss_shape": list(loss.shape),
            "num_classes": int(logits.shape[1]),
            "ignore_index": ignore_index,
            "label_smoothing": float(label_smoothing),
            "has_weight": weight is not None,
            "soft_targets": bool(soft_targets),
            "pos_weight": pos_weight_scalar,
            "has_pos_weight": pos_weight is not None,
            "log_target": bool(log_target),
            "z_loss_scale": float(z_loss_scale),
            "softcap": softcap,
            "has_grad": grad is not None,
            "expect_nan": bool(np.isnan(loss).any()),
            "loss_value": finite_or_none(loss) if loss.shape == () else None,
            "files": files,
        }
        if note:
            entry["note"] = note
        self.cases.append(entry)


REDS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------
# cross entropy (PyTorch built-in)
# --------------------------------------------------------------------------------------


def ce_group(w: Writer, group, logits, targets, *, weight=None, ignore_index=-100,
             label_smoothing=0.0, reductions=REDS, note=None):
    soft = targets.dtype == np.float32
    for red in reductions:
        def fn(x):
            return F.cross_entropy(
                x,
                f64(targets) if soft else torch.from_numpy(targets),
                weight=None if weight is None else f64(weight),
                ignore_index=ignore_index,
                reduction=red,
                label_smoothing=label_smoothing,
            )

        loss, grad, _ = autograd(fn, logits)
        w.add(name=f"{group}_{red}", group=group, family="cross_entropy", reduction=red,
              input_kind="logits", logits=logits, targets=targets, weight=weight,
              loss=loss, grad=grad, ignore_index=ignore_index,
              label_smoothing=label_smoothing, soft_targets=soft, note=note)


def gen_cross_entropy(w: Writer):
    g = "ce_plain"
    r = rng_for(g)
    x = normal32(r, (16, 10), 2.0)
    ce_group(w, g, x, hard_targets(r, 16, 10))

    g = "ce_plain_wide"
    r = rng_for(g)
    x = normal32(r, (64, 300), 3.0)
    ce_group(w, g, x, hard_targets(r, 64, 300), reductions=("mean",),
             note="largest case: N=64, C=300")

    g = "ce_single_row"
    r = rng_for(g)
    x = normal32(r, (1, 7))
    ce_group(w, g, x, hard_targets(r, 1, 7))

    g = "ce_ignore_default"
    r = rng_for(g)
    x = normal32(r, (16, 12), 2.0)
    t = hard_targets(r, 16, 12)
    t[[1, 4, 5, 11]] = -100
    ce_group(w, g, x, t, note="rows 1,4,5,11 have target -100 (ignored)")

    g = "ce_ignore_custom"
    r = rng_for(g)
    x = normal32(r, (20, 8), 2.0)
    t = hard_targets(r, 20, 8)
    t[[0, 7, 13]] = 3
    ce_group(w, g, x, t, ignore_index=3,
             note="ignore_index=3 is also a valid class: every row with target 3 is ignored")

    g = "ce_ignore_neg1"
    r = rng_for(g)
    x = normal32(r, (12, 6), 2.0)
    t = hard_targets(r, 12, 6)
    t[[2, 3]] = -1
    ce_group(w, g, x, t, ignore_index=-1)

    g = "ce_all_ignored"
    r = rng_for(g)
    x = normal32(r, (8, 5))
    t = np.full(8, -100, dtype=np.int64)
    ce_group(w, g, x, t, note="every row ignored: mean is NaN (0/0) in PyTorch with an all-zero grad; sum is 0")

    g = "ce_weight"
    r = rng_for(g)
    x = normal32(r, (16, 10), 2.0)
    ce_group(w, g, x, hard_targets(r, 16, 10), weight=weights32(r, 10),
             note="mean = sum_i w[t_i] * l_i / sum_i w[t_i]")

    g = "ce_weight_ignore"
    r = rng_for(g)
    x = normal32(r, (16, 10), 2.0)
    t = hard_targets(r, 16, 10)
    t[[0, 9]] = -100
    ce_group(w, g, x, t, weight=weights32(r, 10))

    for ls, tag in ((0.1, "0p1"), (1.0, "1p0")):
        g = f"ce_smooth_{tag}"
        r = rng_for(g)
        x = normal32(r, (16, 10), 2.0)
        ce_group(w, g, x, hard_targets(r, 16, 10), label_smoothing=ls)

    g = "ce_smooth_ignore"
    r = rng_for(g)
    x = normal32(r, (16, 10), 2.0)
    t = hard_targets(r, 16, 10)
    t[[3, 6]] = -100
    ce_group(w, g, x, t, label_smoothing=0.1)

    g = "ce_weight_ignore_smooth"
    r = rng_for(g)
    x = normal32(r, (24, 11), 2.0)
    t = hard_targets(r, 24, 11)
    t[[2, 5, 17]] = 4
    ce_group(w, g, x, t, weight=weights32(r, 11), ignore_index=4, label_smoothing=0.2,
             note="weight + ignore_index=4 + label_smoothing=0.2 (PyTorch semantics)")

    g = "ce_soft"
    r = rng_for(g)
    x = normal32(r, (16, 10), 2.0)
    ce_group(w, g, x, softmax_rows32(r, (16, 10), 1.5, zero_frac=0.3),
             note="soft targets: rows are f32 probability vectors (some exact zeros)")

    g = "ce_soft_smooth_weight"
    r = rng_for(g)
    x = normal32(r, (16, 10), 2.0)
    ce_group(w, g, x, softmax_rows32(r, (16, 10), 1.5), weight=weights32(r, 10),
             label_smoothing=0.1,
             note="soft targets + weight + label_smoothing=0.1; PyTorch mean divides by N (not by the weights) for soft targets")

    g = "ce_nd"
    r = rng_for(g)
    x = normal32(r, (2, 5, 3, 4), 2.0)
    ce_group(w, g, x, hard_targets(r, (2, 3, 4), 5),
             note="N-d layout: logits (N, C, d1, d2), targets (N, d1, d2); class dim is 1")

    g = "ce_nd_weight_ignore_smooth"
    r = rng_for(g)
    x = normal32(r, (2, 5, 3, 4), 2.0)
    t = hard_targets(r, (2, 3, 4), 5)
    t[0, 1, 2] = -100
    t[1, 0, :] = -100
    ce_group(w, g, x, t, weight=weights32(r, 5), label_smoothing=0.1)

    g = "ce_nd_soft"
    r = rng_for(g)
    x = normal32(r, (2, 5, 3, 4), 2.0)
    ce_group(w, g, x, softmax_rows32(r, (2, 5, 3, 4), 1.0),
             note="N-d soft targets: probabilities along dim 1")

    g = "ce_offset_1e4"
    r = rng_for(g)
    x = (normal32(r, (16, 10), 2.0) + np.float32(1e4)).astype(np.float32)
    ce_group(w, g, x, hard_targets(r, 16, 10),
             note="logits offset by +1e4 (in f32); tests max-subtraction")

    g = "ce_scaled_1000"
    r = rng_for(g)
    x = (normal32(r, (16, 10)) * np.float32(1000)).astype(np.float32)
    ce_group(w, g, x, hard_targets(r, 16, 10),
             note="logits scaled by 1000: softmax is nearly one-hot, many losses are huge or ~0")

    g = "ce_confident"
    r = rng_for(g)
    x = normal32(r, (16, 10))
    t = hard_targets(r, 16, 10)
    x[np.arange(16), t] += np.float32(30.0)
    ce_group(w, g, x, t,
             note="target logit +30 above the rest: loss ~1e-13 per row; checks relative accuracy of tiny losses/grads")

    g = "ce_confident_wrong"
    r = rng_for(g)
    x = normal32(r, (16, 10))
    t = hard_targets(r, 16, 10)
    x[np.arange(16), (t + 1) % 10] += np.float32(50.0)
    ce_group(w, g, x, t, note="a wrong class is +50 above the rest: loss ~50 per row")


# --------------------------------------------------------------------------------------
# z-loss and softcap (explicit float64 code)
# --------------------------------------------------------------------------------------


def ce_zloss_softcap(x, targets, *, z_scale, softcap, ignore_index, reduction):
    """Liger-Kernel / flash-attention semantics, see module docstring."""
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    t = torch.from_numpy(targets)
    ce = F.cross_entropy(x, t, ignore_index=ignore_index, reduction="none")
    valid = (t != ignore_index).to(x.dtype)
    lse = torch.logsumexp(x, dim=1)
    z = z_scale * lse.pow(2) * valid
    per_row = ce + z
    if reduction == "none":
        return per_row, z
    if reduction == "sum":
        return per_row.sum(), z.sum()
    n = valid.sum()
    return per_row.sum() / n, z.sum() / n


def zs_group(w: Writer, group, logits, targets, *, z_scale=0.0, softcap=None,
             ignore_index=-100, note=None):
    for red in REDS:
        def fn(x):
            return ce_zloss_softcap(x, targets, z_scale=z_scale, softcap=softcap,
                                    ignore_index=ignore_index, reduction=red)

        loss, grad, (z,) = autograd(fn, logits)
        w.add(name=f"{group}_{red}", group=group, family="cross_entropy", reduction=red,
              input_kind="logits", logits=logits, targets=targets, loss=loss, grad=grad,
              extra={"z_term": z}, ignore_index=ignore_index, z_loss_scale=z_scale,
              softcap=softcap, note=note)


def gen_zloss_softcap(w: Writer):
    g = "ce_zloss"
    r = rng_for(g)
    zs_group(w, g, normal32(r, (16, 10), 3.0), hard_targets(r, 16, 10), z_scale=1e-4)

    g = "ce_zloss_big"
    r = rng_for(g)
    x = (normal32(r, (16, 10), 3.0) + np.float32(20.0)).astype(np.float32)
    zs_group(w, g, x, hard_targets(r, 16, 10), z_scale=0.01,
             note="logits offset +20 so lse^2 ~ 500 dominates; s = 0.01")

    g = "ce_softcap"
    r = rng_for(g)
    zs_group(w, g, normal32(r, (16, 10), 20.0), hard_targets(r, 16, 10), softcap=30.0,
             note="logits ~ N(0, 20^2), softcap 30: tanh saturates for many entries")

    g = "ce_zloss_softcap"
    r = rng_for(g)
    zs_group(w, g, normal32(r, (16, 10), 20.0), hard_targets(r, 16, 10), z_scale=1e-3,
             softcap=15.0, note="lse is taken of the soft-capped logits")

    g = "ce_zloss_ignore"
    r = rng_for(g)
    t = hard_targets(r, 16, 10)
    t[[0, 5, 6, 15]] = -100
    zs_group(w, g, normal32(r, (16, 10), 3.0), t, z_scale=1e-3,
             note="ignored rows contribute neither CE nor z-loss; mean divides by the 12 valid rows")


# --------------------------------------------------------------------------------------
# binary cross entropy
# --------------------------------------------------------------------------------------


def smooth_binary(y: torch.Tensor, eps: float) -> torch.Tensor:
    return y * (1.0 - eps) + eps / 2.0


def bce_logits_group(w, group, x, y, *, weight=None, pos_weight=None, pos_weight_scalar=None,
                     label_smoothing=0.0, note=None):
    for red in REDS:
        def fn(xx):
            yy = f64(y)
            if label_smoothing:
                yy = smooth_binary(yy, label_smoothing)
            return F.binary_cross_entropy_with_logits(
                xx, yy,
                weight=None if weight is None else f64(weight),
                pos_weight=None if pos_weight is None else f64(pos_weight),
                reduction=red)

        loss, grad, _ = autograd(fn, x)
        w.add(name=f"{group}_{red}", group=group, family="bce_with_logits", reduction=red,
              input_kind="logits", logits=x, targets=y, weight=weight, pos_weight=pos_weight,
              pos_weight_scalar=pos_weight_scalar, loss=loss, grad=grad,
              label_smoothing=label_smoothing, soft_targets=bool(((y > 0) & (y < 1)).any()),
              note=note)


def bce_probs_group(w, group, p, y, *, weight=None, label_smoothing=0.0, note=None):
    for red in REDS:
        def fn(pp):
            yy = f64(y)
            if label_smoothing:
                yy = smooth_binary(yy, label_smoothing)
            return F.binary_cross_entropy(
                pp, yy, weight=None if weight is None else f64(weight), reduction=red)

        loss, grad, _ = autograd(fn, p)
        w.add(name=f"{group}_{red}", group=group, family="bce_probs", reduction=red,
              input_kind="probs", logits=p, targets=y, weight=weight, loss=loss, grad=grad,
              label_smoothing=label_smoothing, soft_targets=bool(((y > 0) & (y < 1)).any()),
              note=note)


def binary_targets(r, shape):
    return (r.random(shape) < 0.4).astype(np.float32)


def gen_bce(w: Writer):
    g = "bcel_plain"
    r = rng_for(g)
    bce_logits_group(w, g, normal32(r, (12, 8), 3.0), binary_targets(r, (12, 8)))

    g = "bcel_soft_targets"
    r = rng_for(g)
    bce_logits_group(w, g, normal32(r, (12, 8), 3.0), r.random((12, 8)).astype(np.float32),
                     note="targets uniform in [0,1)")

    g = "bcel_weight"
    r = rng_for(g)
    bce_logits_group(w, g, normal32(r, (12, 8), 3.0), binary_targets(r, (12, 8)),
                     weight=weights32(r, 8), note="weight (C,) broadcast over rows")

    g = "bcel_pos_weight_scalar"
    r = rng_for(g)
    bce_logits_group(w, g, normal32(r, (12, 8), 3.0), binary_targets(r, (12, 8)),
                     pos_weight=np.full(8, 2.5, dtype=np.float32), pos_weight_scalar=2.5,
                     note="pos_weight = 2.5 for every class (pos_weight.npy repeats it)")

    g = "bcel_weight_pos_weight"
    r = rng_for(g)
    bce_logits_group(w, g, normal32(r, (12, 8), 3.0), r.random((12, 8)).astype(np.float32),
                     weight=weights32(r, 8), pos_weight=r.uniform(0.5, 4.0, 8).astype(np.float32),
                     note="per-class weight and per-class pos_weight, soft targets")

    g = "bcel_extreme"
    r = rng_for(g)
    x = normal32(r, (8, 6), 1.0)
    x[0, :] = np.array([-100, -30, 30, 100, 0, 1e-3], dtype=np.float32)
    x[1, :] = np.array([200, -200, 50, -50, 20, -20], dtype=np.float32)
    bce_logits_group(w, g, x, binary_targets(r, (8, 6)),
                     note="very large |logits|: needs the stable max(x,0) - x*y + log1p(exp(-|x|)) form")

    g = "bcel_smooth"
    r = rng_for(g)
    bce_logits_group(w, g, normal32(r, (12, 8), 3.0), binary_targets(r, (12, 8)),
                     label_smoothing=0.1, note="Keras-style y' = y(1-0.1) + 0.05")

    g = "bcep_plain"
    r = rng_for(g)
    p = r.uniform(0.01, 0.99, (12, 8)).astype(np.float32)
    bce_probs_group(w, g, p, binary_targets(r, (12, 8)))

    g = "bcep_weight_soft"
    r = rng_for(g)
    p = r.uniform(1e-4, 1 - 1e-4, (12, 8)).astype(np.float32)
    bce_probs_group(w, g, p, r.random((12, 8)).astype(np.float32), weight=weights32(r, 8))

    g = "bcep_smooth"
    r = rng_for(g)
    p = r.uniform(0.01, 0.99, (12, 8)).astype(np.float32)
    bce_probs_group(w, g, p, binary_targets(r, (12, 8)), label_smoothing=0.1,
                    note="Keras-style y' = y(1-0.1) + 0.05, then F.binary_cross_entropy")

    g = "bcep_near_edges"
    r = rng_for(g)
    p = r.uniform(0.2, 0.8, (4, 6)).astype(np.float32)
    p[0, :] = np.array([1e-7, 1 - 1e-7, 1e-30, 0.5, 1e-3, 0.999], dtype=np.float32)
    bce_probs_group(w, g, p, binary_targets(r, (4, 6)),
                    note="probabilities very close to 0/1 (still inside (0,1) in f32)")


# --------------------------------------------------------------------------------------
# KL divergence, entropy, identity
# --------------------------------------------------------------------------------------


def log_softmax32(x32: np.ndarray) -> np.ndarray:
    return F.log_softmax(torch.from_numpy(x32), dim=1).numpy().astype(np.float32)


def gen_kl_entropy(w: Writer):
    for log_target in (False, True):
        g = f"kl_{'logt' if log_target else 'probt'}"
        r = rng_for(g)
        logq = log_softmax32(normal32(r, (12, 9), 2.0))
        if log_target:
            tgt = log_softmax32(normal32(r, (12, 9), 2.0))
        else:
            tgt = softmax_rows32(r, (12, 9), 1.5, zero_frac=0.25)
        for red in ("mean", "sum", "batchmean", "none"):
            def fn(x):
                return F.kl_div(x, f64(tgt), reduction=red, log_target=log_target)

            loss, grad, _ = autograd(fn, logq)
            w.add(name=f"{g}_{red}", group=g, family="kl_div", reduction=red,
                  input_kind="log_probs", logits=logq, targets=tgt, loss=loss, grad=grad,
                  log_target=log_target, soft_targets=True,
                  note=("target holds log-probabilities" if log_target else
                        "target holds probabilities, some exact zeros (0*log0 = 0)")
                  + "; input = f32 log_softmax of random logits; mean = over N*C elements")

    g = "kl_unnormalized_input"
    r = rng_for(g)
    x = normal32(r, (8, 5), 1.0)
    tgt = softmax_rows32(r, (8, 5))
    for red in ("mean", "sum", "batchmean", "none"):
        loss, grad, _ = autograd(lambda xx: F.kl_div(xx, f64(tgt), reduction=red), x)
        w.add(name=f"{g}_{red}", group=g, family="kl_div", reduction=red,
              input_kind="log_probs", logits=x, targets=tgt, loss=loss, grad=grad,
              soft_targets=True,
              note="input is NOT normalized: PyTorch kl_div is elementwise t*(log t - x), no softmax")

    def entropy_rows(p):
        return torch.special.entr(p).sum(dim=1)

    def reduce_rows(v, red):
        return v.mean() if red == "mean" else v.sum() if red == "sum" else v

    g = "entropy_probs"
    r = rng_for(g)
    p = softmax_rows32(r, (12, 9), 1.5)
    for red in REDS:
        loss, grad, _ = autograd(lambda pp: reduce_rows(entropy_rows(pp), red), p)
        w.add(name=f"{g}_{red}", group=g, family="entropy", reduction=red, input_kind="probs",
              logits=p, loss=loss, grad=grad, soft_targets=True,
              note="H(P) of strictly positive f32 probability rows; grad = -(log p + 1)")

    g = "entropy_probs_zeros"
    r = rng_for(g)
    p = softmax_rows32(r, (12, 9), 1.5, zero_frac=0.3)
    p[0] = 0
    p[0, 4] = 1  # one-hot row: H = 0
    for red in REDS:
        with torch.no_grad():
            loss = reduce_rows(entropy_rows(f64(p)), red).numpy().astype(np.float64)
        w.add(name=f"{g}_{red}", group=g, family="entropy", reduction=red, input_kind="probs",
              logits=p, loss=loss, grad=None, soft_targets=True,
              note="rows with exact zeros (0 log 0 = 0), row 0 one-hot; no grad (infinite at p=0)")

    g = "entropy_logits"
    r = rng_for(g)
    x = normal32(r, (12, 9), 2.0)
    for red in REDS:
        loss, grad, _ = autograd(
            lambda xx: reduce_rows(entropy_rows(F.softmax(xx, dim=1)), red), x)
        w.add(name=f"{g}_{red}", group=g, family="entropy", reduction=red,
              input_kind="logits", logits=x, loss=loss, grad=grad,
              note="H(softmax(logits)) per row; grad w.r.t. logits")

    # identity: H(P, Q) = H(P) + KL(P || Q)
    g = "ce_soft_identity"
    r = rng_for(g)
    x = normal32(r, (16, 10), 2.0)
    p = softmax_rows32(r, (16, 10), 1.5, zero_frac=0.2)
    for red in REDS:
        loss, grad, _ = autograd(
            lambda xx: F.cross_entropy(xx, f64(p), reduction=red), x)
        with torch.no_grad():
            logq = F.log_softmax(f64(x), dim=1)
            kl_el = F.kl_div(logq, f64(p), reduction="none").sum(dim=1)
            h = entropy_rows(f64(p))
            kl = reduce_rows(kl_el, red)  # mean over rows == batchmean
            hr = reduce_rows(h, red)
        kl = kl.numpy().astype(np.float64)
        hr = hr.numpy().astype(np.float64)
        gap = float(np.max(np.abs(loss - (hr + kl))))
        assert gap < 1e-12, gap
        w.add(name=f"{g}_{red}", group=g, family="cross_entropy", reduction=red,
              input_kind="logits", logits=x, targets=p, loss=loss, grad=grad,
              extra={"entropy": hr, "kl": kl}, ignore_index=-100, soft_targets=True,
              note=f"loss = H(P,Q) (soft CE, Q = softmax(logits)); entropy.npy = H(P); kl.npy = KL(P||Q) "
                   f"(batchmean for mean); loss = entropy + kl (max |gap| in f64 = {gap:.1e})")


# --------------------------------------------------------------------------------------


README = """# PyTorch reference fixtures

Generated by `scripts/gen_fixtures.py` with PyTorch {torch} (numpy {numpy}), all
references computed in float64 on CPU, single-threaded, fixed seeds. Do not edit by hand.

Regenerate (PyTorch is installed outside the repo, it is not a build dependency):

```sh
python3 -m venv /opt/torchvenv && /opt/torchvenv/bin/pip install torch numpy   # once
/opt/torchvenv/bin/python scripts/gen_fixtures.py
```

The output is byte-for-byte reproducible for a given torch/numpy version.
`scripts/check_fixtures.py` (numpy only) re-derives every loss from the stored inputs
with independent numpy formulas and checks sampled gradient entries by finite
differences: `/opt/torchvenv/bin/python scripts/check_fixtures.py`.

## Layout

`manifest.json` has `torch_version`, `numpy_version`, `formulas` (the exact formulas,
including those that are not PyTorch built-ins) and `cases`, one entry per case, and
one folder per case named after it:

| file | dtype | shape | what |
|---|---|---|---|
| `logits.npy` | float32 | (N, C) or (N, C, d1, ...) | the loss's first argument; `input_kind` says whether it is `logits`, `probs` (bce_probs, entropy) or `log_probs` (kl_div). Class dim is 1. |
| `targets.npy` | int64 or float32 | (N,) / (N, d1, ...) int64 for hard-target cross_entropy; else the input's shape, float32 | class indices, soft targets / probabilities, binary targets (unsmoothed), or log-probabilities (kl_div with `log_target`) |
| `weight.npy` | float32 | (C,) | class weight (`has_weight`); for bce_* broadcast over rows |
| `pos_weight.npy` | float32 | (C,) | bce_with_logits pos_weight (`has_pos_weight`); `pos_weight` holds the scalar when all classes share it |
| `loss.npy` | float64 | () for mean/sum/batchmean; none: (N,)/(N, d1, ...) for cross_entropy and entropy, (N, C) for bce_* and kl_div | reference loss |
| `grad.npy` | float64 | input's shape | d loss / d input; for `none`, d(sum of losses)/d input. Absent when `has_grad` is false. |
| extras | float64 | like `loss.npy` | `z_term.npy` (z-loss part alone), `entropy.npy` + `kl.npy` (identity cases) |

Each case entry holds: `name`, `group` (cases of a group share inputs and differ in
reduction), `family` (`cross_entropy`, `bce_with_logits`, `bce_probs`, `kl_div`,
`entropy`), `reduction` (`mean`, `sum`, `none`, `batchmean`), `input_kind`, shapes,
`num_classes`, and every option: `ignore_index` (int for cross_entropy, else null),
`label_smoothing`, `has_weight`, `soft_targets`, `pos_weight` (scalar or null),
`has_pos_weight`, `log_target`, `z_loss_scale` (0 = off), `softcap` (null = off), plus
`has_grad`, `expect_nan` (the reference loss is NaN, e.g. mean over all-ignored rows),
`loss_value` (scalar loss inline, null when not scalar or not finite), `files`
(role → file name) and an optional `note`.

## Semantics that are not PyTorch built-ins

- softcap t: `x' = t * tanh(x / t)` on the logits before softmax / lse (Liger-Kernel).
- z-loss s: `loss_i = CE_i(x') + s * logsumexp(x'_i)^2` for non-ignored rows, 0 for
  ignored rows; `mean` divides by the number of non-ignored rows (Liger-Kernel,
  flash-attention). `z_term.npy` is the `s * lse^2` part alone.
- binary label smoothing eps (bce_with_logits, bce_probs): Keras-style
  `y' = y * (1 - eps) + eps / 2`; `targets.npy` holds the unsmoothed `y`.
- entropy: `H(P)_i = -sum_c P_ic log P_ic` (0 log 0 = 0); `input_kind` `probs`: P is the
  input, `logits`: P = softmax(input). mean/sum/none over rows.
- `ce_soft_identity_*`: `loss = H(P,Q)` (soft-target cross_entropy), `entropy.npy = H(P)`,
  `kl.npy = KL(P||Q)` (batchmean for `mean`), and `loss = entropy + kl`.

## Cases

{count} cases, {size} bytes of data (manifest + .npy, this README excluded). Groups:

{groups}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    torch.set_num_threads(1)
    # kl_div 'mean' (elementwise mean) is tested on purpose; silence its deprecation note.
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides")
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    # Remove previously generated case folders (only the ones this script manages).
    if out.exists():
        old = out / "manifest.json"
        if old.exists():
            for c in json.loads(old.read_text()).get("cases", []):
                shutil.rmtree(out / c["name"], ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    w = Writer(out)
    gen_cross_entropy(w)
    gen_zloss_softcap(w)
    gen_bce(w)
    gen_kl_entropy(w)

    manifest = {
        "generator": "scripts/gen_fixtures.py",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "base_seed": BASE_SEED,
        "compute_dtype": "float64",
        "input_dtype": "float32",
        "formulas": FORMULAS,
        "cases": w.cases,
    }
    text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
    (out / "manifest.json").write_text(text)

    groups = {}
    for c in w.cases:
        groups.setdefault(c["group"], []).append(c)
    lines = []
    for gname, cs in groups.items():
        c0 = cs[0]
        reds = ", ".join(c["reduction"] for c in cs)
        shape = "x".join(map(str, c0["logits_shape"]))
        lines.append(f"- `{gname}` ({c0['family']}, {shape}; {reds})"
                     + (f": {c0['note']}" if c0.get("note") else ""))

    def total_size():
        return sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "README.md")

    readme = README.format(torch=torch.__version__, numpy=np.__version__, count=len(w.cases),
                           size="{size}", groups="\n".join(lines))
    (out / "README.md").write_text(readme.replace("{size}", str(total_size())))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())

    fams = {}
    for c in w.cases:
        fams[c["family"]] = fams.get(c["family"], 0) + 1
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"wrote {len(w.cases)} cases in {len(groups)} groups to {out}")
    for f, n in fams.items():
        print(f"  {f:16s} {n:4d} cases")
    print(f"  NaN-loss cases: {[c['name'] for c in w.cases if c['expect_nan']]}")
    print(f"total size: {size} bytes ({size / 1e6:.2f} MB)")
    if size > 3_000_000:
        print("WARNING: fixtures exceed 3 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
