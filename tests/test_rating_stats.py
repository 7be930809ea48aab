"""Rating statistics (server/stats.py) against hand-computed and textbook values."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize

from precise_edit.server import stats

NAN = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section E: 4 observers, 12 units.
TEXTBOOK = [[1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
            [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN]]


def test_krippendorff_textbook_values():
    assert stats.krippendorff_alpha(TEXTBOOK, "interval") == pytest.approx(0.849, abs=5e-4)
    assert stats.krippendorff_alpha(TEXTBOOK, "ordinal") == pytest.approx(0.815, abs=5e-4)
    perfect = [[1, 2, 3, 4], [1, 2, 3, 4]]
    assert stats.krippendorff_alpha(perfect, "ordinal") == pytest.approx(1.0)


def test_krippendorff_matches_the_reference_package():
    kd = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 6, size=30)
    d = np.clip(truth[None, :] + rng.integers(-1, 2, size=(3, 30)), 1, 5).astype(float)
    d[rng.random(d.shape) < 0.2] = NAN
    for level in ("interval", "ordinal"):
        assert stats.krippendorff_alpha(d, level) == pytest.approx(
            kd.alpha(reliability_data=d, level_of_measurement=level), abs=1e-9)


def test_mean_ci_by_hand():
    m, lo, hi = stats.mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)    # t(0.975, 4) * s / sqrt(n)
    assert (m, lo, hi) == pytest.approx((3.0, 3.0 - half, 3.0 + half))
    assert math.isnan(stats.mean_ci([4])[1])


def _rows(answers):
    """answers: list of (rater, item, {method: (instruction, preserve)}, chosen method or None)."""
    rows, edit_ids = [], {}
    for a, (rater, item, scores, chosen) in enumerate(answers):
        for method, (ins, pre) in scores.items():
            eid = edit_ids.setdefault((item, method), len(edit_ids))
            rows.append({"answer": a, "rater": rater, "item": item, "edit": eid, "method": method,
                         "instruction": ins, "preserve": pre,
                         "choice": "tie" if chosen is None else ("better" if chosen == method else "worse")})
    return rows


def test_win_matrix_and_rates_by_hand():
    rows = _rows([("r1", 1, {"a": (5, 5), "b": (3, 3), "c": (1, 2)}, "a"),
                  ("r1", 2, {"a": (4, 4), "b": (4, 4), "c": (2, 2)}, None),
                  ("r2", 1, {"a": (4, 5), "b": (5, 3), "c": (1, 1)}, "b")])
    methods, W = stats.comparisons(rows)
    assert methods == ["a", "b", "c"]
    # item 1 by r2 chose b: a and c both lost to b, and say nothing about a against c
    np.testing.assert_allclose(W, [[0, 1.5, 1.5], [1.5, 0, 1.5], [0.5, 0.5, 0]])
    s = {m["method"]: m for m in stats.summarize(rows)["methods"]}
    assert s["a"]["win_rate"] == pytest.approx(3 / 5) and s["c"]["win_rate"] == pytest.approx(1 / 4)
    assert s["a"]["instruction_mean"] == pytest.approx(13 / 3) and s["c"]["preserve_mean"] == pytest.approx(5 / 3)
    assert s["c"]["bt_rank"] == 3


def test_bradley_terry_is_the_maximum_likelihood_fit():
    W = np.array([[0, 7, 9, 4], [3, 0, 6, 5], [1, 4, 0, 2], [6, 5, 8, 0]], float)
    p = stats.bradley_terry(W)
    Wp = W + 0.1 * ((W + W.T) > 0)

    def nll(theta):
        d = theta[:, None] - theta[None, :]
        return -(Wp * (d - np.logaddexp(0, d))).sum()   # log p_i/(p_i+p_j) = d - log(1+e^d)

    best = optimize.minimize(nll, np.zeros(4), method="BFGS").x
    best -= best.mean()
    np.testing.assert_allclose(np.log(p), best, atol=1e-4)
    assert np.exp(np.log(p).mean()) == pytest.approx(1.0)


def test_bradley_terry_recovers_a_known_order():
    rng = np.random.default_rng(1)
    true = np.array([4.0, 2.0, 1.0, 0.5])
    W = np.zeros((4, 4))
    for _ in range(3000):
        i, j = rng.choice(4, 2, replace=False)
        W[i, j] += rng.random() < true[i] / (true[i] + true[j])
        W[j, i] += 0
    p = stats.bradley_terry(W)
    assert list(np.argsort(-p)) == [0, 1, 2, 3]
    np.testing.assert_allclose(p / p[-1], true / true[-1], rtol=0.25)


def test_agreement_uses_only_units_rated_twice():
    rows = _rows([("r1", 1, {"a": (5, 5), "b": (1, 2)}, "a"), ("r2", 1, {"a": (5, 4), "b": (1, 2)}, "a"),
                  ("r1", 2, {"a": (3, 3), "b": (2, 2)}, None)])
    ag = stats.agreement(rows, "instruction")
    assert ag["units"] == 2 and ag["raters"] == 2 and ag["alpha"] == pytest.approx(1.0)
