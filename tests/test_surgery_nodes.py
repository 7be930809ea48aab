"""ExemplarLatentSurgery and EditStrengthMap on real (tiny) ComfyUI models, sampled by
ComfyUI's own KSampler path (``nodes.common_ksampler``) and ``comfy.sample.sample``."""
import comfy.patcher_extension as pe
import comfy.sample
import nodes as comfy_nodes
import pytest
import torch

import tiny_models as tm
from comfy_extras.nodes_differential_diffusion import DifferentialDiffusion
from precise_edit.kernels import surgery as K
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.pixels.nodes import EditStrengthMap, ExemplarLatentSurgery, strength_map
from precise_edit.nodes.pixels.patch import WRAPPER_KEY, SurgerySchedule, surgery

FAMILIES = ["sd15", "sdxl", "flux_dev", "qwen_image"]  # UNet (SD1.5, SDXL) and DiT (FLUX, Qwen-Image)
LH, LW = 8, 12            # latent grid of a 96x64 image
IH, IW = LH * 8, LW * 8


@pytest.fixture(autouse=True)
def _temp_dir(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path))


_MODELS = {}


def model_of(name):
    if name not in _MODELS:
        _MODELS[name] = tm.FIXTURES[name].model()
    return _MODELS[name]


def cond_of(name, text="a photo"):
    return tm.stub_conditioning(tm.FIXTURES[name].family, text)


def source_of(name, seed=1, batch=1):
    gen = torch.Generator().manual_seed(seed)
    ch = 4 if name in ("sd15", "sdxl") else 16
    shape = (batch, ch, 1, LH, LW) if name == "qwen_image" else (batch, ch, LH, LW)
    return torch.randn(shape, generator=gen)


def ksample(model, name, latent, seed=7, steps=4, denoise=1.0, sampler="euler"):
    """What the KSampler node runs."""
    c = cond_of(name)
    return comfy_nodes.common_ksampler(model, seed, steps, 1.0, sampler, "normal", c, c, latent,
                                       denoise=denoise)[0]["samples"]


def grid_mask(C_latent):
    """Latent-grid change values as a pixel-size MASK (each latent pixel an 8x8 block)."""
    return C_latent.repeat_interleave(8, -2).repeat_interleave(8, -1)


def keep_mask(C, S):
    """Bool shaped like S: where the latent-grid change map C [B, h, w] is 0."""
    k = (C == 0).view(C.shape[0], 1, *([1] * (S.ndim - 4)), *C.shape[-2:])
    return k.expand_as(S)


# ------------------------------------------------------------------------- exact promises

@pytest.mark.parametrize("name", FAMILIES)
def test_change_zero_returns_source_exactly(name):
    S = source_of(name)
    ex = {"samples": torch.randn(1, S.shape[1], 4, 4) * 3}
    model, latent, _ = surgery(model_of(name), {"samples": S}, torch.zeros(1, IH, IW), [(ex, None, "fit")])
    assert torch.equal(latent["samples"], S)
    out = ksample(model, name, latent, denoise=0.7)
    assert torch.equal(out, S)


@pytest.mark.parametrize("name", FAMILIES)
def test_change_one_without_exemplar_equals_plain_sampling(name, caplog):
    S = source_of(name)
    model, latent, notes = surgery(model_of(name), {"samples": S}, torch.ones(1, IH, IW), [(None, None, "fit")])
    assert any("plain differential regeneration" in n for n in notes)
    a = ksample(model, name, latent, denoise=0.8)
    b = ksample(model_of(name), name, {"samples": S}, denoise=0.8)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", FAMILIES)
def test_kept_pixels_exact_and_changed_pixels_change(name):
    S = source_of(name)
    C = torch.zeros(1, LH, LW)
    C[:, 2:6, 3:9] = 1.0
    C[:, :, :2] = 0.5
    model, latent, _ = surgery(model_of(name), {"samples": S}, grid_mask(C), [(None, None, "fit")])
    out = ksample(model, name, latent, denoise=0.8)
    keep = keep_mask(C, S)
    assert torch.equal(out[keep], S[keep])
    assert not torch.allclose(out[~keep], S[~keep])
    # Without the final paste ComfyUI's latent scaling round trip is not exact (why it exists).
    plain = ksample(model_of(name), name, latent, denoise=0.8)
    assert torch.allclose(plain[keep], S[keep], atol=1e-4)


CURVES = [("linear", {}), ("power", {"power": 3.0}), ("sigmoid", {"steepness": 6.0}),
          ("sigmoid", {"steepness": 12.0})]  # not the default: the steepness must reach the schedule


@pytest.mark.parametrize("curve,params", CURVES, ids=["linear", "power", "sigmoid", "sigmoid12"])
def test_pinning_follows_schedule_step_by_step(curve, params):
    """Instrument the sampler: at every step the model sees ``noised(S, s_i)`` and the
    sampler's denoised estimate is exactly the source on the pixels with ``1 - C > t_i``
    (``t_i = i/N`` for the linear curve, the chosen curve otherwise), and the model's own
    result on the others."""
    name, N = "sd15", 8
    gen = torch.Generator().manual_seed(3)
    levels = torch.tensor([0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0])
    C = levels[torch.randint(len(levels), (1, LH, LW), generator=gen)]
    C[0, 0, :len(levels)] = levels[:LW]
    S = source_of(name)
    ex = {"samples": torch.randn(1, 4, LH, LW, generator=gen) * 2}
    model, latent, _ = surgery(model_of(name), {"samples": S}, grid_mask(C), [(ex, None, "stretch")],
                               curve=curve, **params)
    expected = [K.pinned(C, i, N, curve, **params) for i in range(N)]
    if curve != "linear":  # the map's levels tell the curves apart
        assert any(not torch.equal(e, K.pinned(C, i, N)) for i, e in enumerate(expected))
    if params.get("steepness", 6.0) != 6.0:  # ... and this steepness from the default one
        assert any(not torch.equal(e, K.pinned(C, i, N, curve)) for i, e in enumerate(expected))

    inputs = []

    def record(apply_model, args):
        inputs.append((args["timestep"].cpu().clone(), args["input"].cpu().clone()))  # CPU, also on a GPU
        return apply_model(args["input"], args["timestep"], **args["c"])

    instrumented = model.clone()
    instrumented.set_model_unet_function_wrapper(record)
    denoised = []
    noise = torch.randn(S.shape, generator=gen)
    ms = model.model.model_sampling
    comfy.sample.sample(instrumented, noise, N, 1.0, "euler", "normal", cond_of(name), cond_of(name),
                        latent["samples"], noise_mask=latent["noise_mask"], seed=0, disable_pbar=True,
                        callback=lambda i, x0, x, total: denoised.append((i, x0.cpu().clone())))
    assert len(inputs) == N and [i for i, _ in denoised] == list(range(N))
    S_in = model.model.process_latent_in(latent["samples"])
    for i, ((sigma, x_in), (_, x0)) in enumerate(zip(inputs, denoised)):
        pin = expected[i].unsqueeze(1).expand_as(S)
        noised = ms.noise_scaling(sigma.reshape(-1, 1, 1, 1), noise, S_in)
        assert torch.equal(x_in[pin], noised[pin]), f"step {i}: pinned input is not noised(S, s_i)"
        assert torch.equal(x0[pin], S_in[pin]), f"step {i}: pinned pixels are not the source"
        free = ~pin
        assert not torch.isclose(x0[free], S_in[free]).any(), f"step {i}: a free pixel was pinned"
        # exemplar pixels (C = 1) start from the exemplar, not the source
        if i == 0:
            full = (C == 1).unsqueeze(1).expand_as(S)
            E_in = model.model.process_latent_in(ex["samples"])
            assert torch.equal(latent["samples"][full], ex["samples"][full])
            start = ms.noise_scaling(sigma.reshape(-1, 1, 1, 1), noise.clone(), E_in, max_denoise=True)
            assert torch.allclose(x_in[full], start[full])


def test_second_order_sampler_keeps_exactness():
    name = "sd15"
    S = source_of(name)
    C = torch.zeros(1, LH, LW)
    C[:, 3:, 4:] = torch.linspace(0.2, 1.0, LW - 4)
    model, latent, _ = surgery(model_of(name), {"samples": S}, grid_mask(C), [(None, None, "fit")])
    out = ksample(model, name, latent, steps=3, sampler="heun")
    keep = keep_mask(C, S)
    assert torch.equal(out[keep], S[keep]) and not torch.allclose(out[~keep], S[~keep])


# ------------------------------------------------------------------------------ exemplars

def test_several_exemplars_land_in_their_regions():
    name = "sd15"
    S = source_of(name)
    r1 = torch.zeros(1, IH, IW)
    r1[:, 8:40, 8:40] = 1.0        # latent rows 1..4, cols 1..4
    r2 = torch.zeros(1, IH, IW)
    r2[:, 24:56, 56:88] = 1.0      # latent rows 3..6, cols 7..10
    e1 = {"samples": torch.full((1, 4, 4, 4), 5.0)}
    e2 = {"samples": torch.full((1, 4, 2, 2), -5.0)}
    C = torch.clamp(r1 + r2, 0, 1)
    model, latent, notes = surgery(model_of(name), {"samples": S}, C,
                                   [(e1, r1, "stretch"), (e2, r2, "stretch"), (None, None, "fit")])
    L = latent["samples"]
    reg1 = torch.zeros(LH, LW, dtype=torch.bool)
    reg1[1:5, 1:5] = True
    reg2 = torch.zeros(LH, LW, dtype=torch.bool)
    reg2[3:7, 7:11] = True
    assert torch.equal(L[0][:, reg1], torch.full((4, 16), 5.0))
    assert torch.equal(L[0][:, reg2], torch.full((4, 16), -5.0))
    rest = ~(reg1 | reg2)
    assert torch.equal(L[0][:, rest], S[0][:, rest])
    assert torch.equal(latent["noise_mask"][0, 0], (reg1 | reg2).float())
    out = ksample(model, name, latent, denoise=0.5)
    assert torch.equal(out[0][:, rest], S[0][:, rest])
    # Low denoise: each region still leans to its own exemplar.
    assert float(out[0][:, reg1].mean()) > float(out[0][:, reg2].mean())


def test_exemplar_lands_only_where_change_is_one():
    name = "sd15"
    S = source_of(name)
    r = torch.zeros(1, IH, IW)
    r[:, :, :48] = 1.0
    C = torch.zeros(1, LH, LW)
    C[:, :, :3] = 1.0
    C[:, :, 3:6] = 0.5
    model, latent, notes = surgery(model_of(name), {"samples": S}, grid_mask(C),
                                   [({"samples": torch.full((1, 4, 8, 6), 9.0)}, r, "stretch")])
    L = latent["samples"]
    assert torch.equal(L[..., :3], torch.full_like(L[..., :3], 9.0))
    assert torch.equal(L[..., 3:], S[..., 3:])
    _, _, notes2 = surgery(model_of(name), {"samples": S}, grid_mask(C * 0.9),
                           [({"samples": torch.ones(1, 4, 8, 6)}, r, "fit")])
    assert any("exemplar_1 has no effect" in n for n in notes2)


@pytest.mark.parametrize("mode", K.PLACEMENTS)
def test_image_exemplar_is_encoded_and_placed(mode):
    name = "sd15"
    vae = tm.FIXTURES[name].vae()
    S = source_of(name)
    img = torch.rand(1, 40, 80, 3)            # 1:2 exemplar, another size than its region
    r = torch.zeros(1, IH, IW)
    r[:, 16:48, 32:64] = 1.0                  # a 4x4 latent box at rows 2..5, cols 4..7
    model, latent, _ = surgery(model_of(name), {"samples": S}, r, [(img, r, mode)], vae=vae)
    p = K.placement((40, 80), (4, 4), mode)
    expect = vae.encode(K.arrange(img.movedim(-1, 1), p, unit=8).movedim(1, -1).contiguous())
    y0, x0 = 2 + p.offset[0], 4 + p.offset[1]
    L = latent["samples"]
    got = L[..., y0:y0 + p.paste[0], x0:x0 + p.paste[1]]
    assert torch.equal(got, expect.float())
    placed = torch.zeros(LH, LW, dtype=torch.bool)
    placed[y0:y0 + p.paste[0], x0:x0 + p.paste[1]] = True
    assert torch.equal(L[0][:, ~placed], S[0][:, ~placed])
    if mode == "fit":
        assert p.paste == (2, 4)              # aspect kept, letterboxed: source above and below


def test_image_exemplar_on_qwen_5d():
    name = "qwen_image"
    vae = tm.FIXTURES[name].vae()
    S = source_of(name)
    r = torch.zeros(1, IH, IW)
    r[:, 16:48, 16:80] = 1.0
    model, latent, _ = surgery(model_of(name), {"samples": S}, r, [(torch.rand(1, 32, 64, 3), r, "fill")],
                               vae=vae)
    assert latent["samples"].shape == S.shape and latent["noise_mask"].shape == (1, 1, 1, LH, LW)
    out = ksample(model, name, latent, denoise=0.6)
    keep = keep_mask(K.resize_map(r, (LH, LW)), S)
    assert torch.equal(out[keep], S[keep])


def test_dit_fixture_with_exemplar_flux():
    name = "flux_dev"
    S = source_of(name)
    r = torch.zeros(1, IH, IW)
    r[:, 0:32, 0:48] = 1.0
    ex = {"samples": torch.randn(1, 16, 6, 6)}
    model, latent, _ = surgery(model_of(name), {"samples": S}, r, [(ex, r, "fill")])
    out = ksample(model, name, latent, denoise=0.6)
    keep = keep_mask(K.resize_map(r, (LH, LW)), S)
    assert torch.equal(out[keep], S[keep]) and not torch.allclose(out[~keep], S[~keep])


# ------------------------------------------------------------------------ progressive edits

def test_progressive_chain_keeps_unchanged_regions_bit_exact():
    name = "sdxl"
    S = source_of(name)
    C1 = torch.zeros(1, LH, LW)
    C1[:, 1:4, 1:5] = 1.0
    C2 = torch.zeros(1, LH, LW)
    C2[:, 4:7, 6:11] = 1.0
    C2[:, 4:7, 5] = 0.5
    e1 = {"samples": torch.full((1, 4, 3, 4), 2.0)}
    e2 = {"samples": torch.full((1, 4, 3, 5), -2.0)}
    m1, l1, _ = surgery(model_of(name), {"samples": S}, grid_mask(C1), [(e1, grid_mask(C1), "stretch")])
    out1 = comfy_nodes.common_ksampler(m1, 1, 4, 1.0, "euler", "normal", cond_of(name), cond_of(name), l1,
                                       denoise=0.6)[0]
    # The second surgery takes the first's output latent and its patched model (no double patch).
    m2, l2, _ = surgery(m1, out1, grid_mask(C2), [(e2, grid_mask(C2), "stretch")])
    assert len(m2.wrappers[pe.WrappersMP.OUTER_SAMPLE][WRAPPER_KEY]) == 1
    out2 = ksample(m2, name, l2, denoise=0.6)
    untouched = keep_mask(torch.maximum(C1, C2), S)
    assert torch.equal(out2[untouched], S[untouched])
    first_only = keep_mask(C2, S) & ~keep_mask(C1, S)
    assert torch.equal(out2[first_only], out1["samples"][first_only])
    assert not torch.allclose(out2[~keep_mask(C2, S)], out1["samples"][~keep_mask(C2, S)])


# -------------------------------------------------------------- DifferentialDiffusion interplay

def _dd(model):
    return DifferentialDiffusion.execute(model).args[0]


def test_differential_diffusion_is_superseded_not_doubled():
    """DifferentialDiffusion before or after the surgery: the surgery schedule runs once per
    step, so the result equals the surgery alone; DifferentialDiffusion's own threshold
    would give another result."""
    name = "sd15"
    S = source_of(name)
    gen = torch.Generator().manual_seed(5)
    C = torch.rand(1, LH, LW, generator=gen)
    C[:, :2] = 0.0
    base = model_of(name)
    model, latent, _ = surgery(base, {"samples": S}, grid_mask(C), [(None, None, "fit")])
    ref = ksample(model, name, latent, steps=10)

    after = _dd(model)                                  # DD after the surgery
    assert not isinstance(after.model_options["denoise_mask_function"], SurgerySchedule)
    assert torch.equal(ksample(after, name, latent, steps=10), ref)

    before, latent_b, notes = surgery(_dd(base), {"samples": S}, grid_mask(C), [(None, None, "fit")])
    assert any("DifferentialDiffusion" in n for n in notes)
    assert isinstance(before.model_options["denoise_mask_function"], SurgerySchedule)
    assert torch.equal(ksample(before, name, latent_b, steps=10), ref)

    dd_only = ksample(_dd(base), name, latent, steps=10)  # DD's schedule, no surgery patch
    assert not torch.equal(dd_only, ref)
    # The schedule function is called once per model call, never stacked.
    calls = []
    sched = model.model_options["denoise_mask_function"]

    def counting(sigma, mask, extra_options):
        calls.append(float(sigma[0]))
        return sched(sigma, mask, extra_options)

    counted = _dd(model)
    counted.set_model_denoise_mask_function(counting)  # stands in for a foreign function
    ksample(counted, name, latent, steps=10)
    assert calls == []                                  # replaced for the run, not chained


# -------------------------------------------------------------------------------- bad input

def test_change_map_other_size_and_out_of_range_values_are_noted(caplog):
    name = "sd15"
    S = source_of(name)
    C = torch.full((1, 32, 48), 2.0)
    C[:, :, :24] = -1.0
    _, latent, notes = surgery(model_of(name), {"samples": S}, C, [(None, None, "fit")])
    assert any("outside [0, 1]" in n for n in notes)
    assert any("change_map is 48x32 but the source image is 96x64; it is resized" in n for n in notes)
    m = latent["noise_mask"][0, 0]
    assert m.shape == (LH, LW) and float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    assert torch.equal(m[:, :6], torch.zeros(LH, 6)) and torch.equal(m[:, 6:], torch.ones(LH, 6))
    assert "clamped" in caplog.text


def test_latent_size_change_map_is_accepted_without_note():
    S = source_of("sd15")
    _, latent, notes = surgery(model_of("sd15"), {"samples": S}, torch.zeros(LH, LW), [])
    assert notes == [] and torch.equal(latent["noise_mask"], torch.zeros(1, 1, LH, LW))


def test_region_outside_image_is_an_error():
    S = source_of("sd15")
    with pytest.raises(NodeInputError, match="ExemplarLatentSurgery: region_1 selects no pixel"):
        surgery(model_of("sd15"), {"samples": S}, torch.ones(1, IH, IW),
                [({"samples": torch.zeros(1, 4, 2, 2)}, torch.zeros(1, IH, IW), "fit")])


def test_other_bad_inputs():
    S = source_of("sd15")
    m = model_of("sd15")
    with pytest.raises(NodeInputError, match="connect the model's VAE"):
        surgery(m, {"samples": S}, torch.ones(1, IH, IW), [(torch.rand(1, 16, 16, 3), None, "fit")])
    with pytest.raises(NodeInputError, match="latent channels"):
        surgery(m, {"samples": S}, torch.ones(1, IH, IW), [({"samples": torch.zeros(1, 16, 2, 2)}, None, "fit")])
    with pytest.raises(NodeInputError, match="5-D"):
        surgery(model_of("qwen_image"), {"samples": torch.zeros(1, 16, LH, LW)}, torch.ones(1, IH, IW), [])
    with pytest.raises(NodeInputError, match="batch"):
        surgery(m, {"samples": source_of("sd15", batch=3)}, torch.ones(2, IH, IW), [])
    _, _, notes = surgery(m, {"samples": S}, torch.ones(1, IH, IW), [(None, torch.ones(1, IH, IW), "fit")])
    assert any("region_1 is given without exemplar_1" in n for n in notes)


def test_region_of_other_size_is_resized_and_noted():
    S = source_of("sd15")
    r = torch.zeros(1, 16, 24)
    r[:, 4:8, 6:12] = 1.0                      # quarter size: latent rows 2..3, cols 3..5
    _, latent, notes = surgery(model_of("sd15"), {"samples": S}, torch.ones(1, IH, IW),
                               [({"samples": torch.full((1, 4, 2, 3), 3.0)}, r, "stretch")])
    assert any("region_1 is 24x16" in n for n in notes)
    assert torch.equal(latent["samples"][..., 2:4, 3:6], torch.full((1, 4, 2, 3), 3.0))


# --------------------------------------------------------------------------- node surfaces

def test_node_execute_outputs_and_text():
    S = source_of("sd15")
    out = ExemplarLatentSurgery.execute(model_of("sd15"), {"samples": S, "batch_index": [0]},
                                        torch.zeros(1, IH, IW), exemplar_1={"samples": torch.zeros(1, 4, 2, 2)})
    model, latent = out.args
    assert latent["batch_index"] == [0] and "noise_mask" in latent
    assert "kept (0) 100.0%" in out.ui["text"][0]
    assert model is not model_of("sd15")
    assert "denoise_mask_function" not in model_of("sd15").model_options  # the input is untouched


def test_node_rejects_unsupported_model():
    class Fake:
        model = object()

    with pytest.raises(NodeInputError, match="not supported"):
        surgery(Fake(), {"samples": torch.zeros(1, 4, 2, 2)}, torch.zeros(1, 16, 16), [])


def test_edit_strength_map_node():
    mask = torch.zeros(1, 32, 48)
    mask[:, 8:24, 8:40] = 1.0
    out = EditStrengthMap.execute(feather=2, mask=mask, gradient="linear", angle=0.0, start=0.0, end=1.0,
                                  combine="min")
    m, preview = out.args
    assert m.shape == (1, 32, 48) and preview.shape == (1, 32, 48, 3)
    assert float(m[0, 0, 0]) == 0.0 and float(m[0, 16, 30]) > float(m[0, 16, 15]) > 0.0
    assert torch.equal(preview[..., 0], m)
    rad, _ = strength_map(64, 32, 0, "radial", 0, 0, 1, 0.5, 0.5, 0.1, 0.4, "max", 1.0, False)
    assert rad.shape == (1, 32, 64) and float(rad[0, 16, 32]) == 1.0
    inv, _ = strength_map(64, 32, 0, "radial", 0, 0, 1, 0.5, 0.5, 0.1, 0.4, "max", 0.5, True)
    assert torch.allclose(inv, 1 - 0.5 * rad)
    both, notes = strength_map(8, 8, 0, "none", 0, 0, 1, 0.5, 0.5, 0.1, 0.4, "multiply", 1.0, False,
                               mask=mask * 3, combine_with=torch.full((1, 16, 24), 0.5))
    assert any("clamped" in n for n in notes) and any("resized" in n for n in notes)
    assert torch.equal(both, mask * 0.5)
    with pytest.raises(NodeInputError, match="EditStrengthMap: nothing to build"):
        strength_map(8, 8, 0, "none", 0, 0, 1, 0.5, 0.5, 0.1, 0.4, "max", 1.0, False)


def test_strength_map_feeds_surgery_with_exact_interior():
    """A feathered region keeps exactly 1 inside, so the exemplar lands there."""
    r = torch.zeros(1, IH, IW)
    r[:, 8:56, 16:80] = 1.0
    C, _ = strength_map(IW, IH, 4, "none", 0, 0, 1, 0.5, 0.5, 0.1, 0.4, "max", 1.0, False, mask=r)
    _, latent, notes = surgery(model_of("sd15"), {"samples": source_of("sd15")}, C,
                               [({"samples": torch.full((1, 4, 6, 8), 4.0)}, r, "stretch")])
    assert not any("no effect" in n for n in notes)
    nm = latent["noise_mask"][0, 0]
    # Outward feather (the node's default): the whole region stays 1, a ramp outside it.
    out = EditStrengthMap.execute(feather=4, mask=r)
    grown = out.args[0]
    assert torch.equal(grown[r > 0], torch.ones(int((r > 0).sum())))
    assert 0.0 < float(grown[0, 4, 40]) < 1.0 and float(grown[0, 30, 2]) == 0.0
    assert torch.equal(nm[2:5, 3:9], torch.ones(3, 6))
    assert torch.equal(latent["samples"][0][:, nm == 1], torch.full((4, int((nm == 1).sum())), 4.0))


# ------------------------------------------------------------- pinning curves, refusals

def test_pinning_curve_survives_differential_diffusion_after_and_chaining():
    """The sampling wrapper puts back *this* surgery's curve (not the linear default) when
    DifferentialDiffusion is set after it, and a chained surgery's own curve replaces it."""
    name = "sd15"
    S = source_of(name)
    gen = torch.Generator().manual_seed(11)
    C = torch.rand(1, LH, LW, generator=gen)
    base = model_of(name)
    power, latent, _ = surgery(base, {"samples": S}, grid_mask(C), [], curve="power", power=3.0)
    linear, _, _ = surgery(base, {"samples": S}, grid_mask(C), [])
    ref = ksample(power, name, latent, steps=10)
    assert not torch.equal(ref, ksample(linear, name, latent, steps=10))
    assert torch.equal(ksample(_dd(power), name, latent, steps=10), ref)
    rechained, _, _ = surgery(power, {"samples": S}, grid_mask(C), [])   # linear on top of power
    assert torch.equal(ksample(rechained, name, latent, steps=10), ksample(linear, name, latent, steps=10))


def test_non_finite_source_and_exemplars_are_refused():
    m = model_of("sd15")
    S = source_of("sd15")
    bad = S.clone()
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(NodeInputError, match=r"ExemplarLatentSurgery: the source latent holds 1 NaN"):
        surgery(m, {"samples": bad}, torch.ones(1, IH, IW), [])
    ex = torch.zeros(1, 4, 2, 2)
    ex[0, 0, 0, 0] = float("inf")
    with pytest.raises(NodeInputError, match=r"ExemplarLatentSurgery: exemplar_2 \(a LATENT\) holds 1 NaN or inf"):
        surgery(m, {"samples": S}, torch.ones(1, IH, IW), [(None, None, "fit"), ({"samples": ex}, None, "fit")])
    img = torch.rand(1, 16, 16, 3)
    img[0, 0, 0, 0] = float("nan")
    with pytest.raises(NodeInputError, match=r"exemplar_1 \(an IMAGE\) holds 1 NaN"):
        surgery(m, {"samples": S}, torch.ones(1, IH, IW), [(img, None, "fit")], vae=object())


class _NanVAE:
    def encode(self, pixels):
        return torch.full((pixels.shape[0], 4, pixels.shape[1] // 8, pixels.shape[2] // 8), float("nan"))


def test_exemplar_encoding_to_nan_is_refused():
    with pytest.raises(NodeInputError, match="exemplar_1 encoded with the VAE holds"):
        surgery(model_of("sd15"), {"samples": source_of("sd15")}, torch.ones(1, IH, IW),
                [(torch.rand(1, 16, 16, 3), None, "fit")], vae=_NanVAE())


def test_unknown_combo_values_are_refused():
    """ComfyUI 0.3.75 does not check V3 combo values sent through the API."""
    m = model_of("sd15")
    S = {"samples": source_of("sd15")}
    with pytest.raises(NodeInputError, match="ExemplarLatentSurgery: pinning curve must be one of linear, power, "
                                             "sigmoid, got 'cubic'"):
        ExemplarLatentSurgery.execute(m, S, torch.ones(1, IH, IW), pinning_curve="cubic")
    with pytest.raises(NodeInputError, match="ExemplarLatentSurgery: placement_3 must be one of fit, fill, stretch, "
                                             "not 'tile'"):
        ExemplarLatentSurgery.execute(m, S, torch.ones(1, IH, IW), placement_3="tile")   # no exemplar connected
    with pytest.raises(NodeInputError, match="exponent"):
        ExemplarLatentSurgery.execute(m, S, torch.ones(1, IH, IW), pinning_curve="power", curve_power=float("nan"))
    for kw, name in [({"feather_edge": "inside"}, "feather_edge"), ({"gradient": "conic"}, "gradient"),
                     ({"combine": "avg"}, "combine")]:
        with pytest.raises(NodeInputError, match=f"EditStrengthMap: {name} must be one of"):
            EditStrengthMap.execute(gradient=kw.pop("gradient", "linear"), **kw)


def test_node_text_names_the_pinning_curve():
    out = ExemplarLatentSurgery.execute(model_of("sd15"), {"samples": source_of("sd15")}, torch.ones(1, IH, IW),
                                        pinning_curve="sigmoid", curve_steepness=6.0)
    assert "held while 1 - change > t = sigmoid(6 (i/N - 0.5))" in out.ui["text"][0]


def test_authors_denoising_start_equivalent_stated_in_docs():
    """docs/pixels.md: the authors' ``num_inference_steps=100, denoising_start=0.6`` (diffusers
    Euler, leading spacing, offset 1: timesteps 991..1, kept while < 400) is KSampler steps 40,
    denoise 0.4, scheduler ddim_uniform: the same 40 sigmas."""
    import comfy.samplers

    ms = model_of("sdxl").model.model_sampling
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # SDXL's scaled_linear
    acp = torch.cumprod(1 - betas, 0)
    ts = (torch.arange(100) * 10 + 1).flip(0)
    kept = ts[ts < round(1000 - 0.6 * 1000)]
    theirs = ((1 - acp[kept]) / acp[kept]) ** 0.5
    steps, denoise = 40, 0.4
    ours = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", int(steps / denoise))[-(steps + 1):]
    assert len(kept) == steps and ours.numel() == steps + 1 and float(ours[-1]) == 0.0
    assert torch.allclose(ours[:-1].double(), theirs, rtol=1e-6)
