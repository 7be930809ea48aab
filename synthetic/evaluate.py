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


def to_image(vae, latent: torch.Tensor) -> np.ndarray:
    img = vae.decode(latent)            # (B, H, W, 3) in 0..1
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def to_latent(vae, images: np.ndarray) -> torch.Tensor:
    return vae.encode(torch.from_numpy(images).float() / 255.0)


def sample(model, positive, negative, latent: torch.Tensor, seed: int, steps: int = 20, cfg: float = 1.0,
           sampler: str = "euler", scheduler: str = "simple", denoise: float = 1.0) -> torch.Tensor:
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=denoise, disable_pbar=True, seed=seed)


def empty_latent(n: int = 1) -> torch.Tensor:
    return torch.zeros(n, 16, scenes.SIZE // 8, scenes.SIZE // 8)


def generate(model, vae, caption: str, seed: int, steps: int = 20, cfg: float = 1.0) -> np.ndarray:
    pos, neg = conditioning(caption), conditioning("")
    return to_image(vae, sample(model, pos, neg, empty_latent(), seed, steps, cfg))[0]


def kontext_conditioning(instruction: str, source_latent: torch.Tensor, guidance: float = 2.5):
    return conditioning(instruction, guidance=guidance, reference_latents=[source_latent])


def edit_kontext(model, vae, pair: scenes.EditPair, seed: int, steps: int = 20, cfg: float = 1.0,
                 source_image: np.ndarray | None = None) -> np.ndarray:
    src = scenes.render(pair.source)[0] if source_image is None else source_image
    src_lat = to_latent(vae, src[None])
    pos = kontext_conditioning(pair.instruction, src_lat)
    neg = kontext_conditioning("", src_lat)
    return to_image(vae, sample(model, pos, neg, empty_latent(), seed, steps, cfg))[0]


def plain_rates(flux_model, kontext_model, vae, n: int = 20, seed: int = 1000, steps: int = 20,
                cfg: float = 1.0) -> dict[str, float]:
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
            source_guidance: float = 1.5, target_guidance: float = 3.5) -> dict:
    """KV-Edit through the pack's own nodes: invert the source with its caption, regenerate the
    masked region with the target caption. Returns the decoded image, the image with the source
    pixels pasted outside the mask (KVEditPixelPaste), and whether the latent background is
    bit-exact the source latent."""
    from precise_edit.nodes.kv_edit.nodes import KVEditPixelPaste, KVEditSampler, KVInvert

    src = scenes.render(pair.source)[0]
    lat = to_latent(vae, src[None])
    mask = torch.from_numpy(pair.mask()).float()[None]
    rec, _ = KVInvert.execute(model, {"samples": lat}, mask, conditioning(pair.source.caption(), source_guidance),
                              steps, mask_guided=False, storage="fp32", cache_device="cpu").args[:2]
    out = KVEditSampler.execute(model, rec, conditioning(pair.target.caption(), target_guidance), seed=seed,
                                skip_steps=skip, reinit=False, attn_scale=1.0, mode="paper").args[0]["samples"]
    keep = ~rec.latent_mask[:, None].expand_as(out)
    image = to_image(vae, out)[0]
    pasted = KVEditPixelPaste.execute(torch.from_numpy(src)[None].float() / 255, torch.from_numpy(image)[None].float() / 255,
                                      mask, 0).args[0]
    pasted = (pasted[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return {"image": image, "pasted": pasted, "latent_exact": bool(torch.equal(out[keep], lat[keep]))}


def regenerate(model, vae, pair: scenes.EditPair, seed: int, steps: int = 20) -> np.ndarray:
    """The baseline KV-Edit must beat: a new image from the target caption."""
    return generate(model, vae, pair.target.caption(), seed, steps)


def spot_edit(kontext, vae, pair: scenes.EditPair, seed: int, steps: int = 28, tau: float = 0.2,
              warmup: int = 4, reset: int = 9, patched: bool = True) -> dict:
    """The Kontext-style edit with SpotEdit (perceptual judge on the model's VAE, no user mask) or
    without (``patched=False``): image, settled token grid of the last selective step, fraction
    of image tokens computed, and sampling seconds."""
    import time

    from precise_edit.nodes.spot_edit.nodes import SpotFusionSampler, SpotSelector
    from precise_edit.nodes.spot_edit.patch import state_of

    src = scenes.render(pair.source)[0]
    src_lat = to_latent(vae, src[None])
    pos, neg = kontext_conditioning(pair.instruction, src_lat), kontext_conditioning("", src_lat)
    model = kontext
    if patched:
        sel = SpotSelector.execute("perceptual", tau, 0, "union", vae=vae).args[0]
        model = SpotFusionSampler.execute(kontext, sel, warmup, reset, "cos2").args[0]
    t0 = time.perf_counter()
    with torch.no_grad():
        out = sample(model, pos, neg, empty_latent(), seed, steps, 1.0)
    seconds = time.perf_counter() - t0
    res = {"image": to_image(vae, out)[0], "seconds": seconds, "settled": None, "computed": 1.0}
    if patched:
        state = state_of(model)
        fr = state.fractions()
        res["computed"] = sum(f for _, _, f in fr) / max(1, len(fr))
        if state.last.last_settled is not None:
            res["settled"] = state.last.last_settled.numpy().astype(bool)
    return res
