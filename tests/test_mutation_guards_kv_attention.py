"""KV-Edit attention helpers and latent updates (kernels/kv_attention.py): behaviour the
mutation run found unguarded (issue 14). These decide which keys an image token attends to,
how strongly cached keys count, and which latent pixels an edit may change."""
import torch

from precise_edit.kernels.kv_attention import (append_cached, euler, extend_bias, keep_background,
                                               mask_guided_bias, reference_attention)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_cached_keys_of_one_image_serve_a_batch_and_take_its_dtype():
    k, v = rand(2, 3, 4, 8, seed=1).half(), rand(2, 3, 4, 8, seed=2).half()
    ck, cv = rand(1, 3, 5, 8, seed=3), rand(1, 3, 5, 8, seed=4)
    k2, v2 = append_cached(k, v, ck, cv)
    assert k2.shape == v2.shape == (2, 3, 9, 8) and k2.dtype == v2.dtype == torch.float16
    for b in range(2):  # own keys first, then the cached ones, for every image of the batch
        assert torch.equal(k2[b, :, :4], k[b]) and torch.equal(k2[b, :, 4:], ck[0].half())
        assert torch.equal(v2[b, :, :4], v[b]) and torch.equal(v2[b, :, 4:], cv[0].half())
    # a cache with the batch's size is used as is, image by image
    k3, v3 = append_cached(k, v, rand(2, 3, 5, 8, seed=5), rand(2, 3, 5, 8, seed=6))
    assert torch.equal(v3[1, :, 4:], rand(2, 3, 5, 8, seed=6)[1].half())


def test_bias_on_cached_keys_keeps_a_bool_mask_of_the_own_keys():
    """A bool mask (True = may attend) becomes 0 / -inf on the own columns, and the cached
    columns get the bias; 2-D and 3-D masks broadcast as [1, 1, Lq, Lk]."""
    allowed = torch.tensor([[True, False, True], [False, True, True]])
    b = extend_bias(allowed, 2, 3, 2, -0.5, torch.float32, "cpu")
    assert b.shape == (1, 1, 2, 5) and b.dtype == torch.float32
    assert b[0, 0].tolist() == [[0.0, float("-inf"), 0.0, -0.5, -0.5], [float("-inf"), 0.0, 0.0, -0.5, -0.5]]
    add = torch.tensor([[[0.25, -1.0, 0.0]]])  # an additive mask [1, Lq=1, Lk=3] is kept as it is
    b2 = extend_bias(add, 1, 3, 1, 2.0, torch.float32, "cpu")
    assert b2.shape == (1, 1, 1, 4) and b2[0, 0, 0].tolist() == [0.25, -1.0, 0.0, 2.0]
    # a bias of zero with a mask still extends the mask (the cached columns must be there)
    b3 = extend_bias(allowed, 2, 3, 2, 0.0, torch.float32, "cpu")
    assert b3.shape == (1, 1, 2, 5) and (b3[..., 3:] == 0).all()


def test_bias_shifts_attention_to_the_cached_keys():
    """attn_scale: a positive bias on cached columns moves attention weight onto them."""
    q, k = rand(1, 2, 3, 8, seed=1), rand(1, 2, 6, 8, seed=2)
    v = torch.cat((torch.zeros(1, 2, 3, 8), torch.ones(1, 2, 3, 8)), 2)  # cached values are 1, own 0
    plain = reference_attention(q, k, v)
    pushed = reference_attention(q, k, v, extend_bias(None, 3, 3, 3, 2.0, torch.float32, "cpu"))
    assert (pushed.mean() - plain.mean()) > 0.3
    assert torch.allclose(pushed, torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=extend_bias(None, 3, 3, 3, 2.0, torch.float32, "cpu")), atol=1e-5)


def test_mask_guided_pattern_with_a_reference_and_the_model_dtype():
    fg = torch.tensor([False, True, True])
    b = mask_guided_bias(1, fg, 2, torch.float16, "cpu")
    assert b.shape == (1, 1, 6, 6) and b.dtype == torch.float16
    ok = torch.isfinite(b[0, 0])
    kinds = "tbffrr"
    for i, qi in enumerate(kinds):
        for j, kj in enumerate(kinds):
            assert bool(ok[i, j]) == (qi in "tr" or kj in "tr" or qi == kj), (qi, kj)
    assert (b[0, 0][ok] == 0).all()


def test_euler_step_goes_from_one_sigma_to_the_next():
    x, v = torch.full((1, 2), 2.0), torch.full((1, 2), 4.0)
    assert euler(x, v, 0.75, 0.5).tolist() == [[1.0, 1.0]]   # x + (s_to - s_from) v
    assert euler(x, v, 0.5, 0.75).tolist() == [[3.0, 3.0]]   # inversion: upwards


def test_background_kept_per_image_of_a_batch_and_in_the_edit_dtype():
    m = torch.zeros(2, 2, 3, dtype=torch.bool)
    m[0, 0, 0] = True
    m[1, 1, 2] = True
    x = torch.ones(2, 4, 2, 3, dtype=torch.bfloat16)
    src = torch.zeros(2, 4, 2, 3, dtype=torch.float32)
    out = keep_background(x, src, m)
    assert out.dtype == torch.bfloat16
    assert out[0, :, 0, 0].eq(1).all() and out[1, :, 1, 2].eq(1).all() and out.sum() == 8
    # one mask for the whole batch, video latents [B, C, T, h, w]
    one = keep_background(torch.ones(2, 4, 3, 2, 3), torch.zeros(2, 4, 3, 2, 3), m[:1])
    assert one.sum() == 2 * 4 * 3 and one[:, :, :, 0, 0].eq(1).all()


def test_cached_keys_of_one_image_serve_a_batch_as_large_as_the_head_count():
    """Batch 2 with 2 heads: the cache's batch (1), not its head count, decides the broadcast."""
    k, v = rand(2, 2, 4, 8, seed=1), rand(2, 2, 4, 8, seed=2)
    ck, cv = rand(1, 2, 3, 8, seed=3), rand(1, 2, 3, 8, seed=4)
    k2, v2 = append_cached(k, v, ck, cv)
    assert k2.shape == (2, 2, 7, 8) and torch.equal(k2[1, :, 4:], ck[0]) and torch.equal(v2[1, :, 4:], cv[0])


def test_background_kept_per_image_of_a_video_batch():
    m = torch.zeros(2, 2, 3, dtype=torch.bool)
    m[0, 0, 0] = True
    m[1, 1, 2] = True
    out = keep_background(torch.ones(2, 4, 3, 2, 3), torch.zeros(2, 4, 3, 2, 3), m)
    assert out.sum() == 2 * 4 * 3 and out[0, :, :, 0, 0].eq(1).all() and out[1, :, :, 1, 2].eq(1).all()
