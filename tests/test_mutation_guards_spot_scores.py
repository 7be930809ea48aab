"""SpotEdit kernels (kernels/spot.py) one level below the model tests: token scores on latents
whose size is not a multiple of the patch, video (T > 1) decoder features, the authors'
schedule at few steps and their thresholds (issue 14: these mutants survived the fast tests)."""
import math

import pytest
import torch

from precise_edit.kernels import spot as S


def test_scores_pool_over_replicated_edges_for_any_patch():
    m = torch.arange(30.0).view(1, 5, 6)  # 5 x 6 latent, patch 4: padded to 8 x 8 by replication
    got = S.pool_to_tokens(m, 4)
    padded = torch.nn.functional.pad(m[:, None], (0, 2, 0, 3), mode="replicate")[:, 0]
    assert got.shape == (1, 2, 2)
    assert torch.allclose(got[0, 1, 1], padded[0, 4:, 4:].mean())
    m = torch.arange(30.0).view(1, 6, 5)  # the width: 5 -> 8
    got = S.pool_to_tokens(m, 4)
    padded = torch.nn.functional.pad(m[:, None], (0, 3, 0, 2), mode="replicate")[:, 0]
    assert got.shape == (1, 2, 2) and torch.allclose(got[0, 0, 1], padded[0, :4, 4:].mean())
    m = torch.arange(12.0).view(1, 3, 4)  # only the height needs padding
    got = S.pool_to_tokens(m, 2)
    assert got.shape == (1, 2, 2) and got[0, 1].tolist() == [8.5, 10.5]


def test_cosine_scores_on_padded_and_small_latents():
    a = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[..., 4, 5] += 3.0  # the last (padded) token differs
    s = S.scores_cosine(a, b, 4)
    assert s.shape == (1, 2, 2)
    assert s[0, 1, 1] > 0.01 and s[0, :, 0].abs().max() < 1e-6 and s[0, 0, 1].abs() < 1e-6
    t = S.scores_cosine(a.transpose(-1, -2), b.transpose(-1, -2), 4)  # 6 x 5: the width padded by 3
    assert t.shape == (1, 2, 2) and t[0, 1, 1] > 0.01 and t[0, 0].abs().max() < 1e-6
    s = S.scores_cosine(a[..., :3, :4], b[..., :3, :4], 2)  # height padded only
    assert s.shape == (1, 2, 2)
    # identical tokens score 0 whatever their magnitude (no large epsilon in the cosine)
    small = 1e-3 * a
    assert S.scores_cosine(small, small.clone(), 2).abs().max() < 1e-5


def test_perceptual_scores_average_video_frames():
    g = torch.Generator().manual_seed(1)
    fa = torch.randn(1, 3, 2, 4, 4, generator=g)
    fb = fa.clone()
    fb[:, :, 1] = torch.randn(1, 3, 4, 4, generator=g)  # only the second frame differs
    both = S.scores_from_features([fa], [fb], (8, 8), 2)
    second = S.scores_from_features([fa[:, :, 1]], [fb[:, :, 1]], (8, 8), 2)
    assert both.shape == (1, 4, 4)
    assert torch.allclose(both, second / 2, atol=1e-6)
    # a batch of two videos stays two items
    two = S.scores_from_features([torch.cat([fa, fb])], [torch.cat([fb, fb])], (8, 8), 2)
    assert two.shape == (2, 4, 4) and torch.allclose(two[0], both[0], atol=1e-6) and two[1].abs().max() == 0


def test_fusion_blends_cache_and_reference():
    c, r = torch.full((2,), 4.0), torch.full((2,), 2.0)
    assert S.fuse(c, r, 0.25).tolist() == [2.5, 2.5]
    assert S.fuse(c, r, 0.0).tolist() == [2.0, 2.0]


def test_authors_fusion_weight_is_one_minus_sin_squared_of_a_thousandth():
    for s in (1.0, 0.5):
        assert 1 - S.authors_fusion_weight(s) == pytest.approx(math.sin(math.pi * s / 2000) ** 2, rel=1e-4)
    assert S.authors_fusion_weight(0.0) == 1.0


def test_authors_schedule_at_few_steps():
    assert S.authors_full_steps(50) == (4, frozenset({13, 22, 31}))
    assert S.authors_full_steps(10) == (1, frozenset({3, 4, 6}))
    assert S.authors_full_steps(3) == (1, frozenset({1, 2}))  # a reset on the first selective step
    assert S.authors_full_steps(1) == (1, frozenset())  # no reset at or past the end


def test_authors_thresholds_are_strict():
    s = torch.tensor([0.4, 0.5, 0.6])
    assert S.authors_reuse(s, 0.5, "L4").tolist() == [True, False, False]
    assert S.authors_reuse(s, 0.5, "cosine").tolist() == [False, False, True]
