"""The token controller (nodes/flux_tokens.py) on ComfyUI's own FLUX and Qwen-Image, one model
evaluation at a time (issue 14: mutation testing found these behaviours unguarded).

Each test calls the tiny diffusion model directly with the sampling run's ``transformer_options``
(what ComfyUI's ``apply_model`` passes), so a test is a few forwards of a 24-token model.
"""
import pytest
import torch

import tiny_models as tm
from precise_edit.nodes.flux_tokens import TokenController, TokenPlan, VelocityProbe

N = 24  # 8 x 12 latent -> 4 x 6 tokens


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dm():
    return tm.tiny_flux(0).model.diffusion_model


@pytest.fixture(scope="module")
def qdm():
    return tm.tiny_qwen_image(0).model.diffusion_model


X = _rand(1, 16, 8, 12, seed=1)
REF = _rand(1, 16, 8, 12, seed=2)
CTX = _rand(1, 5, tm.FLUX_CONTEXT, seed=3)
VEC = _rand(1, tm.FLUX_VEC, seed=4)


def flux(dm, ctl=None, plan=None, ref=True, x=X, options=None):
    """One FLUX(.1 Kontext) evaluation with the controller's patches, as a sampling run makes it."""
    mo = options if options is not None else {}
    if ctl is not None:
        ctl.install(mo)
        ctl.plan = plan
    to = mo.get("transformer_options", {})
    with torch.no_grad():
        return dm(x, torch.tensor([0.7]), CTX, y=VEC, guidance=torch.tensor([3.5]),
                  ref_latents=[REF] if ref else None, transformer_options=to)


def qwen(qdm, ctl=None, plan=None, x=X, options=None):
    mo = options if options is not None else {}
    if ctl is not None:
        ctl.install(mo)
        ctl.plan = plan
    to = mo.get("transformer_options", {})
    with torch.no_grad():
        return qdm(x[:, :, None], torch.tensor([0.7]), _rand(1, 5, tm.QWEN_CONTEXT, seed=3),
                   ref_latents=[REF[:, :, None]], transformer_options=to)[:, :, 0]


def rows(out, idx):
    """The latent pixels of the given tokens (each token: 2 x 2 latent pixels)."""
    m = torch.zeros(N, dtype=torch.bool)
    m[idx] = True
    grid = m.reshape(4, 6).repeat_interleave(2, 0).repeat_interleave(2, 1)
    return out[grid[None, None].expand_as(out)]


def recorder():
    seen = {}
    return seen, lambda b, k, v: seen.__setitem__(b, (k.clone(), v.clone()))


def from_seen(seen, idx):
    """A ``TokenPlan.cached`` that answers each block with the recorded keys/values at ``idx``."""
    return lambda b, device, dtype: (seen[b][0][:, :, idx], seen[b][1][:, :, idx])


def flux_ctl(dm):
    return TokenController(len(dm.single_blocks), "flux")


def qwen_ctl(qdm):
    return TokenController(len(qdm.transformer_blocks), "qwen_image")


KEEP = torch.tensor([0, 5, 7, 12, 23])
DROP = torch.tensor([i for i in range(N) if i not in KEEP.tolist()])


# -------------------------------------------------------------------------------- bad input

def test_a_model_without_blocks_or_of_another_kind_is_refused():
    with pytest.raises(ValueError, match=r"^this model has no transformer blocks to patch$"):
        TokenController(0)
    TokenController(1)  # one block is enough
    with pytest.raises(ValueError, match=r"^unsupported architecture sd15$"):
        TokenController(2, "sd15")


def test_plan_for_more_image_tokens_than_the_model_sees_is_a_clear_error(dm):
    # the count includes the reference tokens of FLUX.1 Kontext
    with pytest.raises(ValueError, match=rf"^the model sees {2 * N} image tokens, the plan expects {2 * N + 1}$"):
        flux(dm, flux_ctl(dm), TokenPlan(n_img=2 * N + 1, keep=KEEP))
    with pytest.raises(ValueError, match=rf"^the model sees {N} image tokens, the plan expects {N + 1}$"):
        flux(dm, flux_ctl(dm), TokenPlan(n_img=N + 1, keep=KEEP), ref=False)
    # exactly as many tokens as planned is fine
    assert flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=torch.arange(N)), ref=False).shape == X.shape


# ----------------------------------------------------------------------------- no plan / calls

def test_without_a_plan_the_model_is_unchanged_and_each_evaluation_is_counted(dm, qdm):
    ctl = flux_ctl(dm)
    assert ctl.calls == 0 and ctl.plan is None
    # before any evaluation no token positions are known (SpotEdit's fusion checks for None)
    assert ctl.last_img_ids is None and ctl.last_img_pe is None
    assert torch.equal(flux(dm, ctl, None), flux(dm))
    assert torch.equal(flux(dm, ctl, None), flux(dm))
    assert ctl.calls == 2
    ids = ctl.last_img_ids  # [image | reference] positions before any were dropped
    assert ids.shape == (1, 2 * N, 3)
    assert torch.equal(ids[0, :N, 0], torch.zeros(N)) and torch.equal(ids[0, N:, 0], torch.ones(N))
    assert torch.equal(ids[0, :6, 2], torch.arange(6.0)) and torch.equal(ids[0, ::6, 1], torch.cat([torch.arange(4.0)] * 2))
    flux(dm, ctl, TokenPlan(n_img=N, keep=KEEP))
    assert ctl.last_img_ids.shape == (1, 2 * N, 3) and ctl.calls == 3

    q = qwen_ctl(qdm)
    assert torch.equal(qwen(qdm, q, None), qwen(qdm)) and q.calls == 1
    qwen(qdm, q, TokenPlan(n_img=N, keep=KEEP))
    assert q.calls == 2
    pe = q.last_img_pe  # rotary embeddings of every image and reference token
    assert pe.shape[2] == 2 * N and pe.shape[-2:] == (2, 2)
    assert not torch.equal(pe[:, :, 0], pe[:, :, N])  # the reference has its own positions


# ---------------------------------------------------------------------------------- recording

def test_recorded_keys_are_the_image_and_reference_tokens_of_every_block(dm):
    seen_all, rec_all = recorder()
    flux(dm, flux_ctl(dm), TokenPlan(n_img=N, record_all=True, record=rec_all))
    blocks = [("double", 0), ("double", 1), ("single", 0), ("single", 1)]
    assert sorted(seen_all) == blocks
    for b in blocks:
        k, v = seen_all[b]
        assert k.shape == v.shape == (1, 2, 2 * N, 64)
    idx = torch.tensor([1, 4, 20, N + 3])
    seen, rec = recorder()
    flux(dm, flux_ctl(dm), TokenPlan(n_img=N, record_idx=idx, record=rec))
    assert sorted(seen) == blocks
    for b in blocks:
        assert torch.equal(seen[b][0], seen_all[b][0][:, :, idx])
        assert torch.equal(seen[b][1], seen_all[b][1][:, :, idx])


def test_recording_does_not_change_the_evaluation(dm):
    seen, rec = recorder()
    assert torch.equal(flux(dm, flux_ctl(dm), TokenPlan(n_img=N, record_all=True, record=rec)), flux(dm))


# ------------------------------------------------------------------------ partial evaluation

def _full_record(dm):
    seen, rec = recorder()
    full = flux(dm, flux_ctl(dm), TokenPlan(n_img=N, record_all=True, record=rec))
    return full, seen


def test_partial_evaluation_with_reference_tokens_equals_the_full_one_on_kept_tokens(dm):
    full, seen = _full_record(dm)

    def cached(b, device, dtype):  # the dropped image tokens
        k, v = seen[b]
        return k[:, :, DROP].to(device, dtype), v[:, :, DROP].to(device, dtype)

    part = flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP, keep_ref=True, cached=cached))
    assert part.shape == full.shape
    assert (rows(part, KEEP) - rows(full, KEEP)).abs().max() <= 1e-5
    # the dropped rows come back as zeros before the final layer: all alike, unlike the full ones
    assert not torch.allclose(rows(part, DROP), rows(full, DROP), atol=1e-3)
    flat = part.reshape(1, 16, 4, 2, 6, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, N, 64)
    assert torch.equal(flat[0, DROP], flat[0, DROP[:1]].expand(len(DROP), 64))

    # without the reference tokens, the cache must hold them too
    cached_ref = from_seen(seen, torch.cat((DROP, torch.arange(N, 2 * N))))
    ctl = flux_ctl(dm)
    part2 = flux(dm, ctl, TokenPlan(n_img=N, keep=KEEP, keep_ref=False, cached=cached_ref))
    assert (rows(part2, KEEP) - rows(full, KEEP)).abs().max() <= 1e-5
    assert torch.equal(ctl.last_img_ids, _full_ids(dm))


def _full_ids(dm):
    ctl = flux_ctl(dm)
    flux(dm, ctl, None)
    return ctl.last_img_ids


def test_partial_evaluation_computes_only_the_kept_tokens(dm):
    qlens = []

    def spy(func, q, k, v, heads, *a, **kw):
        qlens.append((q.shape[2], k.shape[2]))
        return func(q, k, v, heads, *a, **kw)

    options = {"transformer_options": {"optimized_attention_override": spy}}
    full, seen = _full_record(dm)
    flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP, keep_ref=True,
                                     cached=from_seen(seen, DROP)),
         options=options)
    # the earlier override is chained and sees the kept tokens plus the appended cache
    assert qlens == [(5 + len(KEEP) + N, 5 + 2 * N)] * 4
    qlens.clear()
    flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP, keep_ref=False), options={
        "transformer_options": {"optimized_attention_override": spy}})
    assert qlens == [(5 + len(KEEP), 5 + len(KEEP))] * 4


def test_cached_keys_take_their_logit_bias(dm):
    full, seen = _full_record(dm)

    cached = from_seen(seen, DROP)
    alone = flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP))
    ignored = flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP, cached=cached, cached_bias=-1e4))
    assert (rows(ignored, KEEP) - rows(alone, KEEP)).abs().max() <= 2e-6
    assert (rows(alone, KEEP) - rows(full, KEEP)).abs().max() > 1e-3

    def doubled(b, device, dtype):  # every cached key twice = one copy with bias ln 2
        k, v = cached(b, device, dtype)
        return torch.cat((k, k), 2), torch.cat((v, v), 2)

    twice = flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP, cached=doubled))
    biased = flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP, cached=cached, cached_bias=0.6931471805599453))
    assert (rows(twice, KEEP) - rows(biased, KEEP)).abs().max() <= 2e-6
    assert (rows(twice, KEEP) - rows(full, KEEP)).abs().max() > 1e-4


def test_an_empty_or_missing_cache_is_skipped_and_one_cached_token_counts(dm):
    full, seen = _full_record(dm)
    alone = flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP))
    for cached in (lambda b, d, t: None, from_seen(seen, slice(0, 0))):
        out = flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP, cached=cached, cached_bias=5.0))
        assert torch.equal(out, alone)
    one = flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP, cached=from_seen(seen, slice(3, 4))))
    assert (rows(one, KEEP) - rows(alone, KEEP)).abs().max() > 1e-4


def test_cache_is_asked_for_each_block_with_the_attention_device_and_dtype(dm):
    asked = []

    def cached(b, device, dtype):
        asked.append((b, torch.device(device), dtype))
        return None

    flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP, cached=cached))
    assert asked == [(b, torch.device("cpu"), torch.float32)
                     for b in [("double", 0), ("double", 1), ("single", 0), ("single", 1)]]


# --------------------------------------------------------------------------- mask-guided

def test_mask_guided_attention_hides_the_foreground_from_the_background_record(dm):
    fg = torch.zeros(N, dtype=torch.bool)
    fg[KEEP] = True
    x2 = X.clone()
    grid = fg.reshape(4, 6).repeat_interleave(2, 0).repeat_interleave(2, 1)
    x2[grid[None, None].expand_as(x2)] = _rand(int(grid.sum()) * 16, seed=9)

    def record_block1(x, guided):
        seen, rec = recorder()
        flux(dm, flux_ctl(dm), TokenPlan(n_img=N, record_idx=DROP, record=rec, guided_fg=guided), x=x, ref=False)
        return seen[("double", 1)][0]

    assert torch.equal(record_block1(X, fg), record_block1(x2, fg))
    assert not torch.allclose(record_block1(X, None), record_block1(x2, None), atol=1e-6)


def test_mask_guided_bias_is_added_to_an_existing_mask():
    ctl = TokenController(1)
    ctl._txt_len, ctl._n_seq = 2, 4
    fg = torch.tensor([True, False, False, False])
    ctl.plan = TokenPlan(n_img=4, guided_fg=fg)
    got = {}

    def func(q, k, v, heads, mask=None, **kw):
        got["mask"] = mask
        return q

    q = torch.zeros(1, 1, 6, 8)
    mask = torch.full((6, 6), 3.0)
    ctl._make_override(None)(func, q, q, q, 1, mask=mask, transformer_options={})
    alone = {}
    ctl._make_override(None)(lambda q, k, v, h, mask=None, **kw: alone.setdefault("m", mask), q, q, q, 1,
                             transformer_options={})
    assert torch.equal(got["mask"], alone["m"] + 3.0)
    assert (alone["m"] < -1e3).any() and (alone["m"] == 0).any()


def test_a_given_attention_mask_is_kept_under_the_guided_pattern_and_the_cached_bias():
    """Qwen-Image hands its mask to the attention positionally; the controller adds the
    mask-guided pattern to it, keeps it on the computed keys, puts the cache bias on the
    appended keys, and gives the attention kernel a bias of the query's dtype."""
    ctl = TokenController(1, "qwen_image")
    ctl._txt_len, ctl._n_seq = 2, 4
    fg = torch.tensor([True, False, False, False])
    extra = (torch.ones(1, 1, 3, 8), torch.ones(1, 1, 3, 8))
    ctl.plan = TokenPlan(n_img=4, guided_fg=fg, cached=lambda b, d, t: extra, cached_bias=0.5)
    got = {}

    def func(q, k, v, heads, *a, mask=None, **kw):
        got.update(k=k, mask=mask, a=a)
        return q

    q = torch.zeros(1, 1, 6, 8, dtype=torch.bfloat16)
    given = torch.arange(36.0, dtype=torch.bfloat16).view(6, 6)
    ctl._make_override(None)(func, q, q, q, 1, given, transformer_options={"block_type": "double",
                                                                          "block_index": 0})
    ctl.plan = TokenPlan(n_img=4, guided_fg=fg)
    alone = {}
    ctl._make_override(None)(lambda q, k, v, h, mask=None, **kw: alone.setdefault("m", mask), q, q, q, 1,
                             transformer_options={})
    mask = got["mask"]
    assert got["a"] == () and got["k"].shape[2] == 9
    assert mask.dtype == torch.bfloat16 and alone["m"].dtype == torch.bfloat16
    assert mask.shape[-2:] == (6, 9)
    assert torch.equal(mask[0, 0, :, :6], given + alone["m"][0, 0])
    assert torch.equal(mask[0, 0, :, 6:], torch.full((6, 3), 0.5, dtype=torch.bfloat16))
    # no mask given: the cache bias alone, also in the query's dtype
    ctl.plan = TokenPlan(n_img=4, cached=lambda b, d, t: extra, cached_bias=0.5)
    ctl._make_override(None)(func, q, q, q, 1, transformer_options={})
    assert got["mask"].dtype == torch.bfloat16 and got["mask"].shape[-1] == 9
    assert torch.equal(got["mask"][..., 6:], torch.full((1, 1, 1, 3), 0.5, dtype=torch.bfloat16))


# ----------------------------------------------------------------------------- chaining

def test_earlier_patches_keep_running(dm):
    calls = []

    def post_input(args):
        calls.append("post_input")
        return args

    def last_block(args, extra):
        calls.append("last_block")
        return extra["original_block"](args)

    options = {"transformer_options": {"patches": {"post_input": [post_input]},
                                       "patches_replace": {"dit": {("single_block", 1): last_block}}}}
    ctl = flux_ctl(dm)
    part = flux(dm, ctl, TokenPlan(n_img=N, keep=KEEP), options=options)
    assert calls == ["post_input", "last_block"]
    assert options["transformer_options"]["patches"]["post_input"][0] is post_input
    assert part.shape == X.shape
    assert torch.equal(part, flux(dm, flux_ctl(dm), TokenPlan(n_img=N, keep=KEEP)))


def test_earlier_qwen_block_patches_keep_running(qdm):
    calls = []

    def block0(args, extra):
        calls.append(0)
        return extra["original_block"](args)

    options = {"transformer_options": {"patches_replace": {"dit": {("double_block", 0): block0}}}}
    out = qwen(qdm, qwen_ctl(qdm), TokenPlan(n_img=N, keep=KEEP), options=options)
    assert calls == [0]
    assert torch.equal(out, qwen(qdm, qwen_ctl(qdm), TokenPlan(n_img=N, keep=KEEP)))


# ------------------------------------------------------------------------------- Qwen-Image

def test_qwen_partial_evaluation_equals_the_full_one_on_kept_tokens(qdm):
    seen, rec = recorder()
    full = qwen(qdm, qwen_ctl(qdm), TokenPlan(n_img=N, record_all=True, record=rec))
    assert torch.equal(full, qwen(qdm))
    assert sorted(seen) == [("double", 0), ("double", 1)] and seen[("double", 0)][0].shape[2] == 2 * N

    cached = from_seen(seen, torch.cat((DROP, torch.arange(N, 2 * N))))
    ctl = qwen_ctl(qdm)
    part = qwen(qdm, ctl, TokenPlan(n_img=N, keep=KEEP, keep_ref=False, cached=cached))
    assert part.shape == full.shape
    assert (rows(part, KEEP) - rows(full, KEEP)).abs().max() <= 1e-5
    flat = part.reshape(1, 16, 4, 2, 6, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, N, 64)
    assert torch.equal(flat[0, DROP], flat[0, DROP[:1]].expand(len(DROP), 64))
    # keeping the reference: the cache holds the dropped image tokens only
    part2 = qwen(qdm, qwen_ctl(qdm), TokenPlan(n_img=N, keep=KEEP, keep_ref=True,
                                               cached=from_seen(seen, DROP)))
    assert (rows(part2, KEEP) - rows(full, KEEP)).abs().max() <= 1e-5
    # a later evaluation without a plan is the plain model again
    assert torch.equal(qwen(qdm, ctl, None), full)


def test_qwen_single_block_model_restores_rows_after_its_only_block():
    qdm1 = tm.tiny_qwen_image(0, layers=1).model.diffusion_model
    seen, rec = recorder()
    full = qwen(qdm1, TokenController(1, "qwen_image"), TokenPlan(n_img=N, record_all=True, record=rec))
    part = qwen(qdm1, TokenController(1, "qwen_image"), TokenPlan(
        n_img=N, keep=KEEP, cached=from_seen(seen, DROP)))
    assert (rows(part, KEEP) - rows(full, KEEP)).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- velocity probe

def test_velocity_probe_keeps_the_raw_output_in_float32(dm):
    probe = VelocityProbe()
    options = probe.install({})
    out = flux(dm, options=options)
    got = probe.take()
    assert torch.equal(got, out) and got.dtype == torch.float32
    # ComfyUI's keyword arguments reach the model (here FLUX.1 Kontext's reference placement)
    with torch.no_grad():
        plain = dm(X, torch.tensor([0.7]), CTX, y=VEC, guidance=torch.tensor([3.5]), ref_latents=[REF],
                   ref_latents_method="uxo")
        wrapped = dm(X, torch.tensor([0.7]), CTX, y=VEC, guidance=torch.tensor([3.5]), ref_latents=[REF],
                     ref_latents_method="uxo", transformer_options=options["transformer_options"])
    assert torch.equal(probe.take(), plain) and not torch.equal(plain, out)
    assert torch.equal(wrapped, plain)
    probe.outputs.append(out.to(torch.bfloat16))
    assert probe.take().dtype == torch.float32 and probe.outputs == []


def test_velocity_probe_refuses_zero_or_several_evaluations():
    probe = VelocityProbe()
    with pytest.raises(RuntimeError, match=r"^expected one model evaluation, saw 0 \(conditioning with several "
                                           r"areas or batches is not supported here\)$"):
        probe.take()
    probe.outputs += [torch.zeros(1), torch.ones(1)]
    with pytest.raises(RuntimeError, match=r"saw 2 "):
        probe.take()
    assert probe.outputs == []  # a failed take leaves no stale output for the next step
    probe.outputs.append(torch.ones(2))
    assert torch.equal(probe.take(), torch.ones(2))
