"""KV-Edit on ComfyUI's own FLUX (tiny random weights): nodes, exactness, files, bad input."""

import pytest
import torch

import comfy.model_management

import tiny_models as tm
from precise_edit.kernels.token_mask import build_token_masks
from precise_edit.nodes.kv_edit import engine as ke
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.flux_tokens import TokenController, TokenPlan
from precise_edit.nodes.kv_edit.nodes import (BackgroundKVCache, KVEditComposite, KVEditCustomSampler,
                                         KVEditInversionFree, KVEditPixelPaste, KVEditSampler, KVInvert,
                                         LoadBackgroundKV)

H, W = 64, 96  # pixels -> latent 8 x 12 -> 4 x 6 FLUX tokens


# ``flux`` (the tiny FLUX.1-dev model) and ``comfy_dirs`` come from conftest.py
pytestmark = pytest.mark.usefixtures("comfy_dirs")


def source_latent(seed=1):
    return {"samples": torch.randn(1, 16, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))}


def src_cond():
    return tm.stub_conditioning("flux", "a photo of a cat on a sofa", guidance=1.5)


def tgt_cond():
    return tm.stub_conditioning("flux", "a photo of a dog on a sofa", guidance=5.5)


def invert(model, latent, mask, steps=6, **kw):
    args = dict(mask_guided=False, storage="fp32", cache_device="cpu")
    args.update(kw)
    out = KVInvert.execute(model, latent, mask, src_cond(), steps, **args)
    return out.args[0], out.args[1], out.ui


def edit(model, rec, skip=2, **kw):
    args = dict(seed=0, skip_steps=skip, reinit=False, attn_scale=1.0, mode="paper")
    args.update(kw)
    return KVEditSampler.execute(model, rec, tgt_cond(), **args).args[0]["samples"]


def pixel_mask(kind):
    m = torch.zeros(1, H, W)
    if kind == "single_token":
        m[0, 20, 40] = 1.0
    elif kind == "borders":
        m[0, 0, :] = 1
        m[0, :, -1] = 1
    elif kind == "corner":
        m[0, -5:, :7] = 1
    elif kind == "irregular":
        yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        m[0] = (((yy - 30) ** 2 / 300 + (xx - 50) ** 2 / 90) < 1).float()
        m[0, 5:9, 70:90] = 1
    return m


def background(x, rec):
    return x[~rec.latent_mask[:, None].expand_as(x)]


@pytest.mark.parametrize("kind", ["single_token", "borders", "corner", "irregular"])
def test_background_is_bit_exact(flux, kind):
    latent = source_latent()
    rec, inverted, ui = invert(flux, latent, pixel_mask(kind))
    assert torch.isfinite(inverted["samples"]).all()
    assert "background keys/values" in ui["text"][0]
    out = edit(flux, rec)
    assert out.shape == latent["samples"].shape
    assert torch.equal(background(out, rec), background(latent["samples"], rec))
    fg = rec.latent_mask[:, None].expand_as(out)
    assert not torch.equal(out[fg], latent["samples"][fg])  # the edit did change the foreground
    if kind == "single_token":
        assert int(rec.token_mask.sum()) == 1 and rec.background_tokens == 23


def test_record_holds_background_tokens_only(flux):
    rec, _, _ = invert(flux, source_latent(), pixel_mask("irregular"), steps=3, storage="bf16")
    n_bg = rec.background_tokens
    geo = ke.flux_geometry(flux)
    assert rec.kv_shape == (1, geo["heads"], n_bg, geo["head_dim"])
    assert len(rec.store.entries) == 3 * len(geo["blocks"])
    assert rec.store.nbytes() == 3 * len(geo["blocks"]) * 2 * n_bg * geo["hidden"] * 2


def test_partial_forward_equals_full_forward_on_computed_tokens(flux):
    """Recording at (x, s) and replaying the same (x, s) on the foreground only reproduces
    the full model's output there: the cached keys/values stand in for the dropped tokens."""
    latent = source_latent()["samples"]
    masks = build_token_masks(pixel_mask("irregular"), latent.shape[-2:], 2)
    flat = masks.flat[0]
    from precise_edit.kernels.kv_store import KVStore

    store = KVStore(storage="fp32")
    outs = {}

    def loop(model_wrap, sig, extra_args, callback, noise, x):
        ctl = TokenController(len(model_wrap.inner_model.diffusion_model.single_blocks), "flux")
        ctl.install(extra_args["model_options"])
        t = sig[0] * x.new_ones(1)
        ctl.plan = TokenPlan(n_img=flat.numel(), record_idx=(~flat).nonzero().flatten(),
                             record=lambda b, k, v: store.put(0, b, k, v))
        outs["full"] = model_wrap(x, t, **extra_args)
        ctl.plan = TokenPlan(n_img=flat.numel(), keep=flat.nonzero().flatten(),
                             cached=lambda b, d, dt: store.get(0, b, d, dt))
        outs["part"] = model_wrap(x, t, **extra_args)
        ctl.plan = None
        outs["plain"] = model_wrap(x, t, **extra_args)
        return x

    guider = ke._guider(flux, tgt_cond())
    guider.sample(torch.zeros_like(latent), latent, ke.LoopSampler(loop), torch.tensor([0.7, 0.0]))
    fg = build_token_masks(pixel_mask("irregular"), latent.shape[-2:], 2)
    region = fg.tokens.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None].expand_as(latent)
    assert torch.equal(outs["full"], outs["plain"])  # recording does not change the model
    assert (outs["part"][region] - outs["full"][region]).abs().max() <= 1e-5


def test_inversion_then_source_prompt_reconstructs(flux):
    latent = source_latent()
    mask = pixel_mask("irregular")
    errs = {}
    for steps in (7, 28):
        rec, _, _ = invert(flux, latent, mask, steps=steps)
        out = KVEditSampler.execute(flux, rec, src_cond(), seed=0, skip_steps=0, reinit=False, attn_scale=0.0,
                                    mode="paper").args[0]["samples"]
        fg = rec.latent_mask[:, None].expand_as(out)
        errs[steps] = (out[fg] - latent["samples"][fg]).pow(2).mean().sqrt().item()
    scale = latent["samples"].std().item()
    assert errs[28] < 0.03 * scale  # first-order Euler inversion error, bounded
    assert errs[28] < errs[7] / 2.5  # and shrinking like 1/steps


def test_saved_and_loaded_record_gives_identical_edits(flux, tmp_path):
    import folder_paths

    for storage in ("fp32", "fp8"):
        rec, _, _ = invert(flux, source_latent(), pixel_mask("irregular"), storage=storage)
        out = BackgroundKVCache.execute(rec, "keep", "cpu", True, f"test_{storage}")
        saved = list((tmp_path / "output" / "kv_cache").glob(f"test_{storage}_*.bgkv.safetensors"))
        assert len(saved) == 1 and "saved kv_cache/" in out.ui["text"][0]
        (tmp_path / "input" / saved[0].name).write_bytes(saved[0].read_bytes())
        names = LoadBackgroundKV.define_schema().inputs[0].options
        assert saved[0].name in names
        loaded = LoadBackgroundKV.execute(saved[0].name, "keep", "cpu").args[0]
        for skip in (1, 3):
            assert torch.equal(edit(flux, rec, skip=skip), edit(flux, loaded, skip=skip))
    assert folder_paths.get_output_directory() == str(tmp_path / "output")


def test_storage_conversion_keeps_edit_close(flux):
    rec, _, _ = invert(flux, source_latent(), pixel_mask("irregular"), storage="fp32")
    ref = edit(flux, rec)
    for storage, tol in (("bf16", 0.02), ("fp8", 0.1)):
        small = BackgroundKVCache.execute(rec, storage, "cpu", False, "x").args[0]
        assert small.store.storage == storage and rec.store.storage == "fp32"
        out = edit(flux, small)
        assert torch.equal(background(out, rec), background(ref, rec))
        assert (out - ref).abs().max() < tol


def test_mask_guided_inversion_isolates_the_background_record(flux):
    mask = pixel_mask("irregular")
    a = source_latent(1)
    b = {"samples": a["samples"].clone()}
    masks = build_token_masks(mask, a["samples"].shape[-2:], 2)
    fg_tokens = masks.tokens.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None].expand_as(b["samples"])
    b["samples"][fg_tokens] = torch.randn(int(fg_tokens.sum()))  # other content in the edit region only

    def record_diff(guided):
        ra, _, _ = invert(flux, a, mask, steps=4, mask_guided=guided)
        rb, _, _ = invert(flux, b, mask, steps=4, mask_guided=guided)
        diffs = {key: (ra.store.get(*key, "cpu", torch.float32)[0] - rb.store.get(*key, "cpu", torch.float32)[0])
                 .abs().max().item() for key in ra.store.entries}
        return diffs

    guided, plain = record_diff(True), record_diff(False)
    first = 3  # the first evaluation (interval N-1) sees the clean source
    # With the mask, background tokens never attend to foreground ones: the first two blocks'
    # record is untouched by the foreground (later blocks see it only through the text stream).
    assert guided[(first, ("double", 0))] == 0 and guided[(first, ("double", 1))] == 0
    assert plain[(first, ("double", 1))] > 0
    assert sum(guided.values()) < 0.5 * sum(plain.values())


def test_inversion_free_memory_independent_of_steps(flux):
    peaks = {}
    latent, mask = source_latent(), pixel_mask("irregular")
    for steps in (4, 12):
        out = KVEditInversionFree.execute(flux, latent, mask, src_cond(), tgt_cond(), steps, 1, 0, 1.0, "fp32")
        x = out.args[0]["samples"]
        m = build_token_masks(mask, x.shape[-2:], 2).latent[:, None].expand_as(x)
        assert torch.equal(x[~m], latent["samples"][~m]) and not torch.equal(x[m], latent["samples"][m])
        peaks[steps] = float(out.ui["text"][0].split()[3].replace(",", ""))
    assert peaks[4] == peaks[12] > 0


def test_kontext_reference_tokens(flux):
    ref = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(5))
    src = tm.stub_conditioning("flux", "a cat", guidance=1.5, reference_latents=[ref])
    tgt = tm.stub_conditioning("flux", "a dog", guidance=2.5, reference_latents=[ref])
    latent, mask = source_latent(), pixel_mask("irregular")
    rec = KVInvert.execute(flux, latent, mask, src, 5, False, "fp32", "cpu").args[0]
    out = KVEditSampler.execute(flux, rec, tgt, 0, 1, False, 1.0, "paper").args[0]["samples"]
    assert torch.equal(background(out, rec), background(latent["samples"], rec))
    no_ref = KVEditSampler.execute(flux, rec, tm.stub_conditioning("flux", "a dog", guidance=2.5), 0, 1, False,
                                   1.0, "paper").args[0]["samples"]
    assert not torch.equal(out, no_ref)  # the reference tokens take part in the edit


def test_authors_mode_differs_but_keeps_background(flux):
    latent = source_latent()
    rec, _, _ = invert(flux, latent, pixel_mask("irregular"))
    a, b = edit(flux, rec, mode="paper"), edit(flux, rec, mode="authors code")
    assert not torch.equal(a, b)
    assert torch.equal(background(b, rec), background(latent["samples"], rec))


def test_reinit_uses_the_seed(flux):
    rec, _, _ = invert(flux, source_latent(), pixel_mask("irregular"))
    a, b, c = (edit(flux, rec, reinit=True, seed=s) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, edit(flux, rec, reinit=False))


def test_standard_sampler_path_matches_kv_edit_sampler(flux):
    from comfy_extras.nodes_custom_sampler import BasicGuider, DisableNoise, SamplerCustomAdvanced

    latent = source_latent()
    rec, _, _ = invert(flux, latent, pixel_mask("irregular"))
    sampler, sigmas = KVEditCustomSampler.execute(rec, 2, False, 1.0, "paper").args
    guider = BasicGuider.execute(flux, tgt_cond()).args[0]
    noise = DisableNoise.execute().args[0]
    out = SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, {"samples": latent["samples"].clone()})
    final = KVEditComposite.execute(out.args[0], rec).args[0]["samples"]
    assert torch.equal(final, edit(flux, rec, skip=2))


def test_custom_sampler_refuses_another_model(flux):
    from comfy_extras.nodes_custom_sampler import BasicGuider, DisableNoise, SamplerCustomAdvanced

    latent = source_latent()
    rec, _, _ = invert(flux, latent, pixel_mask("irregular"))
    sampler, sigmas = KVEditCustomSampler.execute(rec, 2, False, 1.0, "paper").args
    guider = BasicGuider.execute(tm.tiny_flux(3), tgt_cond()).args[0]
    with pytest.raises(NodeInputError, match=r"^KVEditCustomSampler: the guider's model or latent differ.*model"):
        SamplerCustomAdvanced.execute(DisableNoise.execute().args[0], guider, sampler, sigmas,
                                      {"samples": latent["samples"].clone()})


def test_full_mask_is_plain_generation(flux):
    latent = source_latent()
    rec, _, ui = invert(flux, latent, torch.ones(1, H, W), steps=4)
    assert rec.background_tokens == 0 and rec.store.nbytes() == 0
    assert "plain generation" in ui["text"][0]
    out = edit(flux, rec, skip=1)
    assert torch.isfinite(out).all() and not torch.equal(out, latent["samples"])


def test_pixel_paste_keeps_source_pixels_outside_the_mask():
    src, edt = torch.rand(1, 40, 40, 3), torch.rand(1, 40, 40, 3)
    mask = torch.zeros(1, 40, 40)
    mask[0, 10:30, 10:30] = 1
    out = KVEditPixelPaste.execute(src, edt, mask, 4).args[0]
    assert torch.equal(out[0][mask[0] == 0], src[0][mask[0] == 0])
    assert torch.equal(out[0, 18:22, 18:22], edt[0, 18:22, 18:22])  # deep inside: the edit itself
    # the blend weight ramps up from the mask border inwards
    w = [((out[0, r, 20] - src[0, r, 20]) / (edt[0, r, 20] - src[0, r, 20])).mean().item() for r in range(10, 16)]
    assert w[0] < 0.25 and all(a < b for a, b in zip(w[:4], w[1:5])) and w[-1] == pytest.approx(1.0)


# -- bad input ----------------------------------------------------------------------------

def test_record_for_another_model_latent_or_mask(flux):
    latent, mask = source_latent(), pixel_mask("irregular")
    rec, _, _ = invert(flux, latent, mask)
    other = tm.tiny_flux(7)
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: .*another model"):
        edit(other, rec)
    with pytest.raises(NodeInputError, match="latent size"):
        edit(flux, rec, latent={"samples": torch.zeros(1, 16, 8, 8)})
    with pytest.raises(NodeInputError, match="another mask"):
        edit(flux, rec, mask=pixel_mask("corner"))
    with pytest.raises(NodeInputError, match="skip_steps must be between 0 and 5"):
        edit(flux, rec, skip=6)
    # LoRA-like patches change the fingerprint too
    patched = flux.clone()
    key = next(iter(flux.model.diffusion_model.state_dict()))
    patched.add_patches({f"diffusion_model.{key}": (torch.zeros_like(flux.model.diffusion_model.state_dict()[key]),)},
                        0.5)
    with pytest.raises(NodeInputError, match="another model"):
        edit(patched, rec)


def test_record_from_step_shrinks_the_record(flux):
    import comfy.patcher_extension as pe

    latent, mask = source_latent(), pixel_mask("irregular")
    full, full_inv, _ = invert(flux, latent, mask, steps=6)
    calls = []
    counted = flux.clone()  # counts the inversion's model evaluations
    counted.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "count",
                                 lambda executor, *a, **k: calls.append(1) or executor(*a, **k))
    part, part_inv, _ = invert(counted, latent, mask, steps=6, record_from_step=2)
    assert part.store.steps() == [2, 3, 4, 5] and part.store.nbytes() * 6 == full.store.nbytes() * 4
    # the steps below record_from_step are not run (no edit reads them), as in the authors' inversion
    assert len(calls) == 4
    assert torch.equal(part.trajectory[2:], full.trajectory[2:])
    want = flux.model.latent_format.process_out(full.trajectory[2].clone())
    if comfy.model_management.get_torch_device().type == "cpu":
        assert torch.equal(part_inv["samples"], want)
    else:  # on a GPU the inverted latent is scaled there, rounding differently from this CPU copy
        assert torch.allclose(part_inv["samples"], want, rtol=0, atol=1e-6)
    assert not torch.equal(part_inv["samples"], full_inv["samples"])
    assert torch.equal(edit(flux, part, skip=2), edit(flux, full, skip=2))
    with pytest.raises(NodeInputError, match=r"record starts at step 2 .* use skip_steps >= 2"):
        edit(flux, part, skip=1)


def test_fingerprint_is_stable_while_patches_are_applied(flux):
    """ComfyUI writes LoRA deltas into the weights while a model is loaded; the record's
    model fingerprint must not depend on that."""
    sd = flux.model.diffusion_model.state_dict()
    keys = list(sd)
    patched = flux.clone()
    patched.add_patches({f"diffusion_model.{k}": (torch.ones_like(sd[k]) * 0.01,) for k in (keys[0], keys[-1])}, 1.0)
    before = ke.model_fingerprint(patched)
    assert before != ke.model_fingerprint(flux)
    import comfy.model_management as mm

    mm.load_models_gpu([patched])  # applies the patches to the weights in place
    assert ke.model_fingerprint(patched) == before
    mm.load_models_gpu([flux])  # and this restores them
    assert ke.model_fingerprint(patched) == before


def test_record_for_another_step_count(flux):
    rec, _, _ = invert(flux, source_latent(), pixel_mask("irregular"), steps=6)
    assert "step count (8 here, 6 in the record)" in rec.mismatches(steps=8)[0]
    sig = ke.default_sigmas(flux, 8)
    with pytest.raises(NodeInputError, match="step count"):
        KVEditSampler.execute(flux, rec, tgt_cond(), 0, 2, False, 1.0, "paper", sigmas=sig)


def test_empty_mask_batch_and_family_errors(flux):
    with pytest.raises(NodeInputError, match=r"^KVInvert: the mask selects no pixel"):
        invert(flux, source_latent(), torch.zeros(1, H, W))
    two = {"samples": torch.randn(2, 16, 8, 12)}
    with pytest.raises(NodeInputError, match=r"^KVInvert: the latent holds 2 images"):
        invert(flux, two, pixel_mask("irregular"))
    qwen = tm.tiny_qwen_image(0)
    with pytest.raises(NodeInputError, match=r"^KVInvert: this model \(QwenImage\) is not supported. "
                                             r"Supported model families: FLUX.1"):
        invert(qwen, source_latent(), pixel_mask("irregular"))
    with pytest.raises(NodeInputError, match=r"^LoadBackgroundKV: no record named"):
        LoadBackgroundKV.execute("nope.bgkv.safetensors", "keep", "cpu")


def test_loading_a_broken_file_names_the_node(tmp_path):
    (tmp_path / "input" / "bad.bgkv.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(NodeInputError, match=r"^LoadBackgroundKV: cannot read bad.bgkv.safetensors"):
        LoadBackgroundKV.execute("bad.bgkv.safetensors", "keep", "cpu")


def test_cancel_stops_inversion_cleanly(flux):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            invert(flux, source_latent(), pixel_mask("irregular"))
    finally:
        mm.interrupt_current_processing(False)
    rec, _, _ = invert(flux, source_latent(), pixel_mask("irregular"), steps=3)  # next run is unaffected
    assert len(rec.store.entries) == 3 * len(rec.blocks)


@pytest.mark.parametrize("sigmas_of", ["split", "another schedule"])
def test_custom_sampler_refuses_sigmas_it_would_ignore(flux, sigmas_of):
    """The edit follows the record's schedule from skip_steps and starts from the record's
    trajectory: SplitSigmas' half or another scheduler's sigmas used to give the full edit silently."""
    from comfy_extras.nodes_custom_sampler import (BasicGuider, BasicScheduler, DisableNoise,
                                                   SamplerCustomAdvanced, SplitSigmas)

    latent = source_latent()
    rec, _, _ = invert(flux, latent, pixel_mask("irregular"))
    sampler, sigmas = KVEditCustomSampler.execute(rec, 2, False, 1.0, "paper").args
    if sigmas_of == "split":
        sigmas = SplitSigmas.execute(sigmas, 2).args[0]
    else:
        sigmas = BasicScheduler.execute(flux, "simple", 20, 0.3).args[0]
    guider = BasicGuider.execute(flux, tgt_cond()).args[0]
    with pytest.raises(NodeInputError, match=r"^KVEditCustomSampler: connect this node's own sigmas output"):
        SamplerCustomAdvanced.execute(DisableNoise.execute().args[0], guider, sampler, sigmas,
                                      {"samples": latent["samples"].clone()})
