"""SpotEdit token judging: behaviour the mutation run found unguarded (issue 14).
Which tokens a selector marks active decides which pixels an edit may change."""
import pytest
import torch

from precise_edit.kernels import spot


def _one_pixel_change(h, w, y, x, value=2.0, batch=1):
    ref = torch.zeros(batch, 4, h, w)
    x0 = ref.clone()
    x0[:, :, y, x] = value
    return x0, ref


def test_a_change_on_the_edge_of_an_odd_size_latent_counts_fully():
    """Latents whose size is not a multiple of the patch are padded by repeating the edge,
    as the models pad them: the token holding a changed edge pixel scores like a token
    whose four pixels all changed, and no other token scores."""
    x0, ref = _one_pixel_change(5, 7, 4, 6)
    l4 = spot.scores_l4(x0, ref, 2)
    assert l4.shape == (1, 3, 4)
    assert l4[0, 2, 3].item() == pytest.approx(2.0 ** 4)
    l4[0, 2, 3] = 0
    assert not l4.any()
    # top-left corner: no padding involved, one pixel of four changed
    x0, ref = _one_pixel_change(5, 7, 0, 0)
    assert spot.scores_l4(x0, ref, 2)[0, 0, 0].item() == pytest.approx(2.0 ** 4 / 4)


def test_cosine_judge_on_an_odd_size_latent():
    ref = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    x0 = ref.clone()
    x0[1, :, 4, 6] = -x0[1, :, 4, 6]  # second image: the bottom-right pixel points the other way
    c = spot.scores_cosine(x0, ref, 2)
    assert c.shape == (2, 3, 4)
    assert c[0].abs().max().item() < 1e-6
    # the padded token repeats the flipped pixel: all four of its pixels flipped -> 1 - cos = 2
    assert c[1, 2, 3].item() == pytest.approx(2.0, abs=1e-5)
    c[1, 2, 3] = 0
    assert c.abs().max().item() < 1e-6


def test_feature_scores_average_layers_and_upsample_small_ones():
    """Perceptual judge: each layer is compared after channel normalisation (scale-free),
    resized to the latent grid (bilinear when smaller), and layers are averaged."""
    g = torch.Generator().manual_seed(1)
    a_big = torch.randn(2, 3, 8, 12, generator=g)
    a_small = torch.randn(2, 3, 4, 6, generator=g)
    b_big, b_small = a_big.clone(), a_small.clone()
    b_big[1, :, 0:2, 0:2] *= -1   # second image differs, top-left, in both layers
    b_small[1, :, 0, 0] *= -1
    one = spot.scores_from_features([a_big], [b_big], (8, 12), 2)
    assert one[0].abs().max().item() == 0
    assert one[1, 0, 0].item() == pytest.approx(4.0)  # |n - (-n)|^2 = 4 for unit vectors
    assert one[1].flatten()[1:].abs().max().item() == 0
    # scale-free: the same features times 10 give the same score
    assert torch.allclose(spot.scores_from_features([10 * a_big], [b_big], (8, 12), 2), one)
    # averaging, not summing: two copies of one layer score like one
    assert torch.allclose(spot.scores_from_features([a_big, a_big], [b_big, b_big], (8, 12), 2), one)
    small = spot.scores_from_features([a_small], [b_small], (8, 12), 2)
    expected = torch.nn.functional.interpolate(
        torch.zeros(2, 1, 4, 6).index_put_((torch.tensor([1]), torch.tensor([0]), torch.tensor([0]),
                                            torch.tensor([0])), torch.tensor(4.0)),
        size=(8, 12), mode="bilinear")
    assert torch.allclose(small, spot.pool_to_tokens(expected[:, 0], 2), atol=1e-6)


def test_dilation_grows_active_tokens_by_the_radius():
    act = torch.zeros(1, 7, 7, dtype=torch.bool)
    act[0, 3, 3] = True
    assert torch.equal(spot.dilate(act, 0), act)
    one = spot.dilate(act, 1)
    assert one.shape == act.shape and int(one.sum()) == 9 and bool(one[0, 2:5, 2:5].all())
    two = spot.dilate(act, 2)
    assert int(two.sum()) == 25 and bool(two[0, 1:6, 1:6].all())
    assert not spot.dilate(torch.zeros_like(act), 2).any()


def test_select_active_lowers_tau_until_a_token_is_active():
    scores = torch.tensor([[[0.30, 0.10], [0.05, 0.0]]])
    act, t = spot.select_active(scores, 1.0)
    assert t == 0.25  # 1 -> 0.5 -> 0.25: the first threshold some token passes
    assert act.tolist() == [[[True, False], [False, False]]]
    act, t = spot.select_active(scores, 0.2)
    assert t == 0.2 and act.tolist() == [[[True, False], [False, False]]]
    act, t = spot.select_active(scores, 0.07)
    assert t == 0.07 and act.tolist() == [[[True, True], [False, False]]]


def test_select_active_user_mask_modes():
    scores = torch.tensor([[[0.9, 0.0], [0.0, 0.0]]])
    user = torch.tensor([[[False, False], [False, True]]])
    act, _ = spot.select_active(scores, 0.5, user_mask=user, mode="replace")
    assert act.tolist() == user.tolist()
    act, _ = spot.select_active(scores, 0.5, user_mask=user, mode="union")
    assert act.tolist() == [[[True, False], [False, True]]]
    both = torch.tensor([[[True, False], [False, True]]])
    act, _ = spot.select_active(scores, 0.5, user_mask=both, mode="intersect")
    assert act.tolist() == [[[True, False], [False, False]]]
    # an empty user mask in replace mode falls back to the scores
    act, _ = spot.select_active(scores, 0.5, user_mask=torch.zeros_like(user), mode="replace")
    assert act.tolist() == [[[True, False], [False, False]]]
    # no user mask: the mode does not matter
    for mode in spot.MASK_MODES:
        act, _ = spot.select_active(scores, 0.5, mode=mode)
        assert act.tolist() == [[[True, False], [False, False]]]
    with pytest.raises(ValueError, match=r"mask mode must be one of \('replace', 'union', 'intersect'\)"):
        spot.select_active(scores, 0.5, mode="xor")


def test_identical_images_keep_only_the_top_token_active():
    """Nothing differs and the intersection is empty: tau falls to 0, and the one token with
    the highest score (the first, on ties) stays active so a step is never empty."""
    scores = torch.zeros(2, 2, 3)
    scores[1, 1, 2] = 1e-30
    user = torch.zeros(2, 2, 3, dtype=torch.bool)
    act, t = spot.select_active(scores, 0.3, user_mask=user, mode="intersect")
    assert t == 0.0 and act.dtype == torch.bool
    assert act[0].flatten().tolist() == [True] + [False] * 5
    assert act[1].flatten().tolist() == [False] * 5 + [True]


def test_reset_every_one_makes_every_later_step_full():
    assert [spot.is_full_step(s, 2, 1) for s in range(6)] == [True, True, False, True, True, True]
    assert [spot.is_full_step(s, 2, 0) for s in range(6)] == [True, True, False, False, False, False]


def test_unknown_fusion_schedule_message():
    with pytest.raises(ValueError, match=r"^schedule must be one of \('cos2', 'static'\)$"):
        spot.fusion_weight(0.5, "linear")
