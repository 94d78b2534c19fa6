#!/usr/bin/env python3
"""Check tests/fixtures/pytorch against independent numpy (float64) formulas.

Needs only numpy (no torch):  python3 scripts/check_fixtures.py [--dir tests/fixtures/pytorch]

For every case in manifest.json it recomputes the loss from the stored float32 inputs
and the manifest options with plain numpy, and checks a few gradient entries by
central finite differences of that numpy loss. It is a cross-check of the fixture
generator (and documents the semantics in a second, independent form).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def lse(x, axis=1):
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def xlogy(x, y):
    out = np.zeros(np.broadcast(x, y).shape)
    nz = np.broadcast_to(x != 0, out.shape)
    xb, yb = np.broadcast_to(x, out.shape), np.broadcast_to(y, out.shape)
    out[nz] = xb[nz] * np.log(yb[nz])
    return out


def reduce(v, red, denom=None):
    if red == "none":
        return v
    if red == "sum":
        return v.sum()
    return v.sum() / (v.size if denom is None else denom)


def cross_entropy(x, case, t, w):
    c = x.shape[1]
    if case["softcap"] is not None:
        s = case["softcap"]
        x = s * np.tanh(x / s)
    # move class dim last and flatten rows
    xr = np.moveaxis(x, 1, -1).reshape(-1, c)
    l = lse(xr)
    logq = xr - l[:, None]
    eps = case["label_smoothing"]
    wv = np.ones(c) if w is None else w
    out_shape = (x.shape[0],) + x.shape[2:]
    if case["soft_targets"]:
        p = np.moveaxis(t, 1, -1).reshape(-1, c)
        p = p * (1 - eps) + eps / c
        per = -(p * wv * logq).sum(axis=1)
        return reduce(per, case["reduction"]).reshape(out_shape) if case["reduction"] == "none" \
            else reduce(per, case["reduction"])
    tr = t.reshape(-1)
    valid = tr != case["ignore_index"]
    ts = np.where(valid, tr, 0)
    nll = -logq[np.arange(len(ts)), ts] * wv[ts] * valid
    smooth = -(logq * wv).sum(axis=1) * valid
    per = (1 - eps) * nll + eps / c * smooth
    z = case["z_loss_scale"] * l ** 2 * valid
    per = per + z
    if case["reduction"] == "none":
        return per.reshape(out_shape)
    if case["reduction"] == "sum":
        return per.sum()
    denom = (wv[ts] * valid).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return per.sum() / denom


def bce_target(case, y):
    eps = case["label_smoothing"]
    return y * (1 - eps) + eps / 2 if eps else y


def bce_with_logits(x, case, y, w, pw):
    y = bce_target(case, y)
    pwv = 1.0 if pw is None else pw
    # log sigmoid(x) = -softplus(-x), log(1 - sigmoid(x)) = -softplus(x)
    sp_neg = np.logaddexp(0, -x)
    sp_pos = np.logaddexp(0, x)
    v = pwv * y * sp_neg + (1 - y) * sp_pos
    if w is not None:
        v = v * w
    return reduce(v, case["reduction"])


def bce_probs(p, case, y, w):
    y = bce_target(case, y)
    with np.errstate(divide="ignore"):
        lp = np.maximum(np.log(p), -100)
        l1p = np.maximum(np.log1p(-p), -100)
    v = -(y * lp + (1 - y) * l1p)
    if w is not None:
        v = v * w
    return reduce(v, case["reduction"])


def kl_div(x, case, t):
    if case["log_target"]:
        v = np.exp(t) * (t - x)
    else:
        v = xlogy(t, t) - t * x
    red = case["reduction"]
    if red == "batchmean":
        return v.sum() / x.shape[0]
    return reduce(v, red)


def entropy(x, case):
    if case["input_kind"] == "logits":
        p = np.exp(x - lse(x)[:, None])
    else:
        p = x
    h = -xlogy(p, p).sum(axis=1)
    return reduce(h, case["reduction"])


def loss_fn(case, d):
    t = np.load(d / "targets.npy") if "targets" in case["files"] else None
    if t is not None and t.dtype == np.float32:
        t = t.astype(np.float64)
    w = np.load(d / "weight.npy").astype(np.float64) if case["has_weight"] else None
    pw = np.load(d / "pos_weight.npy").astype(np.float64) if case["has_pos_weight"] else None
    fam = case["family"]
    if fam == "cross_entropy":
        return lambda x: cross_entropy(x, case, t, w)
    if fam == "bce_with_logits":
        return lambda x: bce_with_logits(x, case, t, w, pw)
    if fam == "bce_probs":
        return lambda x: bce_probs(x, case, t, w)
    if fam == "kl_div":
        return lambda x: kl_div(x, case, t)
    if fam == "entropy":
        return lambda x: entropy(x, case)
    raise ValueError(fam)


def close(a, b, rtol, atol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | np.isclose(a, b, rtol=rtol, atol=atol)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=REPO / "tests" / "fixtures" / "pytorch")
    ap.add_argument("--fd-points", type=int, default=6)
    args = ap.parse_args()
    man = json.loads((args.dir / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    bad = 0
    for case in man["cases"]:
        d = args.dir / case["name"]
        x = np.load(d / "logits.npy")
        assert x.dtype == np.float32
        x = x.astype(np.float64)
        f = loss_fn(case, d)
        ref = np.load(d / "loss.npy")
        got = f(x)
        errs = []
        if not close(got, ref, 1e-10, 1e-12):
            errs.append(f"loss mismatch: numpy {np.ravel(got)[:4]} vs fixture {np.ravel(ref)[:4]}")
        if case["has_grad"] and not case["expect_nan"]:
            g = np.load(d / "grad.npy")
            total = lambda xx: float(np.sum(f(xx)))
            for _ in range(args.fd_points):
                idx = tuple(int(rng.integers(0, s)) for s in x.shape)
                # step: relative to |x|, bounded for inputs that are probabilities
                h = 1e-6 * max(1.0, abs(x[idx]))
                if case["input_kind"] == "probs":
                    h = min(h, 0.25 * x[idx], 0.25 * (1 - x[idx])) if 0 < x[idx] < 1 else h
                xp, xm = x.copy(), x.copy()
                xp[idx] += h
                xm[idx] -= h
                fd = (total(xp) - total(xm)) / (2 * h)
                scale = max(1.0, abs(total(x)))
                if not np.isclose(fd, g[idx], rtol=1e-5, atol=1e-8 * scale):
                    errs.append(f"grad{idx}: fd {fd:.10g} vs fixture {g[idx]:.10g}")
        for name in ("entropy", "kl"):
            if name in case["files"]:
                e = np.load(d / case["files"]["entropy"])
                k = np.load(d / case["files"]["kl"])
                if not close(e + k, ref, 1e-12, 1e-12):
                    errs.append("identity H(P,Q) = H(P) + KL(P||Q) does not hold")
                break
        if "z_term" in case["files"]:
            z = np.load(d / case["files"]["z_term"])
            case0 = dict(case, z_loss_scale=0.0)
            t = np.load(d / "targets.npy")
            no_z = cross_entropy(x, case0, t, None)
            if not close(no_z + z, ref, 1e-10, 1e-12):
                errs.append("loss != CE(softcapped) + z_term")
        if errs:
            bad += 1
            more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
            print(f"FAIL {case['name']}: " + "; ".join(errs[:3]) + more)
    n = len(man["cases"])
    print(f"fixtures: {n - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
