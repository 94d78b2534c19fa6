#!/usr/bin/env python3
"""Randomized cross-check of the `xent` CLI against PyTorch in float64.

A tool run by hand (it is not part of CI or the tests, which need no Python):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy   # once
    cargo build --release                                                         # the CLI
    XDG_RUNTIME_DIR=/tmp /tmp/torchvenv/bin/python scripts/torch_sweep.py --seed 1 --cases 500

Options: ``--seed S`` (several: ``--seed 1 2 3``), ``--cases N`` per seed,
``--backends cpu,gpu`` (gpu = wgpu, lavapipe on a machine without a GPU),
``--xent PATH`` (default target/release/xent), ``--case I`` (rerun one case of
the seed: every mismatch line is such a reproduction), ``--keep DIR`` (keep the
.npy files of the cases there instead of a temporary folder), ``-v``.

What it does, per case (a case depends only on its seed and index):

1. draws a family and options at random: ``xent loss`` with class-index targets
   (dtypes int8..int64, uint8..uint32; the (N, C) and the N-d (N, C, d1[, d2])
   layouts) or soft targets (float32/float64), logits float32, float64 (the CLI
   converts them to f32) or float16 (kept half precision, gradient in f16);
   ``--reduction``, ``--ignore-index`` (default, explicit -100, a valid class, -1,
   a large value; hitting no, some or every row), ``--weight`` (zeros included),
   ``--label-smoothing`` (0, small, 1), ``--z-loss``, ``--softcap``,
   ``--logit-scale``; ``xent loss --input probs`` (Keras' categorical
   cross-entropy on probabilities); ``xent bce`` on logits (``--pos-weight`` per
   class or one value repeated) and ``--probs`` (near and at 0 and 1); ``xent kl``
   with and without ``--log-target`` (none/sum/mean/batchmean). Shapes: N from 1
   to 300, C from 1 to 3000 (C = 1, 2, odd C included; most cases small, so that
   lavapipe stays quick). Logits scaled 1e-3 .. 1e3, offset by +-1e4, with -inf on
   non-target classes, confident rows, -inf at the target, NaN / +inf rows, and
   garbage (NaN, +-inf) in ignored rows. About one case in ten carries one bad
   value (out-of-range target or probability, bad option, wrong shape).
2. writes the .npy inputs, runs ``xent ... --backend cpu`` and ``--backend gpu``
   with ``--grad-out`` and ``--losses-out`` and reads the JSON report;
3. computes the reference in float64 from the very values the CLI sees (f16
   logits widened exactly, f64 files rounded to f32 first, option values rounded
   to f32 as the CLI parses them): PyTorch's ``F.cross_entropy``,
   ``F.binary_cross_entropy_with_logits``, ``F.binary_cross_entropy``,
   ``F.kl_div``, the formulas of scripts/gen_fixtures.py for what PyTorch lacks
   (softcap ``x' = t·tanh(s·x/t)``, logit scale, z-loss ``z·lse²`` with the mean's
   divisor ``Σ w_y`` of the rows not ignored, Keras-style binary smoothing), and
   Keras' ``from_logits=False`` cross-entropy (rows renormalised, clipped to the
   f32 bounds [f32(1e-7), 1 - f32(1e-7)]); gradients by autograd;
4. compares the reported loss (and z-loss), every per-row / per-element loss of
   ``--losses-out`` and every gradient entry of ``--grad-out``. NaN must be NaN,
   an infinity the same infinity. Expected rejections: a case PyTorch rejects,
   or one README documents as unsupported, must exit with status 2, print an
   ``error: `` line and write no output file; any other exit is a mismatch.

Documented deliberate differences (README "Deliberate differences from PyTorch"
and "The rest of the family") the script expects: an ignored row's gradient is
exactly 0 whatever its logits (PyTorch: NaN for NaN/inf rows); a non-finite loss
is a JSON string; ``--input probs`` rows that sum to 0 or hold NaN/inf give a NaN
loss and a NaN gradient row; ``bce`` of a logit of ``-inf`` with a target above 0
is ``+inf`` (PyTorch: NaN). xent's own choices where PyTorch has no word: the
z-term of a row whose max ``x'`` is not finite is NaN (as its loss), and a
``mean`` z-loss over a zero divisor is NaN (README: such a mean is NaN).

Tolerances (the logic of tests/pytorch_parity.rs and tests/family_parity.rs,
extended to the input conditioning that those small fixtures did not need):

- cross-entropy losses: ``1e-5·|ref| + 1e-13`` (pytorch_parity: f32 arithmetic
  with careful accumulation; 1e-13 is PyTorch's own float64 rounding of
  ``lse - x_t`` on confident rows). Gradients: ``2e-6·max|ref grad| + 4e-16``
  (pytorch_parity: the per-row factor's rounding, at the scale of the largest
  entry; 4e-16 is float64's rounding of ``softmax - 1``).
- with a logit scale or a softcap the transformed logits ``x'`` are computed in
  f32, each off by up to ``δ = 4·u·(max|x'| of the row + t)`` (u = 2^-24, t the
  softcap, for tanh's absolute error): the loss may move by ``δ·Σ|∂L/∂x'|`` (from
  autograd), a gradient entry by ``2δ·|∂x'/∂x|·(|h_c| + Σ_row|h|)`` (h = ∂L/∂x';
  softmax moves by a relative 2δ) plus ``4u·|s|·|h_c|`` for ``1 - tanh²``.
- the gradient ``(A + 2z·lse)·p_c − T_c`` (T_c the target terms, A their sum)
  is formed in f32, so an entry carries ``(4 + log2 C)·u·|A + 2z·lse|·p_c``
  times the factor (p_c from an exp of a few ulps and a division, and the row's
  common factor ``(A + 2z·lse)/S`` from f32 sums over C classes, a rounding per
  level of the GPU's tree: seeds 17 and 19 measured up to 6u there; what
  PyTorch's own f32 ``softmax − target`` carries: it shows where p_c and
  T_c nearly cancel, e.g. label smoothing 1 with near-uniform rows, or C = 1 with
  a z-loss); a class target's own entry with p_y > 0.5 carries only
  ``(4 + log2 C)·u·|ε/C·Σw + 2z·lse|·p_y``, as xent forms a confident row's ``p_y − 1``
  exactly. PyTorch's own float64 adds
  ``4·2^-53·(|lse| + |x'_c|)·|A + 2z·lse|·p_c`` (pytorch_parity's 4e-16 floor,
  scaled: float64's ``exp(x' − lse)`` near 1 with lse ~ 30).
- the rest of the family: losses ``1e-5·|ref| + 8u·M + 1e-12`` per element, with
  M the size of the terms an f32 formula cancels (BCE on logits with a target
  strictly inside (0, 1): ``|w|(1+|pw|)(|x|+1)``; BCE on probabilities:
  ``|w|(|y|+|1-y|)``, an f32 ``log(1-p)``; KL: ``|t log t| + |t x|`` or
  ``e^t(|t|+|x|)``; probability cross-entropy: ``Σ|t|·(2 + log2 C)``, the
  renormalising sum); a reduced loss sums those over the elements times the
  reduction's factor. Gradients ``1e-6·max(|ref|, scale)`` (family_parity), the
  scale being the reduction's factor times the entry's weights (BCE:
  ``f·|w|(1+|y|+|pw·y|)``, on probabilities divided by ``max(p(1-p), 1e-12)``;
  probability cross-entropy: ``f·(T/S + t_j/p_j)``).
- float16 gradients are rounded once to the nearest f16: plus
  ``2^-11·(1+2^-9)·|ref| + 2^-25`` (half an f16 ulp, subnormals included).
  Gradient rows of a probability cross-entropy with a ``p/S`` within
  ``4·(2 + log2 C)·u`` (relative) of a clip bound are not compared (the clip's gradient jumps there; f32 and
  f64 may fall on different sides): they are counted as skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "torch_sweep.py needs PyTorch: python3 -m venv /tmp/torchvenv && "
        "/tmp/torchvenv/bin/pip install torch numpy\n"
    )
    sys.exit(2)

REPO = Path(__file__).resolve().parent.parent
U32 = 2.0**-24  # unit roundoff of f32
LOSS_REL = 1e-5
CE_FLOOR = 1e-13
FAMILY_FLOOR = 1e-12
CE_GRAD_REL = 2e-6
CE_GRAD_FLOOR = 4e-16
FAMILY_GRAD_REL = 1e-6
CANCEL_ULPS = 8.0
TRANSFORM_ULPS = 4.0
F16_REL = 2.0**-11 * (1 + 2.0**-9)
F16_ABS = 2.0**-25
KERAS_LO = float(np.float32(1e-7))
KERAS_HI = float(np.float32(1.0) - np.float32(1e-7))
CLIP_ULPS = 4.0


def f32(v: float) -> float:
    """The f32 value the CLI parses from the decimal text of `v`."""
    return float(np.float32(v))


def fmt(v: float) -> str:
    return repr(float(v))


# --------------------------------------------------------------------------------------
# drawing cases
# --------------------------------------------------------------------------------------


class Case:
    """One drawn case: files, CLI arguments, and what is expected."""

    def __init__(self, seed, index):
        self.seed, self.index = seed, index
        self.family = None
        self.files = {}  # name -> np.ndarray, saved as <name>.npy
        self.args = []  # CLI arguments without --backend / outputs (paths by file name)
        self.desc = []
        self.reject = None  # None, or ("torch", message) / ("documented", reason)
        self.fault = None  # the bad value injected, if any
        self.grad_dtype = np.float32
        self.reduced = True
        # filled by the reference
        self.loss = self.loss_tol = None
        self.z = self.z_tol = None
        self.units = self.units_tol = None
        self.grad = self.grad_tol = None
        self.grad_skip = None

    @property
    def name(self):
        return f"s{self.seed}-c{self.index}"


def pick(rng, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def draw_rows(rng):
    r = rng.random()
    if r < 0.55:
        return int(rng.integers(1, 17))
    if r < 0.9:
        return int(rng.integers(1, 81))
    return int(rng.integers(1, 301))


def draw_classes(rng):
    r = rng.random()
    if r < 0.12:
        return pick(rng, [1, 2, 3])
    if r < 0.6:
        return int(rng.integers(1, 65))
    if r < 0.88:
        return int(rng.integers(1, 700))
    return int(rng.integers(700, 3001))


def draw_shape(rng, nd_ok):
    n, c = draw_rows(rng), draw_classes(rng)
    spatial = []
    if nd_ok and rng.random() < 0.2:
        spatial = [int(rng.integers(1, 6)) for _ in range(int(rng.integers(1, 3)))]
        n = int(rng.integers(1, 9))
    while n * c * int(np.prod(spatial or [1])) > 400_000:
        n = max(1, n // 2)
        if n == 1:
            c = max(1, c // 2)
    return n, c, spatial


def draw_logit_values(rng, shape):
    scale = pick(rng, [1e-3, 0.1, 1.0, 2.0, 5.0, 30.0, 1e3], p=[0.07, 0.1, 0.3, 0.2, 0.13, 0.1, 0.1])
    offset = pick(rng, [0.0, 1e4, -1e4, 40.0], p=[0.78, 0.08, 0.07, 0.07])
    x = rng.standard_normal(shape) * scale + offset
    return x, scale, offset


def to_layout(rows_form, n, spatial):
    """(R, C) with R = N·d1·… rows to PyTorch's (N, C, d1, …)."""
    c = rows_form.shape[1]
    if not spatial:
        return np.ascontiguousarray(rows_form)
    return np.ascontiguousarray(np.moveaxis(rows_form.reshape([n, *spatial, c]), -1, 1))


def to_rows(layout):
    """PyTorch's (N, C, d1, …) to (R, C)."""
    if layout.ndim == 2:
        return layout
    return np.moveaxis(layout, 1, -1).reshape(-1, layout.shape[1])


def rows_to_units(values, n, spatial):
    """(R,) per-row values to (N, d1, …)."""
    return values.reshape([n, *spatial]) if spatial else values


def softmax_rows(rng, r, c, temp, zero_frac):
    z = rng.standard_normal((r, c)) * temp
    p = np.exp(z - z.max(axis=1, keepdims=True))
    if zero_frac:
        keep = np.zeros((r, c), dtype=bool)
        keep[np.arange(r), p.argmax(axis=1)] = True
        p = np.where((rng.random((r, c)) < zero_frac) & ~keep, 0.0, p)
    return p / p.sum(axis=1, keepdims=True)


def maybe_fault(rng, rate=0.1):
    return rng.random() < rate


def weight_fault(rng, fault, weight, c):
    """The class weights with the weight fault `fault` injected (a negative or NaN
    entry, or one entry too many), drawing weights first if there are none; else
    `weight` as it is."""
    if fault not in ("negative_weight", "nan_weight", "weight_length"):
        return weight
    weight = rng.uniform(0.2, 2.0, c) if weight is None else weight
    if fault == "negative_weight":
        weight[int(rng.integers(0, c))] = -0.5
    elif fault == "nan_weight":
        weight[int(rng.integers(0, c))] = np.nan
    else:
        weight = np.concatenate([weight, [1.0]])
    return weight


def draw_ce(case: Case, rng):
    soft = rng.random() < 0.3
    case.family = "ce_soft" if soft else "ce_class"
    n, c, spatial = draw_shape(rng, nd_ok=True)
    r = n * int(np.prod(spatial or [1]))
    logits_dtype = pick(rng, [np.float32, np.float16, np.float64], p=[0.7, 0.15, 0.15])
    reduction = pick(rng, ["mean", "sum", "none"])
    x, scale, offset = draw_logit_values(rng, (r, c))
    if logits_dtype == np.float16:
        x = np.clip(x, -6e4, 6e4)
    fault = None
    if maybe_fault(rng):
        fault = pick(rng, ["target_out_of_range", "negative_target", "smoothing_range", "negative_weight",
                           "nan_weight", "weight_length", "negative_z", "softcap_zero", "softcap_negative",
                           "scale_zero", "targets_shape", "batchmean", "probs_with_options"])
        if soft and fault in ("target_out_of_range", "negative_target"):
            fault = "targets_shape"
    # options
    ignore = None  # None: the flag is not given (-100)
    ign_hit = 0.0
    if not soft:
        mode = pick(rng, ["default", "explicit", "class", "minus1", "large"], p=[0.45, 0.1, 0.2, 0.15, 0.1])
        ignore = {"default": None, "explicit": -100, "class": int(rng.integers(0, c)), "minus1": -1,
                  "large": 1000}[mode]
        ign_hit = pick(rng, [0.0, 0.2, 0.5, 1.0], p=[0.35, 0.4, 0.15, 0.1])
    elif rng.random() < 0.1:
        ignore = pick(rng, [-100, 0, -1])  # PyTorch ignores ignore_index with probabilities
    weight = None
    wmode = pick(rng, ["none", "uniform", "zeros", "big", "all_zero"], p=[0.5, 0.25, 0.12, 0.1, 0.03])
    if wmode != "none":
        weight = rng.uniform(0.2, 2.0, c)
        if wmode == "zeros":
            weight[rng.random(c) < 0.3] = 0.0
        elif wmode == "big":
            weight = rng.uniform(0.0, 10.0, c)
        elif wmode == "all_zero":
            weight[:] = 0.0
    smoothing = pick(rng, [0.0, 1e-3, 0.05, 0.1, 0.3, 1.0], p=[0.5, 0.08, 0.12, 0.12, 0.1, 0.08])
    z = pick(rng, [0.0, 1e-4, 1e-3, 1e-2, 0.5], p=[0.6, 0.12, 0.12, 0.1, 0.06])
    softcap = pick(rng, [None, 0.5, 5.0, 15.0, 30.0, 100.0], p=[0.65, 0.05, 0.1, 0.07, 0.08, 0.05])
    logit_scale = pick(rng, [1.0, 0.5, 2.0, 0.1, -1.0, 3.7, 1e-3], p=[0.7, 0.06, 0.06, 0.05, 0.05, 0.05, 0.03])

    # targets
    if soft:
        kind = pick(rng, ["softmax", "zeros", "onehot", "unnormalized"], p=[0.35, 0.3, 0.15, 0.2])
        if kind == "softmax":
            t = softmax_rows(rng, r, c, 1.5, 0.0)
        elif kind == "zeros":
            t = softmax_rows(rng, r, c, 1.5, 0.4)
        elif kind == "onehot":
            t = np.zeros((r, c))
            t[np.arange(r), rng.integers(0, c, r)] = 1.0
        else:
            t = rng.random((r, c))
        tdtype = pick(rng, [np.float32, np.float64], p=[0.8, 0.2])
        targets_rows = t.astype(tdtype)
        target_class = targets_rows.argmax(axis=1)
    else:
        tgt = rng.integers(0, c, r).astype(np.int64)
        ignore_value = -100 if ignore is None else ignore
        hit = rng.random(r) < ign_hit
        if ign_hit == 1.0:
            hit[:] = True
        tgt[hit] = ignore_value
        target_class = np.where(hit, -1, tgt)
        if fault == "target_out_of_range":
            tgt[int(rng.integers(0, r))] = c if ignore_value != c else c + 1
        elif fault == "negative_target":
            tgt[int(rng.integers(0, r))] = -2
        lo, hi = int(tgt.min()), int(tgt.max())
        candidates = [np.int64, np.int32]
        if lo >= 0:
            candidates += [np.uint32, np.uint16]
            if hi < 256:
                candidates.append(np.uint8)
        if -32768 <= lo and hi < 32768:
            candidates.append(np.int16)
        if -128 <= lo and hi < 128:
            candidates.append(np.int8)
        tdtype = candidates[0] if rng.random() < 0.5 else pick(rng, candidates)
        targets_rows = tgt.astype(tdtype)
    # special logits
    specials = []
    if rng.random() < 0.15:  # -inf on non-target classes
        mask = rng.random((r, c)) < 0.25
        mask[np.arange(r)[target_class >= 0], target_class[target_class >= 0]] = False
        x[mask] = -np.inf
        specials.append("-inf")
    if rng.random() < 0.1:  # confident rows
        rows = np.arange(r)[target_class >= 0]
        x[rows, target_class[rows]] += 30.0 * max(scale, 1.0)
        specials.append("confident")
    if not soft and rng.random() < 0.05:  # -inf at a target
        rows = np.arange(r)[target_class >= 0]
        if rows.size:
            row = int(rng.choice(rows))
            x[row, target_class[row]] = -np.inf
            specials.append("-inf-target")
    if rng.random() < 0.05:  # a NaN or +inf row (not ignored)
        rows = np.arange(r)[target_class >= 0] if not soft else np.arange(r)
        if rows.size:
            row = int(rng.choice(rows))
            x[row, int(rng.integers(0, c))] = pick(rng, [np.nan, np.inf])
            specials.append("nan/inf-row")
    if not soft and rng.random() < 0.3:  # garbage in ignored rows (a deliberate difference)
        rows = np.arange(r)[target_class < 0]
        for row in rows:
            x[row, rng.random(c) < 0.5] = pick(rng, [np.nan, np.inf, -np.inf])
        if rows.size:
            specials.append("garbage-ignored")
    logits = to_layout(x, n, spatial).astype(logits_dtype)
    if soft:
        targets = to_layout(targets_rows, n, spatial)
    else:
        targets = rows_to_units(targets_rows, n, spatial)
    if fault == "targets_shape":
        targets = targets[:-1] if targets.shape[0] > 1 else np.concatenate([targets, targets])
    if fault == "smoothing_range":
        smoothing = pick(rng, [1.5, -0.1])
    weight = weight_fault(rng, fault, weight, c)
    if fault == "negative_z":
        z = -1e-3
    if fault == "softcap_zero":
        softcap = 0.0
    if fault == "softcap_negative":
        softcap = -5.0
    if fault == "scale_zero":
        logit_scale = 0.0
    if fault == "batchmean":
        reduction = "batchmean"

    case.files["logits"] = logits
    case.files["targets"] = targets
    args = ["loss", "--logits", "logits.npy", "--targets", "targets.npy", "--reduction", reduction]
    if ignore is not None:
        args += ["--ignore-index", str(ignore)]
    if weight is not None:
        case.files["weight"] = weight.astype(pick(rng, [np.float32, np.float64], p=[0.8, 0.2]))
        args += ["--weight", "weight.npy"]
    if smoothing:
        args += ["--label-smoothing", fmt(smoothing)]
    if z:
        args += ["--z-loss", fmt(z)]
    if softcap is not None:
        args += ["--softcap", fmt(softcap)]
    if logit_scale != 1.0:
        args += ["--logit-scale", fmt(logit_scale)]
    if fault == "probs_with_options":
        args += ["--input", "probs"]
        if not (ignore is not None or weight is not None or smoothing or z or softcap is not None
                or logit_scale != 1.0):
            args += ["--label-smoothing", "0.1"]
            smoothing = 0.1
    case.args = args
    case.fault = fault
    case.reduced = reduction != "none"
    case.grad_dtype = np.float16 if logits_dtype == np.float16 else np.float32
    case.desc = [f"{'soft' if soft else 'class'} {list(logits.shape)} {np.dtype(logits_dtype).name}"
                 f" targets {np.dtype(targets.dtype).name}", reduction]
    if not soft:
        case.desc.append(f"ignore={ignore} hit={ign_hit}")
    case.desc += [f"weight={wmode}", f"ls={smoothing}", f"z={z}", f"softcap={softcap}", f"scale={logit_scale}",
                  f"x~{scale}+{offset}"] + specials
    case.opts = dict(soft=soft, n=n, c=c, spatial=spatial, reduction=reduction, ignore=ignore, weight=weight,
                     smoothing=smoothing, z=z, softcap=softcap, logit_scale=logit_scale)
    # documented rejections (README "Options", "CLI")
    doc = {
        # PyTorch raises above 1 but takes a negative smoothing as none
        "smoothing_range": "README Options: label smoothing outside [0, 1] is Error::InvalidOption",
        "negative_weight": "README Options: a weight with a negative entry is Error::InvalidOption",
        "nan_weight": "README Options: a weight with a non-finite entry is Error::InvalidOption",
        "negative_z": "README Options: a negative z-loss is Error::InvalidOption",
        "softcap_zero": "README Options: a non-positive softcap is Error::InvalidOption",
        "softcap_negative": "README Options: a non-positive softcap is Error::InvalidOption",
        "scale_zero": "README Options: a zero logit scale is Error::InvalidOption",
        "probs_with_options": "README CLI: --input probs takes no ignore-index (help: nor weight, smoothing, "
                              "z-loss, softcap, logit-scale)",
    }.get(fault)
    if fault == "probs_with_options" and spatial:
        doc = "README CLI: --input probs takes (N, C) probabilities"
    if doc:
        case.reject = ("documented", doc)


def draw_ce_probs(case: Case, rng):
    case.family = "ce_probs"
    n, c, _ = draw_shape(rng, nd_ok=False)
    reduction = pick(rng, ["mean", "sum", "none"])
    kind = pick(rng, ["softmax", "zeros", "confident", "scaled", "tiny"], p=[0.3, 0.25, 0.15, 0.2, 0.1])
    if kind == "softmax":
        p = softmax_rows(rng, n, c, 1.5, 0.0)
    elif kind == "zeros":
        p = softmax_rows(rng, n, c, 1.5, 0.4)
    elif kind == "confident":
        p = softmax_rows(rng, n, c, 8.0, 0.0)
    elif kind == "scaled":
        p = softmax_rows(rng, n, c, 1.0, 0.0) * rng.uniform(0.1, 5.0, (n, 1))
    else:
        p = softmax_rows(rng, n, c, 1.0, 0.0) * 1e-30
    specials = []
    if rng.random() < 0.05:
        p[int(rng.integers(0, n))] = 0.0
        specials.append("zero-row")
    if rng.random() < 0.04:
        p[int(rng.integers(0, n)), int(rng.integers(0, c))] = pick(rng, [np.nan, np.inf])
        specials.append("nan/inf")
    soft = rng.random() < 0.4
    fault = None
    if maybe_fault(rng):
        fault = pick(rng, ["target_out_of_range", "ignore_index", "smoothing", "nd", "f16"])
    if soft:
        t = softmax_rows(rng, n, c, 1.5, 0.3).astype(np.float32)
    else:
        t = rng.integers(0, c, n).astype(np.int64)
        if fault == "target_out_of_range":
            t[int(rng.integers(0, n))] = pick(rng, [c, -100])
    dtype = np.float16 if fault == "f16" else pick(rng, [np.float32, np.float64], p=[0.8, 0.2])
    probs = p.astype(dtype)
    if fault == "nd":
        probs = np.ascontiguousarray(np.stack([probs, probs], axis=-1))
        t = np.ascontiguousarray(np.stack([t, t], axis=-1))
    case.files["logits"] = probs
    case.files["targets"] = t
    args = ["loss", "--input", "probs", "--logits", "logits.npy", "--targets", "targets.npy", "--reduction",
            reduction]
    if fault == "ignore_index":
        args += ["--ignore-index", "-100"]
    if fault == "smoothing":
        args += ["--label-smoothing", "0.1"]
    case.args = args
    case.fault = fault
    case.reduced = reduction != "none"
    case.desc = [f"probs {list(probs.shape)} {np.dtype(dtype).name} {kind}",
                 f"{'soft' if soft else 'class ' + np.dtype(t.dtype).name} targets", reduction] + specials
    case.opts = dict(soft=soft, n=n, c=c, reduction=reduction)
    doc = {
        "ignore_index": "README CLI: --input probs ignores no row, so --ignore-index is refused",
        "smoothing": "xent loss --help / README: --input probs (Keras) takes no logit options",
        "nd": "xent loss --input probs takes (N, C) probabilities (CLI error message; README: rows)",
        "f16": "--input probs takes float32/float64 (README: ProbabilityCrossEntropyLoss, Keras; no PyTorch twin)",
    }.get(fault)
    if doc:
        case.reject = ("documented", doc)
    if fault == "target_out_of_range" and not soft:
        case.reject = ("torch", "class index outside [0, C) (Keras and PyTorch's nll raise)")


def draw_bce(case: Case, rng):
    probs = rng.random() < 0.4
    case.family = "bce_probs" if probs else "bce_logits"
    n, c, _ = draw_shape(rng, nd_ok=False)
    reduction = pick(rng, ["mean", "sum", "none"])
    fault = None
    if maybe_fault(rng):
        fault = pick(rng, ["smoothing_range", "negative_weight", "nan_weight", "weight_length",
                           "pos_weight_shape1", "targets_shape"] + (["prob_range", "prob_nan", "pos_weight_probs"]
                                                                    if probs else ["negative_pos_weight"]))
    specials = []
    if probs:
        kind = pick(rng, ["uniform", "edges", "exact"], p=[0.5, 0.3, 0.2])
        x = rng.uniform(0.0, 1.0, (n, c))
        if kind != "uniform":
            edges = np.array([1e-7, 1 - 1e-7, 1e-30, 1e-3, 0.999, 1e-12, 1 - 1e-6, 0.5]
                             + ([0.0, 1.0] if kind == "exact" else []))
            mask = rng.random((n, c)) < 0.4
            x[mask] = rng.choice(edges, mask.sum())
        if fault == "prob_range":
            x[int(rng.integers(0, n)), int(rng.integers(0, c))] = pick(rng, [1.5, -0.1])
        if fault == "prob_nan":
            x[int(rng.integers(0, n)), int(rng.integers(0, c))] = np.nan
        desc_x = kind
    else:
        x, scale, offset = draw_logit_values(rng, (n, c))
        if rng.random() < 0.05:
            x[int(rng.integers(0, n)), int(rng.integers(0, c))] = pick(rng, [np.nan, np.inf, -np.inf])
            specials.append("non-finite")
        desc_x = f"x~{scale}+{offset}"
    tkind = pick(rng, ["binary", "soft", "edges"], p=[0.5, 0.35, 0.15])
    if tkind == "binary":
        y = (rng.random((n, c)) < 0.4).astype(np.float64)
    elif tkind == "soft":
        y = rng.random((n, c))
    else:
        y = rng.choice(np.array([0.0, 1.0, 1e-7, 1 - 1e-7, 0.5]), (n, c))
    smoothing = pick(rng, [0.0, 0.1, 0.3, 1.0], p=[0.6, 0.2, 0.1, 0.1])
    wmode = pick(rng, ["none", "uniform", "zeros", "big"], p=[0.5, 0.25, 0.15, 0.1])
    weight = None
    if wmode != "none":
        weight = rng.uniform(0.2, 2.0, c)
        if wmode == "zeros":
            weight[rng.random(c) < 0.3] = 0.0
        elif wmode == "big":
            weight = rng.uniform(0.0, 10.0, c)
    pmode = "none"
    pos_weight = None
    if not probs:
        pmode = pick(rng, ["none", "scalar", "per_class", "zeros"], p=[0.45, 0.2, 0.25, 0.1])
        if pmode == "scalar":
            pos_weight = np.full(c, pick(rng, [0.5, 2.5, 10.0]))
        elif pmode == "per_class":
            pos_weight = rng.uniform(0.1, 5.0, c)
        elif pmode == "zeros":
            pos_weight = rng.uniform(0.1, 5.0, c)
            pos_weight[rng.random(c) < 0.4] = 0.0
    if fault == "smoothing_range":
        smoothing = pick(rng, [1.5, -0.1])
    weight = weight_fault(rng, fault, weight, c)
    if fault == "pos_weight_shape1":
        pos_weight = np.array([2.0]) if c != 1 else np.array([2.0, 2.0])
    if fault == "pos_weight_probs":
        pos_weight = np.full(c, 2.0)
    if fault == "negative_pos_weight":
        pos_weight = rng.uniform(0.1, 5.0, c)
        pos_weight[int(rng.integers(0, c))] = -1.0
    case.files["input"] = x.astype(pick(rng, [np.float32, np.float64], p=[0.85, 0.15]))
    yfile = y.astype(np.float32)
    if fault == "targets_shape":
        yfile = yfile[:, :-1] if c > 1 else np.concatenate([yfile, yfile], axis=1)
    case.files["targets"] = yfile
    args = ["bce", "--input", "input.npy", "--targets", "targets.npy", "--reduction", reduction]
    if probs:
        args.append("--probs")
    if weight is not None:
        case.files["weight"] = weight.astype(np.float32)
        args += ["--weight", "weight.npy"]
    if pos_weight is not None:
        case.files["pos_weight"] = pos_weight.astype(np.float32)
        args += ["--pos-weight", "pos_weight.npy"]
    if smoothing:
        args += ["--label-smoothing", fmt(smoothing)]
    case.args = args
    case.fault = fault
    case.reduced = reduction != "none"
    case.desc = [f"{'probs' if probs else 'logits'} [{n}, {c}] {desc_x}", f"y={tkind}", reduction,
                 f"weight={wmode}", f"pos_weight={pmode}", f"ls={smoothing}"] + specials
    case.opts = dict(probs=probs, n=n, c=c, reduction=reduction, weight=weight, pos_weight=pos_weight,
                     smoothing=smoothing)
    doc = {
        "negative_weight": "README family: weight with a negative entry (CE Options: Error::InvalidOption)",
        "nan_weight": "README family: a non-finite weight is Error::InvalidOption",
        "pos_weight_shape1": "README family: weight and pos_weight are (C,) vectors",
        "pos_weight_probs": "README CLI / bce --help: --pos-weight applies to logits only",
        "smoothing_range": "bce --help: label smoothing in [0, 1]",
    }.get(fault)
    if doc:
        case.reject = ("documented", doc)


def draw_kl(case: Case, rng):
    case.family = "kl"
    n, c, _ = draw_shape(rng, nd_ok=False)
    reduction = pick(rng, ["mean", "sum", "none", "batchmean"])
    log_target = rng.random() < 0.4
    fault = "target_shape" if maybe_fault(rng, 0.05) else None
    specials = []
    xkind = pick(rng, ["log_softmax", "unnormalized"], p=[0.7, 0.3])
    z, scale, offset = draw_logit_values(rng, (n, c))
    if xkind == "log_softmax":
        zz = np.where(np.isfinite(z), z, 0.0)
        x = zz - (zz.max(1, keepdims=True) + np.log(np.exp(zz - zz.max(1, keepdims=True)).sum(1, keepdims=True)))
    else:
        x = z
    if rng.random() < 0.1:
        x[rng.random((n, c)) < 0.2] = -np.inf
        specials.append("-inf input")
    if log_target:
        t = np.log(softmax_rows(rng, n, c, 1.5, 0.0))
        if rng.random() < 0.2:
            t = rng.standard_normal((n, c))  # unnormalized log-target
            specials.append("unnormalized t")
        if rng.random() < 0.1:
            t[rng.random((n, c)) < 0.2] = -np.inf
            specials.append("-inf t")
    else:
        t = softmax_rows(rng, n, c, 1.5, pick(rng, [0.0, 0.3]))
        if rng.random() < 0.1:
            t = rng.random((n, c)) * 2.0  # unnormalized
            specials.append("unnormalized t")
    case.files["input"] = x.astype(pick(rng, [np.float32, np.float64], p=[0.85, 0.15]))
    tfile = t.astype(np.float32)
    if fault:
        tfile = tfile[:, :-1] if c > 1 else np.concatenate([tfile, tfile], axis=1)
    case.files["target"] = tfile
    args = ["kl", "--input", "input.npy", "--target", "target.npy", "--reduction", reduction]
    if log_target:
        args.append("--log-target")
    case.args = args
    case.fault = fault
    case.reduced = reduction != "none"
    case.desc = [f"kl [{n}, {c}] {xkind} x~{scale}+{offset}", f"log_target={log_target}", reduction] + specials
    case.opts = dict(n=n, c=c, reduction=reduction, log_target=log_target)
    if fault and (c == 1 or tfile.shape[1] == 1):
        # PyTorch broadcasts a one-column side; xent takes equal (N, C) shapes only
        case.reject = ("documented", "kl --help: the target has shape (N, C), the input's")


def draw_case(seed, index):
    rng = np.random.default_rng([seed, index])
    case = Case(seed, index)
    family = pick(rng, ["ce", "ce_probs", "bce", "kl"], p=[0.55, 0.1, 0.22, 0.13])
    {"ce": draw_ce, "ce_probs": draw_ce_probs, "bce": draw_bce, "kl": draw_kl}[family](case, rng)
    return case


# --------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------


def widened(a: np.ndarray) -> np.ndarray:
    """The float64 values the CLI computes with: f16 exact, f64 rounded to f32 first."""
    if a.dtype == np.float64:
        return a.astype(np.float32).astype(np.float64)
    return a.astype(np.float64)


def t64(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def finite_max_abs(a, axis):
    return np.where(np.isfinite(a), np.abs(a), 0.0).max(axis=axis)


def reference_ce(case: Case):
    o = case.opts
    if case.reject:
        return
    x_np = widened(case.files["logits"])
    soft = o["soft"]
    red = o["reduction"]
    tfile = case.files["targets"]
    w_np = widened(case.files["weight"]) if "weight" in case.files else None
    ii = -100 if o["ignore"] is None else o["ignore"]
    ls, z, s = f32(o["smoothing"]), f32(o["z"]), f32(o["logit_scale"])
    t_cap = None if o["softcap"] is None else f32(o["softcap"])
    x = t64(x_np).requires_grad_(True)
    xp = x * s
    if t_cap is not None:
        xp = t_cap * torch.tanh(xp / t_cap)
    xp.retain_grad()
    if soft:
        tgt = t64(widened(tfile))
    else:
        tgt = t64(tfile.astype(np.int64))
    w = None if w_np is None else t64(w_np)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ce_red = F.cross_entropy(xp, tgt, weight=w, ignore_index=ii, reduction=red, label_smoothing=ls)
            ce_none = F.cross_entropy(xp, tgt, weight=w, ignore_index=ii, reduction="none", label_smoothing=ls)
    except (RuntimeError, ValueError, IndexError) as error:
        case.reject = ("torch", str(error).splitlines()[0][:120])
        return
    n_rows = int(np.prod(ce_none.shape))
    valid = torch.ones_like(ce_none, dtype=torch.bool) if soft else tgt != ii
    if z:
        lse = torch.logsumexp(xp, dim=1)
        # xent: a row whose max x' is not finite is NaN throughout, its z-term too
        # (torch.logsumexp would make z·lse² +inf there; the CE part is NaN anyway)
        finite_max = torch.isfinite(xp.detach().amax(dim=1))
        zterm = torch.where(finite_max, z * lse**2, torch.full_like(lse, float("nan")))
        zrows = torch.where(valid, zterm, torch.zeros_like(lse))
        if red == "mean":
            if soft:
                divisor = float(n_rows)
            elif w is not None:
                divisor = float(w[tgt[valid]].sum()) if bool(valid.any()) else 0.0
            else:
                divisor = float(valid.sum())
            # README: a mean over a zero divisor is NaN (the z-loss too)
            zred = zrows.sum() / divisor if divisor else zrows.sum() * float("nan")
        else:
            zred = zrows.sum() if red == "sum" else zrows
    else:
        zrows = torch.zeros_like(ce_none)
        zred = None
    rows = ce_none + zrows
    total = ce_red + (zred if zred is not None else 0.0)
    total_scalar = total.sum() if red == "none" else total
    gx, h = torch.autograd.grad(total_scalar, [x, xp], retain_graph=True)
    _, h_rows = torch.autograd.grad(rows.sum(), [x, xp], retain_graph=True)
    gx, h, h_rows = gx.numpy(), h.numpy(), h_rows.numpy()
    rows_np = rows.detach().numpy()
    xp_np = xp.detach().numpy()

    # the row layout (R, C) of everything
    xr, hr, hrr, gr = to_rows(xp_np), to_rows(h), to_rows(h_rows), to_rows(gx)
    valid_r = valid.numpy().reshape(-1)
    transformed = s != 1.0 or t_cap is not None
    with np.errstate(all="ignore"):
        if transformed:
            delta = TRANSFORM_ULPS * U32 * (finite_max_abs(xr, 1) + (t_cap or 0.0))
            if t_cap is not None:
                jac = s * (1.0 - np.tanh(s * to_rows(x_np) / t_cap) ** 2)
            else:
                jac = np.full_like(xr, s)
            loss_cond_rows = delta * np.where(np.isfinite(hrr), np.abs(hrr), 0.0).sum(1)
            hsum = np.where(np.isfinite(hr), np.abs(hr), 0.0).sum(1, keepdims=True)
            grad_cond = 2 * delta[:, None] * np.abs(jac) * (np.abs(hr) + hsum)
            if t_cap is not None:
                grad_cond += TRANSFORM_ULPS * U32 * abs(s) * np.abs(hr)
            z_cond_rows = delta * 2 * z * np.abs(torch.logsumexp(xp, dim=1).detach().numpy().reshape(-1))
        else:
            loss_cond_rows = np.zeros(n_rows)
            grad_cond = np.zeros_like(xr)
            z_cond_rows = np.zeros(n_rows)
        loss_cond_rows = np.where(np.isfinite(loss_cond_rows), loss_cond_rows, 0.0)
        z_cond_rows = np.where(np.isfinite(z_cond_rows), z_cond_rows, 0.0)
        grad_cond = np.where(np.isfinite(grad_cond), grad_cond, 0.0)

    rows_flat = rows_np.reshape(-1)
    finite_rows = np.where(np.isfinite(rows_flat), np.abs(rows_flat), 0.0)
    case.units = rows_np
    case.units_tol = (LOSS_REL * finite_rows + CE_FLOOR + loss_cond_rows).reshape(rows_np.shape)
    factor = 1.0
    if red == "mean":
        if soft:
            factor = 1.0 / n_rows
        else:
            d = float(w[tgt[valid]].sum()) if (w is not None and bool(valid.any())) else float(valid.sum())
            factor = 1.0 / d if d else 0.0
    if red != "none":
        case.loss = float(total.detach())
        case.loss_tol = LOSS_REL * (abs(case.loss) if math.isfinite(case.loss) else 0.0) + CE_FLOOR + factor * (
            LOSS_REL * finite_rows.sum() + loss_cond_rows.sum())
        if zred is not None:
            case.z = float(zred.detach())
            zr = zrows.detach().numpy().reshape(-1)
            case.z_tol = CE_FLOOR + factor * (LOSS_REL * np.where(np.isfinite(zr), np.abs(zr), 0).sum()
                                              + z_cond_rows.sum())
    # gradient: the deliberate difference (ignored rows exactly 0)
    # (A + 2z·lse)·p_c − T_c is formed in f32 (A = Σ_c T_c, the row's target mass):
    # p_c's rounding (exp within a few ulps, a division) carries 4u·|A + 2z·lse|·p_c, as
    # PyTorch's own f32 softmax − target does.
    # A class target's p_y near 1 is exempt: xent forms a confident row's p_y − 1 exactly.
    with np.errstate(all="ignore"):
        c = o["c"]
        w_all = w_np if w_np is not None else np.ones(c)
        if soft:
            t_rows = to_rows(widened(tfile))
            if ls:
                t_rows = t_rows * (1 - ls) + ls / c
            mass = np.abs((w_all[None, :] * t_rows).sum(1))
        else:
            y = to_rows(tfile.astype(np.int64)[:, None] if tfile.ndim == 1
                        else np.expand_dims(tfile.astype(np.int64), 1)).reshape(-1)
            y_safe = np.where(valid_r, y, 0)
            mass = (1 - ls) * w_all[y_safe] + ls / c * w_all.sum()
        lse_r = torch.logsumexp(xp, dim=1).detach().numpy().reshape(-1)
        p_r = np.exp(xr - lse_r[:, None])
        jac_r = (s * (1.0 - np.tanh(s * to_rows(x_np) / t_cap) ** 2)) if t_cap is not None else s
        # plus the f32 sums over the row behind the common factor (A + 2z·lse)/S:
        # S = Σ exp and A = Σ a_c, a rounding per level of a tree over C
        sum_ulps = 4 + math.log2(max(c, 2))
        term = sum_ulps * U32 * np.abs(mass + 2 * z * lse_r)[:, None] * p_r * np.abs(jac_r)
        # PyTorch's own float64: p = exp(x' − lse) is off by 2^-53·(|lse| + |x'|) relative, which
        # shows in p_y − 1 of a confident row (pytorch_parity's 4e-16 floor, scaled by lse)
        ref64 = 4 * 2.0**-53 * (np.abs(lse_r)[:, None] + np.abs(xr)) * np.abs(mass + 2 * z * lse_r)[:, None]
        if not soft:
            exempt = np.zeros_like(term, dtype=bool)
            exempt[np.arange(len(y_safe)), y_safe] = True
            # the confident path still rounds its other mass ε/C·Σw + 2z·lse
            other = sum_ulps * U32 * np.abs(ls / c * w_all.sum() + 2 * z * lse_r)[:, None] * p_r * np.abs(jac_r)
            term = np.where(exempt & (p_r > 0.5), other, term)
        term = term + ref64 * p_r * np.abs(jac_r)
        grad_cond = grad_cond + np.where(np.isfinite(term), term, 0.0) * factor
    gr = gr.copy()
    gr[~valid_r] = 0.0
    grad_cond[~valid_r] = 0.0
    largest = float(np.where(np.isfinite(gr), np.abs(gr), 0.0).max()) if gr.size else 0.0
    tol = CE_GRAD_REL * largest + CE_GRAD_FLOOR + grad_cond
    if case.grad_dtype == np.float16:
        tol = tol + F16_REL * np.abs(gr) + F16_ABS
    n, spatial = o["n"], o["spatial"]
    case.grad = to_layout(gr, n, spatial)
    case.grad_tol = to_layout(tol, n, spatial)


def reference_ce_probs(case: Case):
    if case.reject:
        return
    o = case.opts
    p_np = widened(case.files["logits"])
    tfile = case.files["targets"]
    n, c, red = o["n"], o["c"], o["reduction"]
    if o["soft"]:
        t_np = widened(tfile)
    else:
        t_np = np.zeros((n, c))
        t_np[np.arange(n), tfile.astype(np.int64)] = 1.0
    p = t64(p_np).requires_grad_(True)
    s = p.sum(1, keepdim=True)
    q = p / s
    qc = torch.clamp(q, KERAS_LO, KERAS_HI)
    t = t64(t_np)
    terms = torch.where(t != 0, t * torch.log(qc), torch.zeros_like(qc))
    rows = -terms.sum(1)
    factor = 1.0 / n if red == "mean" else 1.0
    total = rows.sum() * factor
    (g,) = torch.autograd.grad(total, [p])
    g = g.numpy().copy()
    rows_np = rows.detach().numpy().copy()
    with np.errstate(all="ignore"):
        q_np = p_np / p_np.sum(1, keepdims=True)
        nan_rows = np.isnan(q_np).any(1)
        rows_np[nan_rows] = np.nan
        g[nan_rows] = np.nan
        m = (q_np >= KERAS_LO) & (q_np <= KERAS_HI)
        S = p_np.sum(1, keepdims=True)
        T = (np.where(m, t_np, 0.0)).sum(1, keepdims=True)
        scale = factor * (np.abs(T) / S + np.where(m & (t_np != 0), np.abs(t_np) / p_np, 0.0))
        scale = np.where(np.isfinite(scale), scale, 0.0)
        near = CLIP_ULPS * (2 + math.log2(max(c, 2))) * U32
        ambiguous = (np.abs(q_np / KERAS_LO - 1) < near) | (np.abs(q_np / KERAS_HI - 1) < near)
        # a row with one nonzero probability (every row of C = 1) has q exactly 0 and 1
        # in any precision: its clip is not ambiguous (the band above is wider than 1 − HI)
        ambiguous &= ((p_np != 0).sum(1, keepdims=True) != 1)
    cancel = np.abs(t_np).sum(1) * (2 + math.log2(max(c, 2)))
    finite_rows = np.where(np.isfinite(rows_np), np.abs(rows_np), 0.0)
    case.units = rows_np
    case.units_tol = LOSS_REL * finite_rows + CANCEL_ULPS * U32 * cancel + FAMILY_FLOOR
    if red != "none":
        case.loss = float("nan") if nan_rows.any() else float(total.detach())
        case.loss_tol = (LOSS_REL * abs(case.loss) if math.isfinite(case.loss) else 0.0) + FAMILY_FLOOR + factor * (
            LOSS_REL * finite_rows.sum() + CANCEL_ULPS * U32 * cancel.sum())
    case.grad = g
    case.grad_tol = FAMILY_GRAD_REL * np.maximum(np.abs(np.where(np.isfinite(g), g, 0.0)), scale)
    # a clip bound within rounding: the whole row's gradient is ambiguous (T changes)
    case.grad_skip = np.repeat(ambiguous.any(1, keepdims=True), c, axis=1)


def reference_bce(case: Case):
    if case.reject:
        return
    o = case.opts
    x_np = widened(case.files["input"])
    y_np = widened(case.files["targets"])
    n, c, red, probs = o["n"], o["c"], o["reduction"], o["probs"]
    eps = f32(o["smoothing"])
    w_np = widened(case.files["weight"]) if "weight" in case.files else None
    pw_np = widened(case.files["pos_weight"]) if "pos_weight" in case.files else None
    x = t64(x_np).requires_grad_(True)
    y = t64(y_np)
    yy = y * (1.0 - eps) + eps / 2.0 if eps else y
    w = None if w_np is None else t64(w_np)
    pw = None if pw_np is None else t64(pw_np)
    try:
        if probs:
            el = F.binary_cross_entropy(x, yy, weight=w, reduction="none")
            out = F.binary_cross_entropy(x, yy, weight=w, reduction=red)
        else:
            el = F.binary_cross_entropy_with_logits(x, yy, weight=w, pos_weight=pw, reduction="none")
            out = F.binary_cross_entropy_with_logits(x, yy, weight=w, pos_weight=pw, reduction=red)
    except (RuntimeError, ValueError) as error:
        case.reject = ("torch", str(error).splitlines()[0][:120])
        return
    total = out.sum() if red == "none" else out
    (g,) = torch.autograd.grad(total, [x])
    g = g.numpy()
    el_np = el.detach().numpy()
    yy_np = yy.numpy()
    wa = np.abs(w_np)[None, :] if w_np is not None else np.ones((1, c))
    pwa = np.abs(pw_np)[None, :] if pw_np is not None else np.ones((1, c))
    # README "Deliberate differences": a logit of −inf with a target above 0 is +inf
    # (the limit, w·pw·y·(+inf)); PyTorch's formula gives NaN there.
    limit = np.zeros(el_np.shape, dtype=bool)
    if not probs:
        limit = np.isneginf(x_np) & (yy_np > 0) & (wa > 0) & (pwa > 0) & np.isnan(el_np)
        el_np = np.where(limit, np.inf, el_np)
    factor = 1.0 / (n * c) if red == "mean" else 1.0
    with np.errstate(all="ignore"):
        if probs:
            cancel = wa * (np.abs(yy_np) + np.abs(1 - yy_np))
            scale = factor * wa * (np.abs(x_np) + np.abs(yy_np)) / np.maximum(x_np * (1 - x_np), 1e-12)
        else:
            inside = (yy_np != 0) & (yy_np != 1)
            cancel = np.where(inside, wa * (1 + pwa) * (np.abs(x_np) + 1), 0.0)
            scale = factor * wa * (1 + np.abs(yy_np) + pwa * np.abs(yy_np))
        cancel = np.where(np.isfinite(cancel), cancel, 0.0)
        scale = np.where(np.isfinite(scale), scale, 0.0)
    finite_el = np.where(np.isfinite(el_np), np.abs(el_np), 0.0)
    case.units = el_np
    case.units_tol = LOSS_REL * finite_el + CANCEL_ULPS * U32 * cancel + FAMILY_FLOOR
    if red != "none":
        case.loss = float(el_np.sum() * factor) if limit.any() else float(out.detach())
        case.loss_tol = (LOSS_REL * abs(case.loss) if math.isfinite(case.loss) else 0.0) + FAMILY_FLOOR + factor * (
            LOSS_REL * finite_el.sum() + CANCEL_ULPS * U32 * cancel.sum())
    case.grad = g
    case.grad_tol = FAMILY_GRAD_REL * np.maximum(np.where(np.isfinite(g), np.abs(g), 0.0), scale)


def reference_kl(case: Case):
    if case.reject:
        return
    o = case.opts
    x_np = widened(case.files["input"])
    t_np = widened(case.files["target"])
    n, c, red, log_target = o["n"], o["c"], o["reduction"], o["log_target"]
    x = t64(x_np).requires_grad_(True)
    t = t64(t_np)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            el = F.kl_div(x, t, reduction="none", log_target=log_target)
            out = F.kl_div(x, t, reduction=red, log_target=log_target)
    except (RuntimeError, ValueError) as error:
        case.reject = ("torch", str(error).splitlines()[0][:120])
        return
    total = out.sum() if red == "none" else out
    (g,) = torch.autograd.grad(total, [x])
    g = g.numpy()
    el_np = el.detach().numpy()
    factor = {"mean": 1.0 / (n * c), "batchmean": 1.0 / n}.get(red, 1.0)
    with np.errstate(all="ignore"):
        if log_target:
            cancel = np.exp(t_np) * (np.abs(t_np) + np.abs(x_np))
            scale = factor * np.exp(t_np)
        else:
            xlogy = np.where(t_np > 0, t_np * np.log(np.where(t_np > 0, t_np, 1.0)), 0.0)
            cancel = np.abs(xlogy) + np.abs(t_np * x_np)
            scale = factor * np.abs(t_np)
        cancel = np.where(np.isfinite(cancel), cancel, 0.0)
        scale = np.maximum(np.where(np.isfinite(scale), scale, 0.0), factor)
    finite_el = np.where(np.isfinite(el_np), np.abs(el_np), 0.0)
    case.units = el_np
    case.units_tol = LOSS_REL * finite_el + CANCEL_ULPS * U32 * cancel + FAMILY_FLOOR
    if red != "none":
        case.loss = float(out.detach())
        case.loss_tol = (LOSS_REL * abs(case.loss) if math.isfinite(case.loss) else 0.0) + FAMILY_FLOOR + factor * (
            LOSS_REL * finite_el.sum() + CANCEL_ULPS * U32 * cancel.sum())
    case.grad = g
    case.grad_tol = FAMILY_GRAD_REL * np.maximum(np.where(np.isfinite(g), np.abs(g), 0.0), scale)


def reference(case: Case):
    torch.set_num_threads(1)
    {"ce_class": reference_ce, "ce_soft": reference_ce, "ce_probs": reference_ce_probs,
     "bce_logits": reference_bce, "bce_probs": reference_bce, "kl": reference_kl}[case.family](case)


# --------------------------------------------------------------------------------------
# running and comparing
# --------------------------------------------------------------------------------------


def json_number(value):
    if value is None:
        return None
    if isinstance(value, str):
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[value]
    return float(value)


def compare_array(label, actual, expected, tol, skip=None, limit=3):
    """Problems (strings) of `actual` against `expected` within `tol`."""
    problems = []
    if actual.shape != expected.shape:
        return [f"{label}: shape {list(actual.shape)} vs {list(expected.shape)}"]
    a = actual.astype(np.float64).reshape(-1)
    e = expected.astype(np.float64).reshape(-1)
    t = np.broadcast_to(tol, expected.shape).reshape(-1)
    with np.errstate(all="ignore"):
        nan_e, nan_a = np.isnan(e), np.isnan(a)
        inf_e = np.isinf(e)
        bad = nan_e != nan_a
        bad |= inf_e & ~(a == e)
        finite = ~nan_e & ~inf_e
        bad |= finite & ~(np.abs(a - e) <= t)
    if skip is not None:
        bad &= ~skip.reshape(-1)
    for i in np.flatnonzero(bad)[:limit]:
        idx = np.unravel_index(i, expected.shape)
        problems.append(f"{label}{list(map(int, idx))} = {a[i]:.9g} vs ref {e[i]:.9g} (tol {t[i]:.3g})")
    if bad.sum() > limit:
        problems.append(f"{label}: {int(bad.sum())} entries off in all")
    return problems


def compare_scalar(label, actual, expected, tol):
    if actual is None:
        return [f"{label}: missing (ref {expected:.9g})"]
    if math.isnan(expected):
        return [] if math.isnan(actual) else [f"{label} = {actual:.9g} vs ref NaN"]
    if math.isinf(expected):
        return [] if actual == expected else [f"{label} = {actual:.9g} vs ref {expected}"]
    if not abs(actual - expected) <= tol:
        return [f"{label} = {actual:.9g} vs ref {expected:.9g} (error {abs(actual - expected):.3g}, tol {tol:.3g})"]
    return []


def run_cli(xent, case, directory, backend, timeout):
    grad, losses = directory / f"grad_{backend}.npy", directory / f"losses_{backend}.npy"
    for path in (grad, losses):
        path.unlink(missing_ok=True)
    argv = [str(xent), *case.args, "--backend", backend, "--grad-out", grad.name, "--losses-out", losses.name]
    env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    try:
        proc = subprocess.run(argv, cwd=directory, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, "timed out", grad, losses
    return proc, None, grad, losses


def check_backend(case, proc, error, grad_path, losses_path):
    """(outcome, problems): outcome is 'pass', 'rejected' or 'mismatch'."""
    if error:
        return "mismatch", [error]
    stderr_lines = [line for line in proc.stderr.splitlines() if "XDG_RUNTIME_DIR" not in line]
    if proc.returncode != 0:
        has_error = any(line.startswith("error: ") for line in stderr_lines)
        written = [p.name for p in (grad_path, losses_path) if p.exists()]
        if case.reject and proc.returncode == 2 and has_error and not written:
            return "rejected", [stderr_lines[0][:160] if stderr_lines else ""]
        why = f"exit {proc.returncode}: {' | '.join(stderr_lines)[:300]}"
        if written:
            why += f"; wrote {written} although it failed"
        if not case.reject:
            why = "unexpected rejection: " + why
        return "mismatch", [why]
    if case.reject:
        return "mismatch", [f"accepted (exit 0) what should be rejected: {case.reject[0]}: {case.reject[1]}"]
    problems = []
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as decode_error:
        return "mismatch", [f"stdout is not JSON: {decode_error}: {proc.stdout[:200]}"]
    loss = json_number(report.get("loss"))
    if case.reduced:
        problems += compare_scalar("loss", loss, case.loss, case.loss_tol)
    elif loss is not None:
        problems.append(f"reduction none reports loss {loss}")
    if case.z is not None:
        problems += compare_scalar("z_loss", json_number(report.get("z_loss")), case.z, case.z_tol)
    grad = np.load(grad_path)
    if grad.dtype != case.grad_dtype:
        problems.append(f"gradient dtype {grad.dtype}, expected {np.dtype(case.grad_dtype).name}")
    problems += compare_array("grad", grad, case.grad, case.grad_tol, case.grad_skip)
    units = np.load(losses_path)
    problems += compare_array("losses", units, case.units, case.units_tol)
    return ("mismatch" if problems else "pass"), problems


def repro(case, backend, keep):
    cmd = f"{Path(sys.argv[0]).name} --seed {case.seed} --case {case.index} --backends {backend}"
    return f"{cmd} --keep {keep}  # xent {' '.join(shlex.quote(a) for a in case.args)} --backend {backend}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, nargs="+", default=[1])
    ap.add_argument("--cases", type=int, default=300, help="cases per seed")
    ap.add_argument("--case", type=int, help="run only this case index (of each seed)")
    ap.add_argument("--backends", default="cpu,gpu")
    ap.add_argument("--xent", type=Path, default=REPO / "target" / "release" / "xent")
    ap.add_argument("--keep", type=Path, help="keep every case's files under this folder")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if not args.xent.exists():
        sys.exit(f"no xent binary at {args.xent}: cargo build --release first")
    backends = [b for b in args.backends.split(",") if b]
    root = args.keep or Path(tempfile.mkdtemp(prefix="xent-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    counts = {"cases": 0, "runs": 0, "pass": 0, "mismatch": 0, "rejected": 0}
    by_family, rejections, mismatches = {}, {}, []
    skipped_grad = 0
    for seed in args.seed:
        indices = [args.case] if args.case is not None else range(args.cases)
        for index in indices:
            case = draw_case(seed, index)
            reference(case)
            directory = root / case.name
            directory.mkdir(parents=True, exist_ok=True)
            for name, array in case.files.items():
                np.save(directory / f"{name}.npy", array)
            counts["cases"] += 1
            fam = by_family.setdefault(case.family, {"cases": 0, "pass": 0, "mismatch": 0, "rejected": 0})
            fam["cases"] += 1
            if case.grad_skip is not None:
                skipped_grad += int(case.grad_skip.sum())
            for backend in backends:
                proc, error, grad_path, losses_path = run_cli(args.xent, case, directory, backend, args.timeout)
                outcome, problems = check_backend(case, proc, error, grad_path, losses_path)
                counts["runs"] += 1
                counts[outcome] += 1
                fam[outcome] += 1
                if outcome == "rejected":
                    key = (case.family, case.fault or "-", case.reject[0], case.reject[1])
                    rejections.setdefault(key, [0, problems[0]])[0] += 1
                elif outcome == "mismatch":
                    mismatches.append((case, backend, problems))
                    print(f"MISMATCH {case.name} {backend}: {'; '.join(case.desc)}\n    "
                          + "\n    ".join(problems) + f"\n    repro: {repro(case, backend, root)}", flush=True)
                elif args.verbose:
                    print(f"ok {case.name} {backend}: {'; '.join(case.desc)}", flush=True)
            if args.keep is None:
                shutil.rmtree(directory, ignore_errors=True)
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.time() - started
    print()
    print(f"torch {torch.__version__}, numpy {np.__version__}, xent {args.xent}, backends {','.join(backends)}, "
          f"seeds {' '.join(map(str, args.seed))}, {elapsed:.0f} s")
    for family, f in sorted(by_family.items()):
        print(f"  {family:11s} {f['cases']:5d} cases: {f['pass']:5d} passed, {f['mismatch']:3d} mismatched, "
              f"{f['rejected']:4d} rejected (runs)")
    print("rejections (family, injected fault, why expected, count, xent's message):")
    for (family, fault, kind, why), (count, message) in sorted(rejections.items()):
        print(f"  {family} {fault}: {kind}: {why} x{count}\n      {message}")
    print(f"gradient entries not compared (clip bound within rounding): {skipped_grad}")
    print(f"SUMMARY: {counts['cases']} cases, {counts['runs']} runs: {counts['pass']} passed, "
          f"{counts['mismatch']} mismatched, {counts['rejected']} rejected")
    for case, backend, problems in mismatches:
        print(f"  mismatch: {repro(case, backend, root)}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
