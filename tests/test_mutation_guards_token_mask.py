"""Pixel mask -> latent mask -> token mask (kernels/token_mask.py): behaviour that mutation
testing found unguarded (issue 14): the messages a user reads on bad input, masks resized up
in one direction, batches of ComfyUI's [B, 1, H, W] masks, and the region overlay."""
import pytest
import torch

from precise_edit.kernels.token_mask import (MaskError, TokenMasks, as_mask_batch, build_token_masks,
                                             expand_token_mask, latent_pixel_mask, overlay_image, token_grid,
                                             token_mask_from_latent)


def test_bad_masks_and_sizes_are_refused_with_their_messages():
    with pytest.raises(MaskError, match=r"^expected a tensor mask, got list$"):
        as_mask_batch([[1.0]])
    with pytest.raises(MaskError, match=r"^expected a mask of shape \[H, W\] or \[B, H, W\], got \(2, 3, 4, 5\)$"):
        as_mask_batch(torch.zeros(2, 3, 4, 5))
    with pytest.raises(MaskError, match=r"^expected a mask of shape \[H, W\] or \[B, H, W\], got \(4,\)$"):
        as_mask_batch(torch.zeros(4))
    with pytest.raises(MaskError, match=r"^mask resize must be one of \('touched', 'bilinear'\)$"):
        latent_pixel_mask(torch.ones(1, 8, 8), (2, 2), "nearest")
    for hw in ((0, 4), (4, 0), (-1, 4)):
        with pytest.raises(MaskError, match=r"^latent size must be positive, got \(-?\d+, -?\d+\)$"):
            latent_pixel_mask(torch.ones(1, 8, 8), hw)
    assert latent_pixel_mask(torch.ones(1, 8, 8), (1, 1)).shape == (1, 1, 1)  # one latent pixel is fine
    with pytest.raises(MaskError, match=r"^patch size must be >= 1, got 0$"):
        token_grid((4, 4), 0)
    assert token_grid((5, 7), 1) == (5, 7)
    with pytest.raises(MaskError, match=r"^expected a latent mask \[B, h, w\], got \(4, 4\)$"):
        token_mask_from_latent(torch.ones(4, 4, dtype=torch.bool), 2)


def test_empty_mask_messages_name_the_items():
    with pytest.raises(MaskError, match=r"^the mask selects no pixel: paint the region to edit \(white = edit\)$"):
        build_token_masks(torch.zeros(1, 16, 16), (2, 2), 2)
    m = torch.zeros(3, 16, 16)
    m[1, 0, 0] = 1.0
    with pytest.raises(MaskError, match=r"^mask item\(s\) \[0, 2\] selects no pixel: paint the region"):
        build_token_masks(m, (2, 2), 2)


def test_comfyui_mask_batches_with_a_channel_axis():
    m = torch.zeros(2, 1, 16, 16)
    m[1, 0, 8, 8] = 1.0
    m[0, 0, 0, 0] = 1.0
    tm = build_token_masks(m, (2, 2), 1)
    assert tm.latent.shape == (2, 2, 2)
    assert tm.latent[0].nonzero().tolist() == [[0, 0]] and tm.latent[1].nonzero().tolist() == [[1, 1]]
    # a [B, H, W] batch whose height is 1 is a mask of one row, not a channel axis
    assert as_mask_batch(torch.ones(3, 1, 5)).shape == (3, 1, 5)
    assert as_mask_batch(torch.ones(5, 6)).shape == (1, 5, 6)


def test_touched_pixels_when_one_side_grows():
    # the mask is shorter than the latent (height grows) but wider (width shrinks): bilinear
    # resizing alone decides; the footprint maximum does not apply
    m = torch.zeros(1, 2, 16)
    m[0, 0, 8] = 1.0
    lat = latent_pixel_mask(m, (4, 2))
    bil = torch.nn.functional.interpolate(m[:, None], size=(4, 2), mode="bilinear")[:, 0] > 0
    assert torch.equal(lat, bil)
    m = torch.zeros(1, 16, 2)
    m[0, 8, 0] = 1.0
    assert torch.equal(latent_pixel_mask(m, (2, 4)),
                       torch.nn.functional.interpolate(m[:, None], size=(2, 4), mode="bilinear")[:, 0] > 0)
    # shrinking one side only (the other kept): the footprint maximum keeps a thin stroke
    m = torch.zeros(1, 16, 2)
    m[0, 8, 1] = 1.0
    assert latent_pixel_mask(m, (2, 2)).nonzero().tolist() == [[0, 1, 1]]
    m = torch.zeros(1, 2, 16)
    m[0, 1, 8] = 1.0
    assert latent_pixel_mask(m, (2, 2)).nonzero().tolist() == [[0, 1, 1]]


def test_latent_sized_mask_thresholds_above_zero():
    m = torch.tensor([[[0.0, 1e-6], [-0.5, 1.0]]])
    assert latent_pixel_mask(m, (2, 2)).tolist() == [[[False, True], [False, True]]]


def test_token_masks_are_their_own_tensors_and_count_per_item():
    lat = torch.zeros(2, 3, 3, dtype=torch.bool)
    lat[0, 0, 0] = True
    lat[1] = True
    tokens = token_mask_from_latent(lat, 1)
    tokens[0, 2, 2] = True  # editing the token mask must not edit the latent mask
    assert not lat[0, 2, 2]
    assert tokens.dtype == torch.bool
    tm = TokenMasks(latent=lat, tokens=token_mask_from_latent(lat, 1), patch=1)
    assert tm.counts() == ([1, 9], 9)
    assert tm.computed_fraction().tolist() == pytest.approx([1 / 9, 1.0])
    assert tm.flat.shape == (2, 9)


def test_expanded_tokens_cover_their_latent_pixels_and_are_cropped():
    tokens = torch.tensor([[[True, False], [False, True]]])
    up = expand_token_mask(tokens, 2, (3, 4))
    assert up.shape == (1, 3, 4) and up.dtype == torch.bool
    assert up[0].tolist() == [[True, True, False, False], [True, True, False, False],
                              [False, False, True, True]]


def test_overlay_defaults_crop_and_grid_spacing():
    image = torch.full((8, 12, 3), 0.5)
    region = torch.zeros(10, 14)  # larger than the image: cropped to it
    region[:8, 6:] = 1
    out = overlay_image(image, region, 4)
    assert out.shape == (8, 12, 3)
    fg = torch.tensor([1.0, 0.25, 0.2])
    bg = torch.tensor([0.2, 0.45, 1.0])
    assert torch.allclose(out[1, 7], 0.5 * 0.55 + fg * 0.45)
    assert torch.allclose(out[1, 1], 0.5 * 0.55 + bg * 0.45)
    # lines on every 4th row and column, and only there
    plain = overlay_image(image, region, 1)  # grids finer than 4 pixels are not drawn
    lines = (out - plain).abs().sum(-1) > 1e-6
    assert torch.allclose(out[lines], plain[lines] * 0.65)
    assert lines[:, 1].tolist() == [True, False, False, False] * 2
    assert lines[1].tolist() == [True, False, False, False] * 3
    # a 5-pixel grid is drawn too
    assert torch.allclose(overlay_image(image, region, 5)[5, 1], (0.5 * 0.55 + bg * 0.45) * 0.65)


def test_the_chosen_resize_reaches_the_token_masks():
    """KV-Edit's "bilinear" mask resize (the authors' way) can lose a thin stroke that the
    default "touched" keeps; build_token_masks must use the one the node was given."""
    mask = torch.zeros(1, 16, 16)
    mask[0, 8, 8] = 1.0  # not on the rows/columns bilinear-by-8 reads
    mask[0, 3, 3] = 1.0  # on them
    touched = build_token_masks(mask, (2, 2), 1)
    bilinear = build_token_masks(mask, (2, 2), 1, resize="bilinear")
    assert touched.latent[0].tolist() == [[True, False], [False, True]]
    assert bilinear.latent[0].tolist() == [[True, False], [False, False]]
    assert torch.equal(bilinear.tokens, bilinear.latent)
