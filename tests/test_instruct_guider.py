"""InstructGuider on real (tiny) ComfyUI models: equal to DualCFGGuider / CFGGuider for constant
scales, each schedule followed step by step, dynamic negative guidance, instruction-strength
mode, and its input checks."""
from __future__ import annotations

import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_custom_sampler import Guider_DualCFG

import tiny_models as tm
from precise_edit.kernels import guidance as G
from precise_edit.kernels import detail as DT
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.instruct.nodes import InstructGuider, instruct_guider

LH, LW = 8, 8
_MODELS = {}


def model_of(name):
    if name not in _MODELS:
        _MODELS[name] = tm.FIXTURES[name].model()
    return _MODELS[name]


def latent_of(name, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ch = 4 if name in ("sd15", "sdxl") else 16
    shape = (1, ch, 1, LH, LW) if name == "qwen_image" else (1, ch, LH, LW)
    return torch.randn(shape, generator=gen)


def conds_of(name):
    """positive (instruction + image), image_only, negative (neither): as the editing models take them."""
    fam = tm.FIXTURES[name].family
    if name in ("flux_kontext", "qwen_image"):
        ref = {"reference_latents": [latent_of(name, seed=5)]}
        return (tm.stub_conditioning(fam, "make the bench red", **ref), tm.stub_conditioning(fam, "", **ref),
                tm.stub_conditioning(fam, "blurry"))
    return (tm.stub_conditioning(fam, "make the bench red"), tm.stub_conditioning(fam, "a photo"),
            tm.stub_conditioning(fam, ""))


def run(guider, name, steps=4, seed=7, callback=None, sampler="euler"):
    model = guider.model_patcher
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    lat = latent_of(name)
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(seed))
    return guider.sample(noise, lat, comfy.samplers.sampler_object(sampler), sigmas, callback=callback,
                         disable_pbar=True, seed=seed)


def guider_of(name, t, m, image_only=True, **kw):
    pos, mid, neg = conds_of(name)
    g, _ = instruct_guider(model_of(name), pos, neg, mid if image_only else None, kw.pop("negative_instruction", None),
                           text_scale=t, text_scale_end=kw.pop("text_scale_end", t), image_scale=m,
                           image_scale_end=kw.pop("image_scale_end", m), **kw)
    return g


def dual_of(name, t, m):
    pos, mid, neg = conds_of(name)
    d = Guider_DualCFG(model_of(name))
    d.set_conds(pos, mid, neg)
    d.set_cfg(t, m, nested=False)  # cfg_conds = text, cfg_cond2_negative = image
    return d


@pytest.mark.parametrize("name", ["sd15", "flux_kontext", "qwen_image"])
@pytest.mark.parametrize("t, m", [(7.5, 1.5), (1.0, 1.5), (3.0, 1.0), (1.0, 1.0)])
def test_equals_dual_cfg_guider_for_constant_scales(name, t, m):
    a = run(guider_of(name, t, m), name)
    b = run(dual_of(name, t, m), name)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())


@pytest.mark.parametrize("name", ["flux_kontext", "qwen_image"])
def test_true_cfg_without_image_only_equals_cfg_guider(name):
    pos, _, neg = conds_of(name)
    ref = comfy.samplers.CFGGuider(model_of(name))
    ref.set_conds(pos, neg)
    ref.set_cfg(3.5)
    a = run(guider_of(name, 3.5, 1.5, image_only=False), name)
    b = run(ref, name)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


class _StepwiseDual(Guider_DualCFG):
    """Reference: ComfyUI's DualCFGGuider whose two scales the test sets before every step."""


@pytest.mark.parametrize("name", ["sd15", "flux_kontext"])
@pytest.mark.parametrize("kind", ["linear", "cosine", "list"])
def test_each_schedule_is_followed_exactly(name, kind):
    steps = 5
    text = {"linear": [8.0, 7.0, 6.0, 5.0, 4.0], "list": [6.0, 2.0, 9.0, 1.0, 3.0],
            "cosine": [4.0 + 4.0 * (1 + __import__("math").cos(__import__("math").pi * i / 4)) / 2
                       for i in range(5)]}[kind]
    image = {"linear": [1.0, 1.25, 1.5, 1.75, 2.0], "list": [1.5, 1.0, 2.5, 1.2, 1.0],
             "cosine": [2.0 + (1.0 - 2.0) * (1 + __import__("math").cos(__import__("math").pi * i / 4)) / 2
                        for i in range(5)]}[kind]
    if kind == "list":
        g = guider_of(name, 0.0, 0.0, text_schedule="list", text_values=", ".join(map(str, text)),
                      image_schedule="list", image_values=" ".join(map(str, image)))
    else:
        g = guider_of(name, 8.0 if kind == "linear" else 8.0, 1.0, text_schedule=kind, text_scale_end=4.0,
                      image_schedule=kind, image_scale_end=2.0)
    a = run(g, name, steps=steps)
    assert [u[0] for u in g.used] == list(range(steps))
    assert [u[1] for u in g.used] == pytest.approx(text, abs=1e-12)
    assert [u[2] for u in g.used] == pytest.approx(image, abs=1e-12)
    ref = dual_of(name, text[0], image[0])

    def set_next(i, *_):
        if i + 1 < steps:
            ref.set_cfg(text[i + 1], image[i + 1])
    b = run(ref, name, steps=steps, callback=set_next)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())


def test_wrong_schedule_length_is_a_clear_error():
    g = guider_of("sd15", 0.0, 1.5, text_schedule="list", text_values="7, 6, 5")
    with pytest.raises(NodeInputError, match="text_schedule.*3 value.*4 step"):
        run(g, "sd15", steps=4)
    with pytest.raises(NodeInputError, match="text_values is empty"):
        guider_of("sd15", 0.0, 1.5, text_schedule="list", text_values="")
    with pytest.raises(NodeInputError, match="image_values: 'x'"):
        guider_of("sd15", 1.0, 0.0, image_schedule="list", image_values="1, x")


def test_combo_values_are_checked():
    with pytest.raises(NodeInputError, match="InstructGuider: text_schedule must be one of"):
        guider_of("sd15", 1.0, 1.0, text_schedule="zigzag")
    with pytest.raises(NodeInputError, match="text_scale_mode must be one of"):
        guider_of("sd15", 1.0, 1.0, text_scale_mode="auto")


def test_text_scale_from_instruction_follows_detail():
    pos, mid, neg = conds_of("sd15")
    scales = []
    for text in ("add a dog", "add a brown dog", "add a brown dog with a red collar in the bottom right corner"):
        g, notes = instruct_guider(model_of("sd15"), pos, neg, mid, None, text_scale_mode="from instruction",
                                   instruction=text, text_scale_min=4.0, text_scale_max=12.0)
        scales.append(g.plan.text.start)
        want = G.scale_from_strength(DT.detail_strength(DT.detail(text)), 4.0, 12.0)
        assert g.plan.text.start == pytest.approx(want) and "text scale" in notes[0]
    assert scales == sorted(scales) and scales[0] < scales[-1] and 4.0 <= scales[0] and scales[-1] <= 12.0
    with pytest.raises(NodeInputError, match="needs the instruction text"):
        instruct_guider(model_of("sd15"), pos, neg, mid, None, text_scale_mode="from instruction", instruction="")


@pytest.mark.parametrize("name", ["sd15", "flux_kontext"])
def test_dynamic_negative_guidance_changes_the_result_through_the_posterior(name):
    pos, mid, neg = conds_of(name)
    neg_instr = tm.stub_conditioning(tm.FIXTURES[name].family, "do not change the face",
                                     **({"reference_latents": [latent_of(name, seed=5)]}
                                        if name == "flux_kontext" else {}))
    plain = run(guider_of(name, 5.0, 1.5), name, sampler="euler_ancestral")
    off = guider_of(name, 5.0, 1.5, negative_instruction=neg_instr, negative_scale=0.0)
    assert torch.allclose(run(off, name, sampler="euler_ancestral"), plain, atol=1e-5)
    g = guider_of(name, 5.0, 1.5, negative_instruction=neg_instr, negative_scale=4.0, dng_prior=0.3,
                  dng_temperature=0.5)
    out = run(g, name, sampler="euler_ancestral")
    assert not torch.allclose(out, plain, atol=1e-4)
    lams = [u[3] for u in g.used]
    assert lams[0] == pytest.approx(4.0 * 0.3 / 0.7)  # the prior at the first step
    assert len(set(round(v, 9) for v in lams)) > 1      # then the posterior moves it
    assert g.dng_state.history[0] == pytest.approx(0.3)


def test_negative_instruction_from_another_text_encoder_is_refused():
    pos, mid, neg = conds_of("sd15")
    other = [[torch.randn(1, 77, 32), {}]]
    with pytest.raises(NodeInputError, match="cannot take negative_instruction"):
        instruct_guider(model_of("sd15"), pos, neg, mid, other)


def test_node_outputs_a_guider():
    pos, mid, neg = conds_of("sd15")
    out = InstructGuider.execute(model_of("sd15"), pos, neg, image_only=mid)
    assert isinstance(out.result[0], comfy.samplers.CFGGuider)


def test_conditions_are_batched_into_one_model_call_per_step():
    import comfy.patcher_extension as pe

    calls = []

    def count(executor, *args, **kwargs):
        calls.append(int(args[0].shape[0]))  # batch rows of this model evaluation
        return executor(*args, **kwargs)

    model = model_of("sd15").clone()
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.count", count)
    pos, mid, neg = conds_of("sd15")
    neg_instr = tm.stub_conditioning("sd15", "blurry")
    g, _ = instruct_guider(model, pos, neg, mid, neg_instr, text_scale=5.0, image_scale=1.5)
    run(g, "sd15", steps=3)
    assert calls == [4, 4, 4]  # positive, image-only, negative and the negative instruction together


@pytest.mark.parametrize("values", ["nan 7 7 7", "inf 7 7 7", "-50 7 7 7"])
def test_values_lists_hold_scales(values):
    """A NaN in text_values gave an all-NaN latent with no message; a negative value was accepted too."""
    with pytest.raises(NodeInputError, match="text_values: '.*' in the values list is not a scale"):
        guider_of("sd15", 0.0, 1.5, text_schedule="list", text_values=values)


def test_from_instruction_with_a_list_schedule_is_refused():
    """The list's values were used and the note claimed the instruction's scale."""
    pos, mid, neg = conds_of("sd15")
    with pytest.raises(NodeInputError, match="'from instruction' sets the text scale, but text_schedule 'list'"):
        instruct_guider(model_of("sd15"), pos, neg, mid, None, text_scale_mode="from instruction",
                        instruction="add a brown dog", text_schedule="list", text_values="2 2 2 2")


def test_adding_a_move_to_an_instruction_never_lowers_its_detail():
    a = DT.detail("add a tree on the left at the top")
    b = DT.detail("add a tree on the left at the top and move it")
    assert b.relations >= a.relations and b.count >= a.count
