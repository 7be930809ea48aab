"""SpotEdit kernels: scores, selection, fusion schedule, step plan."""
import math

import pytest
import torch

from precise_edit.kernels import spot


def test_identical_latents_score_zero_and_changes_score_locally():
    y = torch.randn(1, 16, 8, 12)
    x = y.clone()
    x[:, :, 2:4, 6:8] += 3.0  # one 2x2 token changes
    for fn in (spot.scores_l4, spot.scores_cosine):
        s0 = fn(y, y, 2)
        assert s0.shape == (1, 4, 6) and s0.abs().max() < 1e-6
        s = fn(x, y, 2)
        assert s[0, 1, 3] > 0.1 and (s[0].flatten().topk(2).values[1] < 1e-6)


def test_five_d_latents_are_accepted():
    y = torch.randn(1, 16, 1, 6, 6)
    assert spot.scores_l4(y, y, 2).shape == (1, 3, 3)
    with pytest.raises(ValueError, match="single-frame"):
        spot.scores_l4(torch.randn(1, 16, 2, 6, 6), torch.randn(1, 16, 2, 6, 6), 2)


def test_feature_scores_are_zero_for_identical_features():
    fa = [torch.randn(1, 8, 8, 12), torch.randn(1, 4, 16, 24)]
    s = spot.scores_from_features(fa, [f.clone() for f in fa], (8, 12), 2)
    assert s.shape == (1, 4, 6) and s.abs().max() == 0
    fb = [f.clone() for f in fa]
    fb[1][:, :, :4, :4] = -fb[1][:, :, :4, :4]
    s = spot.scores_from_features(fa, fb, (8, 12), 2)
    assert s[0, 0, 0] > 0.5 and s[0, 2:, 2:].max() == 0


def test_select_active_modes_and_never_all_settled():
    scores = torch.zeros(1, 3, 3)
    scores[0, 1, 1] = 0.5
    act, tau = spot.select_active(scores, 0.2)
    assert act.sum() == 1 and act[0, 1, 1]
    act, _ = spot.select_active(scores, 0.2, dilation=1)
    assert act.all()
    user = torch.zeros(1, 3, 3, dtype=torch.bool)
    user[0, 0, 0] = True
    assert spot.select_active(scores, 0.2, user_mask=user, mode="replace")[0].sum() == 1
    assert spot.select_active(scores, 0.2, user_mask=user, mode="union")[0].sum() == 2
    # intersect with no overlap would settle everything: tau is halved, then the top token stays active
    act, _ = spot.select_active(scores, 0.2, user_mask=user, mode="intersect")
    assert act.sum() >= 1
    low = torch.full((1, 2, 2), 0.01)
    low[0, 0, 1] = 0.05
    act, tau = spot.select_active(low, 0.2)
    assert act.any() and tau < 0.05
    assert spot.select_active(torch.zeros(1, 2, 2), 0.2)[0].sum() == 1
    assert spot.select_active(torch.zeros(1, 2, 2), -1.0)[0].all()


def test_fusion_weight_is_the_papers_cos_squared():
    assert spot.fusion_weight(1.0) == pytest.approx(0.0, abs=1e-12)
    assert spot.fusion_weight(0.0) == 1.0
    assert spot.fusion_weight(0.5) == pytest.approx(math.cos(math.pi / 4) ** 2)
    assert spot.fusion_weight(0.9, "static") == 1.0
    k, r = torch.ones(2), torch.zeros(2)
    assert torch.equal(spot.fuse(k, r, 0.25), torch.full((2,), 0.25))


def test_full_steps_follow_warmup_and_reset():
    full = [i for i in range(50) if spot.is_full_step(i, 4, 9)]
    assert full == [0, 1, 2, 3, 13, 22, 31, 40, 49]
    assert [i for i in range(10) if spot.is_full_step(i, 2, 0)] == [0, 1]


def test_settled_velocity_lands_on_the_reference():
    x, y = torch.randn(4), torch.randn(4)
    v = spot.settled_velocity(x, y, 0.3)
    assert torch.allclose(x - 0.3 * v, y, atol=1e-6)


def _rope(pos, dim=8):
    omega = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    ang = pos[..., None].double() * omega
    return torch.stack([ang.cos(), -ang.sin(), ang.sin(), ang.cos()], -1).reshape(*ang.shape, 2, 2).float()


def test_fused_key_at_zero_weight_is_the_reference_key_at_the_image_position():
    """Blending after RoPE with the rotated reference key = blending before RoPE and rotating
    at the image position (what the authors do)."""
    k_img_raw, k_ref_raw = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    pos_img, pos_ref = torch.arange(5.0)[None, None], torch.arange(5.0)[None, None] + 7
    r_img, r_ref = _rope(pos_img), _rope(pos_ref)
    k_img, k_ref = spot.rotate(k_img_raw, r_img), spot.rotate(k_ref_raw, r_ref)
    move = spot.rotation_between(r_img, r_ref)
    assert torch.allclose(spot.fuse_key(k_img, k_ref, move, 0.0), spot.rotate(k_ref_raw, r_img), atol=1e-5)
    a = 0.3
    want = spot.rotate(a * k_img_raw + (1 - a) * k_ref_raw, r_img)
    assert torch.allclose(spot.fuse_key(k_img, k_ref, move, a), want, atol=1e-5)
    assert not torch.allclose(spot.fuse_key(k_img, k_ref, None, 0.0), want, atol=1e-2)


def test_authors_full_steps_and_weight():
    assert spot.authors_full_steps(50) == (4, frozenset({13, 22, 31}))
    assert spot.authors_full_steps(28) == (2, frozenset({7, 12, 17}))
    assert 0.999 < spot.authors_fusion_weight(1.0) < 1.0
    s = torch.tensor([0.1, 0.3])
    assert spot.authors_reuse(s, 0.2, "L4").tolist() == [True, False]
    assert spot.authors_reuse(s, 0.2, "cosine").tolist() == [False, True]


def test_the_pre_scaled_fusion_equals_the_plain_fusion():
    """What a selective step runs per block (rotation pre-scaled by 1 - a once per step, the blend
    in float32) equals fuse_key; with bf16 keys it is the float32 blend rounded once."""
    k_img_raw, k_ref_raw = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    r_img, r_ref = _rope(torch.arange(5.0)[None, None]), _rope(torch.arange(5.0)[None, None] + 7)
    k_img, k_ref = spot.rotate(k_img_raw, r_img), spot.rotate(k_ref_raw, r_ref)
    move = spot.rotation_between(r_img, r_ref)
    def plain(ck, rk, a):  # rotate the reference key, then blend
        return a * ck + (1 - a) * spot.rotate(rk, move)

    for a in (0.0, 0.3, 0.77):
        got = spot.fuse_key_scaled(k_img, k_ref, spot.scaled_rotation(move, a), a)
        assert torch.allclose(got, plain(k_img, k_ref, a), atol=1e-6)
    a = 0.3
    want = plain(k_img.bfloat16().float(), k_ref.bfloat16().float(), a)
    got = spot.fuse_key_scaled(k_img.bfloat16(), k_ref.bfloat16(), spot.scaled_rotation(move, a), a)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.bfloat16())


def test_values_fuse_by_lerp():
    c, r = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(spot.fuse(c, r, 0.3), 0.3 * c + 0.7 * r, atol=1e-6)
    assert spot.fuse(c, r, 1.0) is c
