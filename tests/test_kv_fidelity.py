"""KV-Edit fidelity: the model fingerprint, masks changed after inverting, the resize mode kept
in the record, the reinitialisation forms and the inversion-free options (issue 8, items 7-10,
12 and 15)."""

import os
from pathlib import Path

import pytest
import torch

import comfy.patcher_extension as pe
import tiny_models as tm
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.kv_edit import engine as ke
from precise_edit.nodes.kv_edit.nodes import (BackgroundKVCache, KVEditInversionFree, KVEditSampler, KVInvert,
                                              LoadBackgroundKV)

H, W = 64, 96  # latent 8 x 12, FLUX tokens 4 x 6


# ``flux`` (the tiny FLUX.1-dev model) and ``comfy_dirs`` come from conftest.py
pytestmark = pytest.mark.usefixtures("comfy_dirs")


def latent():
    return {"samples": torch.randn(1, 16, H // 8, W // 8, generator=torch.Generator().manual_seed(1))}


def src():
    return tm.stub_conditioning("flux", "a photo of a cat on a sofa", guidance=1.5)


def tgt():
    return tm.stub_conditioning("flux", "a photo of a dog on a sofa", guidance=5.5)


def box(y0, y1, x0, x1):
    m = torch.zeros(1, H, W)
    m[0, y0:y1, x0:x1] = 1
    return m


def invert(model, mask, steps=5, **kw):
    args = dict(mask_guided=False, storage="fp32", cache_device="cpu")
    args.update(kw)
    return KVInvert.execute(model, latent(), mask, src(), steps, **args)


def edit(model, rec, skip=1, **kw):
    args = dict(seed=3, skip_steps=skip, reinit=False, attn_scale=1.0, mode="paper")
    args.update(kw)
    return KVEditSampler.execute(model, rec, tgt(), **args)


def samples(out):
    return out.args[0]["samples"]


# -- fingerprint (items 12 and 15) ---------------------------------------------------------

def lora(seed: int, rank: int = 2):
    """A LoRA on a middle block's attention projection, in the kohya/diffusers key layout."""
    gen = torch.Generator().manual_seed(seed)
    hidden = 128
    name = "diffusion_model.double_blocks.1.img_attn.proj"
    return {f"{name}.lora_up.weight": torch.randn(hidden, rank, generator=gen) * 0.5,
            f"{name}.lora_down.weight": torch.randn(rank, hidden, generator=gen) * 0.5}


def with_lora(model, seed, strength=1.0):
    import comfy.sd

    patched, _ = comfy.sd.load_lora_for_models(model, None, lora(seed), strength, 0.0)
    assert patched.patches, "the LoRA did not apply"
    return patched


def test_fingerprint_sees_a_single_middle_block():
    a, b = tm.tiny_flux(0, depth=3, single=3), tm.tiny_flux(0, depth=3, single=3)
    assert ke.model_fingerprint(a) == ke.model_fingerprint(b)  # same weights, other instance
    with torch.no_grad():
        b.model.diffusion_model.double_blocks[1].img_mlp[0].weight.mul_(1.5)
    assert ke.model_fingerprint(a) != ke.model_fingerprint(b)
    rec = invert(a, box(16, 48, 32, 64), steps=3).args[0]
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: this background record was made for another model"):
        edit(b, rec)


def test_fingerprint_tells_loras_of_the_same_layers_apart(flux):
    la, lb = with_lora(flux, 1), with_lora(flux, 2)
    assert set(la.patches) == set(lb.patches)
    assert ke.model_fingerprint(la) != ke.model_fingerprint(lb)
    assert ke.model_fingerprint(la) == ke.model_fingerprint(with_lora(flux, 1))
    assert ke.model_fingerprint(la) != ke.model_fingerprint(with_lora(flux, 1, strength=0.5))
    rec = invert(la, box(16, 48, 32, 64), steps=3).args[0]
    edit(la, rec)  # its own LoRA is accepted
    with pytest.raises(NodeInputError, match="another model"):
        edit(lb, rec)


def test_fingerprint_tells_merges_apart(flux):
    from comfy_extras.nodes_model_merging import ModelMergeSimple

    m1 = ModelMergeSimple().merge(flux, tm.tiny_flux(1), 0.5)[0]
    m2 = ModelMergeSimple().merge(flux, tm.tiny_flux(2), 0.5)[0]
    assert set(m1.patches) == set(m2.patches) == {f"diffusion_model.{k}" for k in
                                                 flux.model.diffusion_model.state_dict()}
    assert ke.model_fingerprint(m1) != ke.model_fingerprint(m2)
    rec = invert(m1, box(16, 48, 32, 64), steps=3).args[0]
    with pytest.raises(NodeInputError, match="another model"):
        edit(m2, rec)


def test_fingerprint_stable_while_a_lora_is_loaded(flux):
    import comfy.model_management as mm

    la = with_lora(flux, 1)
    before, base = ke.model_fingerprint(la), ke.model_fingerprint(flux)
    mm.load_models_gpu([la])  # writes the LoRA into the shared weights in place
    try:
        assert ke.model_fingerprint(la) == before and ke.model_fingerprint(flux) == base
    finally:
        mm.load_models_gpu([flux])


def test_unreadable_patch_is_refused_not_ignored(flux):
    odd = flux.clone()
    key = next(iter(flux.model.diffusion_model.state_dict()))
    odd.add_patches({f"diffusion_model.{key}": (object(),)}, 1.0)
    with pytest.raises(NodeInputError, match=r"^KVInvert: cannot fingerprint a model patch holding object"):
        invert(odd, box(16, 48, 32, 64), steps=2)


# -- resize mode kept in the record (item 9) ---------------------------------------------

def thin_stroke():
    m = torch.zeros(1, H, W)
    m[0, 20:44, 13] = 1  # one pixel wide, off the latent pixel centres: bilinear misses part of it
    m[0, 32:40, 40:70] = 1
    return m


class _ScalePatch:
    def __init__(self, scale, model=None):
        self.scale, self.model = scale, model

    def __call__(self, args, extra):
        return extra["original_block"](args)

    def bound(self, args, extra):
        return extra["original_block"](args)


def _keep(args, extra, scale=1.0):
    return extra["original_block"](args)


def test_patch_state_tells_strengths_apart_and_never_walks_a_model(flux):
    """What a patch function carries (closure, partial arguments, callable object or bound method's
    attributes, a tensor) changes the computation option's id; a model it holds counts by type."""
    import functools

    from precise_edit.nodes.kv_edit.fingerprint import _callable_id

    def ids(*fs):
        return [_callable_id(f) for f in fs]

    a, b = ids(functools.partial(_keep, scale=1.0), functools.partial(_keep, scale=0.5))
    assert a != b and a == _callable_id(functools.partial(_keep, scale=1.0))
    assert len(set(ids(_ScalePatch(1.0), _ScalePatch(0.5), _ScalePatch(1.0).bound, _ScalePatch(0.5).bound))) == 4
    t = torch.zeros(8)
    before = _callable_id(_ScalePatch(t))
    t[3] = 1.0
    assert _callable_id(_ScalePatch(t)) != before  # tensors by sample
    # a model held by the patch: by type only (never walked; its weights are the fingerprint's own part)
    assert _callable_id(_ScalePatch(1.0, flux)) == _callable_id(_ScalePatch(1.0, flux.clone()))
    assert _callable_id(_ScalePatch(1.0, flux.model)) == _callable_id(_ScalePatch(1.0, flux.model))


def _two_lambdas(blank_lines: int = 0):
    """Two patch functions of one scope (one qualified name), defined ``blank_lines`` lower."""
    src = "\n" * blank_lines + ("def make():\n    return [lambda args, extra: extra['original_block'](args) * 2,\n"
                                 "            lambda args, extra: extra['original_block'](args) * 3]\n")
    scope = {}
    exec(compile(src, "other_pack.py", "exec"), scope)
    return scope["make"]()


def test_patch_functions_of_one_name_count_by_what_they_compute():
    """Two lambdas of one scope share a qualified name and carry nothing: their code tells them apart
    (one constant); the same code on other lines (a pack edited elsewhere) keeps its id, and so does a
    function with a set constant in another process (string hashing varies between processes)."""
    import subprocess
    import sys

    from precise_edit.nodes.kv_edit.fingerprint import _callable_id

    a, b = _two_lambdas()
    c, d = _two_lambdas(blank_lines=7)
    assert a.__qualname__ == b.__qualname__ and a.__code__.co_firstlineno != c.__code__.co_firstlineno
    assert _callable_id(a) != _callable_id(b)
    assert (_callable_id(a), _callable_id(b)) == (_callable_id(c), _callable_id(d))
    code = ("import sys; sys.path.insert(0, 'tests'); import conftest\n"
            "from precise_edit.nodes.kv_edit.fingerprint import _callable_id\n"
            "def f(args, extra):\n    return args if extra.get('k') in {'alpha', 'beta', 'gamma', 'delta'} else None\n"
            "print(_callable_id(f))")
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2", "3")}
    assert len(out) == 1 and "#" in next(iter(out))


def test_patch_code_constants_and_module_numbers_count_whole_and_never_raise():
    """A long constant differing at its end, a module-level strength read by the patch: other
    computations, other ids. A module cache filling up while the process runs is no other
    computation. A huge integer constant (whose repr raises) is hashed, not an error."""
    from precise_edit.nodes.kv_edit.fingerprint import _callable_id

    def made(src, **module):
        scope = dict(module)
        exec(compile(src, "other_pack.py", "exec"), scope)
        return scope["patch"], scope

    tail = "def patch(args, extra):\n    return extra['original_block'](args) * ({}1.0)[len(extra)] * K\n"
    one, _ = made(tail.format("0.0, " * 60), K=1.0)
    two, _ = made(tail.format("0.0, " * 60).replace("1.0)", "2.0)"), K=1.0)
    stronger, _ = made(tail.format("0.0, " * 60), K=2.0)
    assert len({_callable_id(one), _callable_id(two), _callable_id(stronger)}) == 3
    keyed = [made("def patch(args, extra):\n    return extra.get('" + "k" * 300 + end + "', args)\n")[0]
             for end in "ab"]
    assert _callable_id(keyed[0]) != _callable_id(keyed[1])   # a long string differing at its end
    cached, scope = made("CACHE = {}\ndef patch(args, extra):\n    CACHE[len(CACHE)] = 1\n    return args\n")
    before = _callable_id(cached)
    scope["CACHE"].update({i: i for i in range(5)})
    assert _callable_id(cached) == before
    huge, _ = made("def patch(args, extra):\n    return args * 0x" + "f" * 4000 + "\n")
    assert "#" in _callable_id(huge)


def test_bilinear_record_accepts_its_own_mask_and_keeps_the_mode(flux, tmp_path):
    mask = thin_stroke()
    from precise_edit.kernels.token_mask import latent_pixel_mask

    assert not torch.equal(latent_pixel_mask(mask, (8, 12), "bilinear"), latent_pixel_mask(mask, (8, 12), "touched"))
    rec = invert(flux, mask, mask_resize="bilinear").args[0]
    plain = edit(flux, rec)
    checked = edit(flux, rec, mask=mask)
    assert torch.equal(samples(checked), samples(plain)) and not checked.ui  # its own mask, no other region
    BackgroundKVCache.execute(rec, "keep", "cpu", True, "bil")
    saved = next((tmp_path / "output" / "kv_cache").glob("bil_*"))
    (tmp_path / "input" / saved.name).write_bytes(saved.read_bytes())
    loaded = LoadBackgroundKV.execute(saved.name, "keep", "cpu").args[0]
    assert loaded.info["mask_resize"] == "bilinear"
    assert torch.equal(samples(edit(flux, loaded, mask=mask)), samples(plain))


# -- masks changed after inverting (item 7) ------------------------------------------------

def test_grown_mask_from_the_same_record_equals_a_fresh_inversion(flux):
    small, grown = box(16, 40, 32, 56), box(8, 48, 24, 72)
    rec = invert(flux, small).args[0]
    out = edit(flux, rec, mask=grown)
    fresh = edit(flux, invert(flux, grown).args[0])
    assert torch.equal(samples(out), samples(fresh))
    assert "edited with the given mask" in out.ui["text"][0]
    assert not torch.equal(samples(out), samples(edit(flux, rec)))
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: .*another mask \(its background holds tokens"):
        edit(flux, rec, mask=box(0, 16, 0, 16))  # keeps part of the recorded foreground: not served
    guided = invert(flux, small, mask_guided=True).args[0]
    with pytest.raises(NodeInputError, match="mask_guided inversion"):
        edit(flux, guided, mask=grown)


def test_every_token_record_serves_any_mask(flux):
    first = box(16, 40, 32, 56)
    out = invert(flux, first, record_tokens="every image token")
    rec = out.args[0]
    assert rec.all_tokens and rec.kv_shape[2] == rec.total_tokens == 24
    assert "costs" in out.ui["text"][0] and "any mask can be painted" in out.ui["text"][0]
    for mask in (first, box(0, 24, 0, 40), box(40, 64, 60, 96), torch.ones(1, H, W)):
        fresh = edit(flux, invert(flux, mask).args[0])
        assert torch.equal(samples(edit(flux, rec, mask=mask)), samples(fresh))
    with pytest.raises(NodeInputError, match=r"^KVInvert: mask_guided inversion depends on the mask"):
        invert(flux, first, mask_guided=True, record_tokens="every image token")


def test_every_token_record_survives_save_and_load(flux, tmp_path):
    rec = invert(flux, box(16, 40, 32, 56), record_tokens="every image token", storage="bf16").args[0]
    BackgroundKVCache.execute(rec, "keep", "cpu", True, "all")
    saved = next((tmp_path / "output" / "kv_cache").glob("all_*"))
    (tmp_path / "input" / saved.name).write_bytes(saved.read_bytes())
    loaded = LoadBackgroundKV.execute(saved.name, "keep", "cpu").args[0]
    assert loaded.all_tokens
    other = box(0, 24, 0, 40)
    assert torch.equal(samples(edit(flux, loaded, mask=other)), samples(edit(flux, rec, mask=other)))


# -- reinitialisation forms (item 10) -------------------------------------------------------

def first_input(model, rec, reinit_from, mode, skip=2, seed=5):
    seen = []
    probe = model.clone()

    def wrap(executor, *args, **kwargs):
        seen.append(args[0].cpu().clone())  # compared with the CPU record, also when run on a GPU
        return executor(*args, **kwargs)

    probe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_probe", wrap)
    edit(probe, rec, skip=skip, reinit=True, seed=seed, mode=mode, reinit_from=reinit_from)
    return seen[0]


@pytest.mark.parametrize("mode", ["paper", "authors code"])
def test_reinit_forms(flux, mode):
    rec = invert(flux, box(16, 48, 32, 64), steps=6).args[0]
    skip, seed = 2, 5
    noise = torch.randn(rec.source_latent.shape, generator=torch.Generator().manual_seed(seed))
    s = float(rec.sigmas[skip])
    m = rec.latent_mask[:, None].expand_as(noise)
    for form, base in (("inverted latent (paper)", rec.trajectory[skip]),
                       ("clean latent (authors' code)", rec.trajectory[-1])):
        x = first_input(flux, rec, form, mode, skip, seed)
        want = s * noise + (1 - s) * base
        assert (x[m] - want[m]).abs().max() < 1e-5, form


# -- inversion-free options (item 8) --------------------------------------------------------

def test_inversion_free_mask_guided_and_mask_resize(flux):
    lat = latent()

    def run(mask, **kw):
        out = KVEditInversionFree.execute(flux, lat, mask, src(), tgt(), 5, 1, 0, 0.0, "fp32", **kw)
        return out.args[0]["samples"]

    mask = box(16, 48, 32, 64)
    plain, guided = run(mask), run(mask, mask_guided=True)
    assert not torch.equal(plain, guided)
    from precise_edit.kernels.token_mask import latent_pixel_mask

    for mode in ("touched", "bilinear"):
        out = run(thin_stroke(), mask_resize=mode)
        keep = ~latent_pixel_mask(thin_stroke(), (8, 12), mode)[:, None].expand_as(out)
        assert torch.equal(out[keep], lat["samples"][keep])  # exactly that mode's background kept
        assert not torch.equal(out[~keep], lat["samples"][~keep])
