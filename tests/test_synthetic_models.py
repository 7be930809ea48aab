"""The small models trained on the synthetic set (synthetic/weights/), judged by the synthetic judge.

Thresholds are set below the rates measured when the shipped weights were trained (README,
"Edits that can be judged"), so a regression in the models, the text side, the VAE or a method
shows here.
"""

import numpy as np
import pytest
import torch

from precise_edit.synthetic import evaluate as ev
from precise_edit.synthetic import judge, models, scenes, text
from precise_edit.synthetic import train_dit


@pytest.fixture(scope="module")
def vae():
    return models.vae()


@pytest.fixture(scope="module")
def kvae():
    return models.vae(models.VAE_OF["kontext"])


@pytest.fixture(scope="module")
def flux():
    return models.flux("flux")


@pytest.fixture(scope="module")
def kontext():
    return models.flux("kontext")


def test_vae_is_taesd_layout_and_keeps_objects(vae):
    import comfy.taesd.taesd as taesd

    assert isinstance(vae.first_stage_model, taesd.TAESD) and vae.latent_channels == 16
    sc = scenes.scenes(500, 16)
    imgs = np.stack([ev.render(s) for s in sc])
    lat = ev.to_latent(vae, imgs)
    model_space = (lat - 0.1159) * 0.3611          # ComfyUI's FLUX latent format
    model_space = model_space.detach()
    assert abs(float(model_space.mean())) < 0.3 and 0.7 < float(model_space.std()) < 1.4
    rec = ev.to_image(vae, lat)
    rate = np.mean([judge.object_ok(r, o) for r, s in zip(rec, sc) for o in s.objects])
    assert rate >= VAE_OBJECT_RATE, rate


def test_training_forward_is_comfyui_forward():
    """The differentiable block forwards used for training compute what ComfyUI's blocks do."""
    model = train_dit.build()
    dm = model.diffusion_model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in dm.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        x = torch.randn(2, 16, 12, 12, generator=gen)
        ctx, pooled = text.encode_batch(["a red circle at the top", "remove the star"])
        kw = dict(y=pooled, guidance=torch.tensor([2.0, 3.0]), ref_latents=[torch.randn(2, 16, 12, 12, generator=gen)])
        a = dm(x, torch.tensor([0.3, 0.8]), ctx, **kw)
        b = dm(x, torch.tensor([0.3, 0.8]), ctx, transformer_options=train_dit.training_options(dm), **kw)
    assert torch.equal(a, b)


def test_training_data_is_the_flux_side_size_with_object_weighted_cells():
    """The DiT trainers see the images the evaluation renders (192 pixels) and weigh the loss on
    every latent cell an object touches (any of its 8 x 8 pixels) OBJECT_WEIGHT + 1 times."""
    sc, imgs, objects = train_dit._dataset_scenes(3, seed=4)
    assert imgs.shape == (3, ev.SIZE, ev.SIZE, 3) and np.array_equal(imgs[1], ev.render(sc[1]))
    w = train_dit.cell_weight(objects)
    touched = objects.reshape(3, ev.SIZE // 8, 8, ev.SIZE // 8, 8).any(axis=(2, 4))
    assert w.shape == (3, 1, ev.SIZE // 8, ev.SIZE // 8)
    assert torch.equal(w[:, 0], torch.from_numpy(np.where(touched, 1.0 + train_dit.OBJECT_WEIGHT, 1.0)).float())
    assert 0 < touched.mean() < 0.5


def test_training_resumes_from_a_checkpoint_to_the_same_weights(tmp_path):
    """A DiT training run stopped part-way and started again on its checkpoint ends with the weights
    and loss of the run never stopped (weights, optimiser, schedule and random generator come back),
    doing only the steps left; a checkpoint of another run is refused."""
    x0 = torch.randn(4, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    ctx, pooled = text.encode_batch(["a red circle at the top", "a blue star at the center",
                                     "a green square at the left", "a yellow triangle at the bottom"])
    calls = []

    def data(gen, b):
        calls.append(1)
        if len(calls) == STOP_AT:
            raise KeyboardInterrupt
        idx = torch.randint(0, 4, (b,), generator=gen)
        return x0[idx], ctx[idx], pooled[idx], None, torch.ones(b, 1, 4, 4)

    STOP_AT = 0
    whole = train_dit.build().diffusion_model
    loss = train_dit._loop(whole, data, 6, 2, 1e-2, "t")
    ck = tmp_path / "run.ckpt"
    calls.clear()
    STOP_AT = 5                                   # step 4's batch: after the checkpoint of step 4
    with pytest.raises(KeyboardInterrupt):
        train_dit._loop(train_dit.build().diffusion_model, data, 6, 2, 1e-2, "t", checkpoint=ck, every=2)
    calls.clear()
    STOP_AT = 0
    resumed = train_dit.build().diffusion_model
    assert train_dit._loop(resumed, data, 6, 2, 1e-2, "t", checkpoint=ck, every=2) == loss
    assert len(calls) == 2
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="another run"):
        train_dit._loop(train_dit.build().diffusion_model, data, 8, 2, 1e-2, "t", checkpoint=ck)


def test_missing_weights_message(tmp_path, monkeypatch):
    from precise_edit.synthetic import training

    monkeypatch.setattr(training, "WEIGHTS", tmp_path)
    with pytest.raises(training.MissingWeights, match="train_synthetic.py kontext"):
        models.flux("kontext")


def _background(img):
    """The background colour name nearest to the image's median non-object pixel."""
    lab = judge.colour_labels(img)
    med = np.median(img[lab < 0].reshape(-1, 3), axis=0)
    names = list(scenes.BACKGROUND_COLOURS)
    return names[int(np.argmin([np.linalg.norm(med - np.array(scenes.BACKGROUND_COLOURS[n])) for n in names]))]


def test_plain_text_to_image_follows_the_background_words(flux, vae):
    """What the text-to-image model learned in its CPU minutes: the caption's background colour
    (objects: see the README's measured rates). Swapping the captions swaps the backgrounds."""
    sc = scenes.scenes(1000, N_T2I)
    own = [_background(ev.generate(flux, vae, s.caption(), seed=i, steps=STEPS)) == s.bg_colour
           for i, s in enumerate(sc)]
    swapped = [_background(ev.generate(flux, vae, sc[(i + 1) % len(sc)].caption(), seed=i, steps=STEPS)) == s.bg_colour
               for i, s in enumerate(sc)]
    assert np.mean(own) >= T2I_BACKGROUND_RATE, np.mean(own)
    assert np.mean(own) > np.mean(swapped), (np.mean(own), np.mean(swapped))


def test_plain_text_to_image_draws_the_shape_word(flux, vae):
    """The 192-pixel text-to-image model, with classifier-free guidance (ev.CFG), draws a triangle
    when the caption asks for one, and not when it asks for a circle (the 128-pixel hidden-64 model
    drew every shape as a round blob: 0 of 10 triangles). Stars stay mostly round (README)."""
    def triangles(shape):
        hits = []
        for i in range(N_SHAPE):
            colour, cell = list(scenes.COLOURS)[i % 6], (i * 4) % 9
            img = ev.generate(flux, vae, f"a {colour} {shape} at the {scenes.POSITIONS[cell]} on a gray gradient "
                              f"background", seed=i, steps=STEPS)
            hits.append(judge.find(img, cell).shape == "triangle")
        return np.mean(hits)

    asked, other = triangles("triangle"), triangles("circle")
    assert asked >= TRIANGLE_RATE and asked >= other + 0.2, (asked, other)


def test_plain_kontext_uses_the_reference(kontext, kvae):
    """The Kontext-style model keeps the source (given through ComfyUI's reference latents) where
    the edit does not touch it: far closer to the source than the same instruction without it."""
    from precise_edit.synthetic.models import conditioning

    pairs = scenes.edits(1001, N_EDIT)
    with_ref, without, kept = [], [], []
    for i, p in enumerate(pairs):
        src = ev.render(p.source, ev.KONTEXT_SIZE)
        img = ev.edit_kontext(kontext, kvae, p, seed=i, steps=STEPS)
        bare = ev.to_image(kvae, ev.sample(kontext, conditioning(p.instruction, guidance=2.5), conditioning(""),
                                          ev.empty_latent(size=ev.KONTEXT_SIZE), i, STEPS))[0]
        with_ref.append(judge.psnr_outside(img, src, ev.mask(p, ev.KONTEXT_SIZE)))
        without.append(judge.psnr_outside(bare, src, ev.mask(p, ev.KONTEXT_SIZE)))
        kept.append(judge.others_kept(img, p))
    assert np.median(with_ref) >= np.median(without) + 2.0, (np.median(with_ref), np.median(without))
    assert np.median(with_ref) >= KONTEXT_PSNR, np.median(with_ref)
    assert np.mean(kept) >= KONTEXT_KEPT_RATE, np.mean(kept)


def test_kv_edit_edits_and_keeps_background(flux, vae):
    """KV-Edit (SamplerCustomAdvanced wiring: KVEditCustomSampler under ComfyUI's CFGGuider at
    ev.CFG) keeps the latent and pasted pixels outside the mask bit-exact, does the colour or shape
    change KV_EDIT_RATE of the time, and at least as often as regenerating with the target caption
    but for one pair of N_KV (the issue's ">= regeneration"; 20 pairs in the README's benchmark)."""
    pairs = scenes.edits(1002, N_KV, kinds=("colour", "shape"))
    kv_ok, regen_ok = [], []
    for i, p in enumerate(pairs):
        out = ev.kv_edit(flux, vae, p, seed=i, steps=STEPS, skip=KV_SKIP)
        src = ev.render(p.source)
        assert out["latent_exact"], "KV-Edit changed the latent outside the mask"
        assert judge.equal_outside(out["pasted"], src, ev.mask(p)), "pixel paste changed pixels outside the mask"
        kv_ok.append(judge.edit_ok(out["image"], p))
        regen_ok.append(judge.edit_ok(ev.regenerate(flux, vae, p, seed=i, steps=STEPS), p))
    assert np.mean(kv_ok) >= KV_EDIT_RATE, (np.mean(kv_ok), np.mean(regen_ok))
    assert np.mean(kv_ok) >= np.mean(regen_ok) - 1 / N_KV, (np.mean(kv_ok), np.mean(regen_ok))


def test_pixels_places_the_object_and_keeps_the_rest_exact(flux, vae):
    """PIXELS exemplar latent surgery on the FLUX t2i model (add: the object pictured alone; move:
    cut from the source): the object's colour lands in its new cell PIXELS_PLACED_RATE of the time,
    and outside the change map the latent is the source's, bit for bit. (Full success, shape
    included: add 0 %, move 25 % with the exemplar: README.)"""
    for kind, seed in (("add", 1004), ("move", 1005)):
        hits = []
        for i, p in enumerate(scenes.edits(seed, N_PIXELS, kinds=(kind,))):
            r = ev.pixels_edit(flux, vae, p, seed=i, steps=STEPS)
            assert r["latent_exact"], "PIXELS changed the latent outside the change map"
            hits.append(judge.find(r["image"], p.result.cell).colour == p.result.colour)
        assert np.mean(hits) >= PIXELS_PLACED_RATE, (kind, hits)


def test_easycache_on_top_of_spot_edit(kontext, kvae):
    """ComfyUI's EasyCache stacked on SpotEdit's patched model skips whole diffusion-model calls,
    and the tokens SpotEdit settles under it are still truly unchanged ones. (What it costs in edits
    on this model -- SpotEdit alone 3 of 10 here, with EasyCache on top 1 -- is in the README.)"""
    pairs = scenes.edits(1003, N_EDIT)
    spot_calls, both_calls, prec = [], [], []
    for i, p in enumerate(pairs):
        a = ev.spot_edit(kontext, kvae, p, seed=i, steps=28)
        b = ev.spot_edit(kontext, kvae, p, seed=i, steps=28, easycache_threshold=0.2)
        spot_calls.append(a["model_calls"])
        both_calls.append(b["model_calls"])
        scores = ev.settled_scores(b, p)
        if scores is not None:
            prec.append(scores[0])
    assert all(c == 28 for c in spot_calls), spot_calls
    assert np.mean(both_calls) <= 0.9 * 28, both_calls
    assert len(prec) >= N_EDIT // 2 and np.mean(prec) >= SPOT_PRECISION, prec


def test_easycache_ending_early_keeps_spot_edits(kontext, kvae):
    """With EasyCache's ``end_percent`` at 0.6 the steps where this model's edits form are computed:
    SpotEdit ("authors code") + EasyCache does the edits at least as often as the plain model (README:
    4 of 10 against 3 at 28 steps; at the node's default 0.95, 2 of 10, which fails here), still skips
    model calls, and still settles only unchanged tokens."""
    pairs = scenes.edits(1003, N_EDIT)
    plain_ok, ok, calls, prec = [], [], [], []
    for i, p in enumerate(pairs):
        a = ev.spot_edit(kontext, kvae, p, seed=i, steps=28, patched=False)
        b = ev.spot_edit(kontext, kvae, p, seed=i, steps=28, mode="authors code", easycache_threshold=0.2,
                         easycache_end=EASYCACHE_END)
        plain_ok.append(judge.edit_ok(a["image"], p))
        ok.append(judge.edit_ok(b["image"], p))
        calls.append(b["model_calls"])
        scores = ev.settled_scores(b, p)
        if scores is not None:
            prec.append(scores[0])
    print("plain", sum(plain_ok), "spot + easycache", sum(ok), "calls", np.mean(calls))
    assert sum(ok) >= sum(plain_ok), (ok, plain_ok)
    assert np.mean(calls) <= 0.8 * 28, calls
    assert len(prec) >= N_EDIT // 2 and np.mean(prec) >= SPOT_PRECISION, prec


@pytest.mark.parametrize("mode", ["paper", "authors code"])
def test_spot_edit_settles_only_unchanged_tokens_and_keeps_the_edits(kontext, kvae, mode):
    """SpotEdit's perceptual judge at the synthetic VAE's tau (ev.SPOT_TAU): the tokens it settles
    (pastes from the source) are truly unchanged ones (precision against the pair's exact mask),
    it settles a real share of them, and every edit reads as the unpatched model's, in both modes
    (settled tokens landing on the source, or keeping their previous velocity as the authors'
    code does). At the authors' 0.2 it settles the edit region too (precision ~0.90) and loses
    the edits."""
    pairs = scenes.edits(1003, N_EDIT)
    prec, rec, same = [], [], []
    for i, p in enumerate(pairs):
        a = ev.spot_edit(kontext, kvae, p, seed=i, steps=SPOT_STEPS, patched=False)
        b = ev.spot_edit(kontext, kvae, p, seed=i, steps=SPOT_STEPS, mode=mode)
        same.append(judge.edit_ok(a["image"], p) == judge.edit_ok(b["image"], p))
        pr, rc = ev.settled_scores(b, p) or (0.0, 0.0)   # nothing settled: none found
        prec.append(pr)
        rec.append(rc)
    assert np.mean(prec) >= SPOT_PRECISION, prec
    assert np.mean(rec) >= SPOT_RECALL, rec
    assert np.mean(same) >= SPOT_SAME_VERDICT, same


STEPS = 12
N_SHAPE = 12
TRIANGLE_RATE = 0.6             # measured 10 of 12 at cfg 6 (circles asked: 0 of 12; 5 of 12 at cfg 1), 12 steps
SPOT_STEPS = 20
EASYCACHE_END = 0.6             # EasyCache's end_percent that keeps this model's late-forming edits (README)
SPOT_PRECISION = 0.95           # measured 0.978 at cfg 6 (10 pairs, 20 steps; 0.970 at cfg 1; 128-px model 0.898 at tau 0.2)
SPOT_RECALL = 0.5               # measured 0.902 at cfg 6 (128-px model: 0.654)
SPOT_SAME_VERDICT = 0.9         # measured 0.9 at cfg 6, 1.0 at cfg 1 (0.8 at tau 0.2: both of the plain model's successes lost)
N_PIXELS = 8
N_T2I, N_EDIT, N_KV = 10, 10, 6
KV_SKIP = 2
KV_EDIT_RATE = 0.6              # measured 5 of 6 at cfg 6 (regenerating: 5 of 6; at cfg 1 3 of 6 vs 5 of 6), 12 steps
VAE_OBJECT_RATE = 0.7           # measured 0.862 at 192 px (16 scenes, seed 500; 0.586 at 128, 0.31 for the first VAE at 96)
T2I_BACKGROUND_RATE = 0.8       # measured 1.0 (0.4 with the captions swapped)
KONTEXT_PSNR = 20.0             # measured 22.3 dB at cfg 6 (13.5 without the reference; 24.0 at cfg 1)
KONTEXT_KEPT_RATE = 0.1         # measured 0.2 (cfg 6 and 1)
PIXELS_PLACED_RATE = 0.6       # measured 1.0 (add and move, 8 each, 12 steps, 192-px model, cfg 6)
