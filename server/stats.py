"""Aggregates of a rating study (numpy): per-method means with 95% confidence intervals, win rates,
a Bradley-Terry ranking (Hunter's MM iteration, ties counted as half a win each way) and inter-rater
agreement (Krippendorff's alpha, ordinal and interval).

Input: the rows of :meth:`server.store.RatingStore.answer_rows` (one per answer and edit).
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy import stats as _st


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of its Student-t confidence interval (nan ends for fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size < 2:
        return (m, math.nan, math.nan)
    half = float(_st.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return (m, m - half, m + half)


def comparisons(rows: list[dict]) -> tuple[list[str], np.ndarray]:
    """Methods and the win matrix ``W[i, j]``: how often ``i`` was chosen over ``j`` on the same item
    (a tie adds 0.5 to both ``W[i, j]`` and ``W[j, i]``)."""
    methods = sorted({r["method"] for r in rows})
    idx = {m: k for k, m in enumerate(methods)}
    W = np.zeros((len(methods), len(methods)))
    per_answer = defaultdict(list)
    for r in rows:
        per_answer[r["answer"]].append(r)
    for group in per_answer.values():
        for a in group:
            for b in group:
                if a is b:   # an item never shows a method twice (the store refuses such studies)
                    continue
                i, j = idx[a["method"]], idx[b["method"]]
                if a["choice"] == "better":
                    W[i, j] += 1.0
                elif a["choice"] == "tie":
                    W[i, j] += 0.5
    return methods, W


def bradley_terry(W: np.ndarray, iters: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry strengths ``p`` (geometric mean 1) maximising
    ``sum_ij W[i,j] log(p_i / (p_i + p_j))`` with Hunter's (2004) MM update
    ``p_i <- w_i / sum_j n_ij / (p_i + p_j)``. A method that never wins gets strength 0; one that
    never loses would grow without bound, so every pair that met gets a prior of 0.1 wins each way."""
    k = W.shape[0]
    if k == 0:
        return np.zeros(0)
    N = W + W.T
    W = W + 0.1 * (N > 0)
    N = W + W.T
    wins = W.sum(axis=1)
    p = np.ones(k)
    for _ in range(iters):
        denom = (N / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, wins / np.where(denom > 0, denom, 1.0), 0.0)
        pos = new > 0
        if pos.any():
            new[pos] /= math.exp(np.log(new[pos]).mean())
        if np.abs(new - p).max() < tol:
            p = new
            break
        p = new
    return p


def krippendorff_alpha(data, level: str = "ordinal") -> float:
    """Krippendorff's alpha of a raters x units matrix (``nan`` = not rated), values on an ordered
    scale; ``level`` is ``"interval"`` or ``"ordinal"`` (Krippendorff 2011, "Computing Krippendorff's
    Alpha-Reliability": coincidence matrix over pairable values, ordinal metric from the marginals)."""
    d = np.asarray(data, dtype=float)
    values = np.unique(d[~np.isnan(d)])
    if values.size < 2:
        return math.nan
    vidx = {v: k for k, v in enumerate(values)}
    o = np.zeros((values.size, values.size))
    for u in range(d.shape[1]):
        col = d[:, u][~np.isnan(d[:, u])]
        m = col.size
        if m < 2:
            continue
        counts = np.zeros(values.size)
        for v in col:
            counts[vidx[v]] += 1
        o += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n <= 1:
        return math.nan
    if level == "interval":
        delta2 = (values[:, None] - values[None, :]) ** 2
    elif level == "ordinal":
        cum = np.cumsum(n_c)
        lo = np.minimum.outer(np.arange(values.size), np.arange(values.size))
        hi = np.maximum.outer(np.arange(values.size), np.arange(values.size))
        between = cum[hi] - np.where(lo > 0, cum[lo - 1], 0.0)      # sum of n_g for g from c to k
        delta2 = (between - (n_c[:, None] + n_c[None, :]) / 2) ** 2
    else:
        raise ValueError(f"level: 'interval' or 'ordinal', not {level!r}")
    d_o = (o * delta2).sum()
    d_e = (np.outer(n_c, n_c) * delta2).sum()
    if d_e == 0:
        return math.nan
    return float(1.0 - (n - 1) * d_o / d_e)


def agreement(rows: list[dict], question: str, level: str = "ordinal") -> dict:
    """Alpha of one question over units (item, edit) rated by two or more raters."""
    raters = sorted({r["rater"] for r in rows})
    units = sorted({(r["item"], r["edit"]) for r in rows})
    ri, ui = {r: k for k, r in enumerate(raters)}, {u: k for k, u in enumerate(units)}
    d = np.full((len(raters), len(units)), np.nan)
    for r in rows:
        d[ri[r["rater"]], ui[(r["item"], r["edit"])]] = r[question]
    shared = int((np.sum(~np.isnan(d), axis=0) >= 2).sum()) if len(units) else 0
    alpha = krippendorff_alpha(d, level) if shared and len(raters) >= 2 else math.nan
    return {"alpha": alpha, "level": level, "units": shared, "raters": len(raters)}


def summarize(rows: list[dict]) -> dict:
    """Everything the results view and the summary export show."""
    methods, W = comparisons(rows)
    strength = bradley_terry(W)
    order = sorted(range(len(methods)), key=lambda k: -strength[k])
    rank = {methods[k]: pos + 1 for pos, k in enumerate(order)}
    per = []
    for k, m in enumerate(methods):
        mine = [r for r in rows if r["method"] == m]
        ins, pre = mean_ci([r["instruction"] for r in mine]), mean_ci([r["preserve"] for r in mine])
        games = W[k].sum() + W[:, k].sum()
        per.append({"method": m, "ratings": len(mine),
                    "instruction_mean": ins[0], "instruction_ci_low": ins[1], "instruction_ci_high": ins[2],
                    "preserve_mean": pre[0], "preserve_ci_low": pre[1], "preserve_ci_high": pre[2],
                    "comparisons": float(games), "win_rate": float(W[k].sum() / games) if games else math.nan,
                    "bt_strength": float(strength[k]), "bt_rank": rank[m]})
    per.sort(key=lambda p: p["bt_rank"])
    return {"methods": per, "answers": len({r["answer"] for r in rows}), "raters": len({r["rater"] for r in rows}),
            "pairwise": {"methods": methods, "wins": W.tolist()},
            "agreement": {q: agreement(rows, q) for q in ("instruction", "preserve")}}


def clean(obj):
    """NaN -> None, for JSON."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    return obj
