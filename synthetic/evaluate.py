"""Sample the synthetic models through ComfyUI's own sampling and judge the results.

``generate``: text-to-image with the FLUX model; ``edit_kontext``: the Kontext-style model with
the source as reference latent. Both return uint8 images; ``plain_rates`` gives the models' own
success rates (the judge's verdicts) that every method is compared with.
"""
from __future__ import annotations

import numpy as np
import torch

from . import judge, scenes
from .models import conditioning

SIZE = scenes.FLUX_SIZE        # the text-to-image FLUX model's images (vae16)
KONTEXT_SIZE = scenes.FLUX_SIZE  # the Kontext-style model, retrained at 192 pixels on vae16

# Classifier-free guidance of the FLUX-side models (trained with 10 % of captions/instructions dropped
# for it; the empty caption is the negative). Chosen on held-out seeds, not the benchmark's:
# text-to-image scenes.scenes(3000, 40), objects right 38.6 / 62.7 / 69.9 / 77.1 / 77.1 % at cfg
# 1 / 3 / 4.5 / 6 / 8; Kontext-style scenes.edits(2003, 40), edits done 40.0 / 45.0 / 47.5 / 47.5 % at
# 4.5 / 6 / 8 / 10 (22.5 % at 1 on the benchmark's pairs). 6 for both. The UNets gain nothing above 3.
CFG = 6.0


def render(scene: scenes.Scene, size: int = SIZE) -> np.ndarray:
    """A scene as a FLUX-side model sees it (uint8, ``size`` square)."""
    return scenes.render(scene, size)[0]


def mask(pair: scenes.EditPair, size: int = SIZE) -> np.ndarray:
    """The pair's exact changed mask at ``size``."""
    return pair.mask(size)


def to_image(vae, latent: torch.Tensor) -> np.ndarray:
    img = vae.decode(latent)            # (B, H, W, 3) in 0..1
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def to_latent(vae, images: np.ndarray) -> torch.Tensor:
    return vae.encode(torch.from_numpy(images).float() / 255.0)


def sample(model, positive, negative, latent: torch.Tensor, seed: int, steps: int = 20, cfg: float = 1.0,
           sampler: str = "euler", scheduler: str = "simple", denoise: float = 1.0,
           noise_mask: torch.Tensor | None = None) -> torch.Tensor:
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=denoise, disable_pbar=True, seed=seed, noise_mask=noise_mask)


def empty_latent(n: int = 1, size: int = SIZE) -> torch.Tensor:
    return torch.zeros(n, 16, size // 8, size // 8)


def generate(model, vae, caption: str, seed: int, steps: int = 20, cfg: float = CFG) -> np.ndarray:
    pos, neg = conditioning(caption), conditioning("")
    return to_image(vae, sample(model, pos, neg, empty_latent(), seed, steps, cfg))[0]


def kontext_conditioning(instruction: str, source_latent: torch.Tensor, guidance: float = 2.5):
    return conditioning(instruction, guidance=guidance, reference_latents=[source_latent])


def edit_kontext(model, vae, pair: scenes.EditPair, seed: int, steps: int = 20, cfg: float = CFG,
                 source_image: np.ndarray | None = None) -> np.ndarray:
    src = render(pair.source, KONTEXT_SIZE) if source_image is None else source_image
    src_lat = to_latent(vae, src[None])
    pos = kontext_conditioning(pair.instruction, src_lat)
    neg = kontext_conditioning("", src_lat)
    return to_image(vae, sample(model, pos, neg, empty_latent(size=src.shape[0]), seed, steps, cfg))[0]


def plain_rates(flux_model, kontext_model, vae, n: int = 20, seed: int = 1000, steps: int = 20,
                cfg: float = CFG) -> dict[str, float]:
    """Held-out seeds: fraction of captions rendered right (every object, nothing else) and of
    edits done (per kind and overall)."""
    out = {}
    if flux_model is not None:
        sc = scenes.scenes(seed, n)
        ok, obj = [], []
        for i, s in enumerate(sc):
            img = generate(flux_model, vae, s.caption(), seed + i, steps, cfg)
            ok.append(judge.scene_ok(img, s))
            obj += [judge.object_ok(img, o) for o in s.objects]
        out["t2i_scene"] = float(np.mean(ok))
        out["t2i_object"] = float(np.mean(obj))
    if kontext_model is not None:
        pairs = scenes.edits(seed + 1, n)
        res = [(p.kind, judge.edit_ok(edit_kontext(kontext_model, vae, p, seed + i, steps, cfg), p))
               for i, p in enumerate(pairs)]
        for k in scenes.EDIT_KINDS:
            v = [ok for kind, ok in res if kind == k]
            if v:
                out[f"edit_{k}"] = float(np.mean(v))
        out["edit_all"] = float(np.mean([ok for _, ok in res]))
    return out


def kv_edit(model, vae, pair: scenes.EditPair, seed: int, steps: int = 20, skip: int = 4,
            source_guidance: float = 1.5, target_guidance: float = 3.5, attn_scale: float = 1.0,
            cfg: float = CFG) -> dict:
    """KV-Edit through the pack's own nodes, wired as in a SamplerCustomAdvanced graph: KVInvert
    inverts the source with its caption; KVEditCustomSampler's SAMPLER and SIGMAS denoise the masked
    region under ComfyUI's CFGGuider (target caption, empty negative, ``cfg``: these models were
    trained for classifier-free guidance); KVEditComposite pastes the exact latent background.
    Returns the decoded image, the image with the source pixels pasted outside the mask
    (KVEditPixelPaste), and whether the latent background is bit-exact the source latent.
    ``attn_scale``: the logit bias on background keys (the nodes' default 1.0; on these small
    object masks it pulls the region towards the background: README)."""
    import comfy.sample
    import comfy.samplers

    from precise_edit.nodes.kv_edit.nodes import KVEditComposite, KVEditCustomSampler, KVEditPixelPaste, KVInvert

    src = render(pair.source)
    lat = to_latent(vae, src[None])
    changed = torch.from_numpy(mask(pair)).float()[None]
    rec, _ = KVInvert.execute(model, {"samples": lat}, changed, conditioning(pair.source.caption(), source_guidance),
                              steps, mask_guided=False, storage="fp32", cache_device="cpu").args[:2]
    sampler, sigmas = KVEditCustomSampler.execute(rec, skip, False, attn_scale, "paper").args[:2]
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(conditioning(pair.target.caption(), target_guidance), conditioning("", target_guidance))
    guider.set_cfg(cfg)
    noise = comfy.sample.prepare_noise(lat, seed)   # read only by reinit (off here)
    out = guider.sample(noise, lat.clone(), sampler, sigmas, seed=seed, disable_pbar=True)
    out = KVEditComposite.execute({"samples": out}, rec).args[0]["samples"]
    keep = ~rec.latent_mask[:, None].expand_as(out)
    image = to_image(vae, out)[0]
    pasted = KVEditPixelPaste.execute(torch.from_numpy(src)[None].float() / 255, torch.from_numpy(image)[None].float() / 255,
                                      changed, 0).args[0]
    pasted = (pasted[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return {"image": image, "pasted": pasted, "latent_exact": bool(torch.equal(out[keep], lat[keep]))}


def regenerate(model, vae, pair: scenes.EditPair, seed: int, steps: int = 20, cfg: float = CFG) -> np.ndarray:
    """The baseline KV-Edit must beat: a new image from the target caption."""
    return generate(model, vae, pair.target.caption(), seed, steps, cfg)


EASYCACHE_END = 0.95     # ComfyUI's EasyCache node's default end_percent


def easycache(model, reuse_threshold: float = 0.2, start: float = 0.15, end: float = EASYCACHE_END):
    """ComfyUI's own EasyCache node on ``model`` (a clone; whole steps reused when the output
    changes slowly)."""
    from comfy_extras.nodes_easycache import EasyCacheNode

    return EasyCacheNode.execute(model, reuse_threshold, start, end, False).args[0]


# SpotEdit's tau for the synthetic VAE. The authors' 0.2 is set for the FLUX VAE's decoder features; on
# vae16 the perceptual scores of tokens that a successful edit changes are 0.01-0.05 at the first
# selective step (unchanged tokens: median ~0.015), so 0.2 settles the edit region with the rest
# (precision 0.90, edits done 0-7 % where the plain model does 20-23 %). Calibrated on held-out pairs
# (scenes.edits(2003, 30), 28 steps) with the 128-px model: 0.05 -> precision 0.961, same verdicts as plain
# on 100 %; 0.03 -> 0.984, 100 %; kept 0.03. The 192-px model at 0.03: precision 0.967 and the same 100 %
# there; on the benchmark's pairs (scenes.edits(1003, 30)) 0.963 but 2 of its 8 edits lost (README).
# Rechecked at cfg 6 (2003, 30 pairs, plain 46.7 %): 0.02 / 0.03 / 0.05 -> 40.0 / 40.0 / 36.7 %, precision
# 0.979 / 0.973 / 0.953.
SPOT_TAU = 0.03


def spot_edit(kontext, vae, pair: scenes.EditPair, seed: int, steps: int = 28, tau: float = SPOT_TAU,
              warmup: int = 4, reset: int = 9, patched: bool = True, easycache_threshold: float | None = None,
              dilation: int = 0, cfg: float = CFG, mode: str = "paper", easycache_end: float = EASYCACHE_END) -> dict:
    """The Kontext-style edit with SpotEdit (perceptual judge on the model's VAE, no user mask;
    ``mode``: SpotFusionSampler's "paper" or "authors code") or without (``patched=False``): image, settled token grid of the last selective step, fraction
    of image tokens computed, the diffusion model's forward calls, and sampling seconds. ``easycache_threshold``: ComfyUI's EasyCache
    on top (after SpotEdit's patch), with that reuse threshold, reusing steps up to ``easycache_end`` of the
    sampling (its ``end_percent``; the node's default 0.95)."""
    import time

    from precise_edit.nodes.spot_edit.nodes import SpotFusionSampler, SpotSelector
    from precise_edit.nodes.spot_edit.patch import state_of

    src = render(pair.source, KONTEXT_SIZE)
    src_lat = to_latent(vae, src[None])
    pos, neg = kontext_conditioning(pair.instruction, src_lat), kontext_conditioning("", src_lat)
    model = kontext
    if patched:
        sel = SpotSelector.execute("perceptual", tau, dilation, "union", vae=vae).args[0]
        model = SpotFusionSampler.execute(kontext, sel, warmup, reset, "cos2", mode).args[0]
    spot_model = model
    if easycache_threshold is not None:
        model = easycache(model, easycache_threshold, end=easycache_end)
    calls = []       # forward passes of the diffusion model (EasyCache skips whole ones inside its forward)
    hook = kontext.model.diffusion_model.img_in.register_forward_pre_hook(lambda *_: calls.append(1))
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = sample(model, pos, neg, empty_latent(size=KONTEXT_SIZE), seed, steps, cfg)
    finally:
        hook.remove()
    seconds = time.perf_counter() - t0
    res = {"image": to_image(vae, out)[0], "seconds": seconds, "settled": None, "computed": 1.0,
           "model_calls": len(calls)}
    if patched:
        state = state_of(spot_model)
        fr = state.fractions()
        res["computed"] = sum(f for _, _, f in fr) / max(1, len(fr))
        if state.last.last_settled is not None:
            res["settled"] = state.last.last_settled.numpy().astype(bool)
    return res


def settled_scores(result: dict, pair: scenes.EditPair) -> tuple[float, float] | None:
    """Precision and recall of the tokens a :func:`spot_edit` result settled, against the pair's
    truly unchanged tokens; None when it settled nothing."""
    settled = result["settled"]
    if settled is None or not settled.any():
        return None
    return judge.settled_precision_recall(settled, mask(pair, KONTEXT_SIZE))


def _cell_crop(img: np.ndarray, cell: int) -> np.ndarray:
    x0, y0, x1, y1 = judge.cell_box(cell, img.shape[0])
    return img[y0:y1, x0:x1]


def _box_mask(cells, size: int = SIZE) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    for cell in cells:
        x0, y0, x1, y1 = judge.cell_box(cell, size)
        m[:, y0:y1, x0:x1] = 1.0
    return m


EXEMPLAR_BACKGROUND = ("gray", "noisy", 7)   # add: the object pictured alone, on a background of its own


def pixels_edit(model, vae, pair: scenes.EditPair, seed: int, steps: int = 20, denoise: float = 0.7,
                guidance: float = 3.5, exemplar: bool = True, cfg: float = CFG) -> dict:
    """PIXELS exemplar latent surgery (the pack's ExemplarLatentSurgery) on the FLUX t2i model, for
    an add or a move: change map 1 on the grid cell(s) the edit touches, 0 elsewhere; sampled with
    the target caption. Exemplars: add -- the new object pictured alone (rendered on a background
    of its own, ``EXEMPLAR_BACKGROUND``), placed in its cell; move -- the subject's cell cut from
    the source placed in the new cell, and an empty cell of the source placed in the old one.
    ``exemplar=False``: the same change map with no exemplar (the surgery's plain regeneration),
    the baseline the exemplar must beat. Returns the image and whether the latent outside the
    change map is bit-exact the source's."""
    import nodes as comfy_nodes

    from precise_edit.nodes.pixels.nodes import ExemplarLatentSurgery

    if pair.kind not in ("add", "move"):
        raise ValueError(f"pixels_edit: add or move pairs only, not {pair.kind!r}")
    src = render(pair.source)
    lat = to_latent(vae, src[None])
    cells = [pair.result.cell] + ([pair.subject.cell] if pair.kind == "move" else [])
    change = _box_mask(cells)

    def image(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).float()[None] / 255.0

    kw = {}
    if exemplar:
        if pair.kind == "add":
            colour, kind, bg_seed = EXEMPLAR_BACKGROUND
            alone = render(scenes.Scene((pair.result,), colour, kind, bg_seed))
            kw.update(exemplar_1=image(_cell_crop(alone, pair.result.cell)), region_1=_box_mask([pair.result.cell]))
        else:
            used = {o.cell for o in pair.source.objects} | {pair.result.cell}
            empty_cell = next(c for c in (4, 0, 2, 6, 8, 1, 3, 5, 7) if c not in used)
            kw.update(exemplar_1=image(_cell_crop(src, pair.subject.cell)), region_1=_box_mask([pair.result.cell]),
                      exemplar_2=image(_cell_crop(src, empty_cell)), region_2=_box_mask([pair.subject.cell]))
    patched, start = ExemplarLatentSurgery.execute(model, {"samples": lat}, change, vae=vae, **kw).args[:2]
    pos, neg = conditioning(pair.target.caption(), guidance), conditioning("", guidance)
    out = comfy_nodes.common_ksampler(patched, seed, steps, cfg, "euler", "simple", pos, neg, start,
                                      denoise=denoise)[0]["samples"]
    keep = start["noise_mask"][0, 0] == 0          # the latent cells the change map keeps
    exact = bool(torch.equal(out[..., keep], lat[..., keep]))
    return {"image": to_image(vae, out)[0], "latent_exact": exact, "changed": change[0].numpy() > 0}
