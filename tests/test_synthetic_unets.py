"""The SD1.5-class UNets trained on the synthetic set (text-to-image ``sd``, InstructPix2Pix-style
``ip2p`` with 8 input channels), loaded as ComfyUI model classes with the 4-channel TAESD-layout
VAE, and issue 12's spatial measure with the pack's Spatial Instruction.

Thresholds sit below the rates measured when the shipped weights were trained (README, "Edits that
can be judged"), so a regression in the models, the VAE, the text side or the wiring shows here.
"""

import numpy as np
import pytest

from precise_edit.synthetic import evaluate as ev
from precise_edit.synthetic import evaluate_unet as eu
from precise_edit.synthetic import judge, models, scenes, train_unet, training


@pytest.fixture(scope="module")
def vae4():
    return models.vae("vae4")


@pytest.fixture(scope="module")
def sd():
    return models.unet("sd")


@pytest.fixture(scope="module")
def ip2p():
    return models.unet("ip2p")


def test_classes_and_layout(vae4, sd, ip2p):
    import comfy.model_base
    import comfy.taesd.taesd as taesd

    assert isinstance(vae4.first_stage_model, taesd.TAESD) and vae4.latent_channels == 4
    assert type(sd.model) is comfy.model_base.BaseModel and sd.model.diffusion_model.in_channels == 4
    assert isinstance(ip2p.model, comfy.model_base.SD15_instructpix2pix)
    assert ip2p.model.diffusion_model.in_channels == 8
    sc = scenes.scenes(500, 8)
    lat = ev.to_latent(vae4, np.stack([scenes.render(s, eu.SIZE)[0] for s in sc])) * 0.18215   # ComfyUI's SD1.5 format
    assert abs(float(lat.mean())) < 0.3 and 0.7 < float(lat.std()) < 1.4


def test_vae4_keeps_objects_at_the_unets_size(vae4):
    """The UNets' ceiling: objects right (colour, shape, cell) through the vae4 round trip of
    ``eu.SIZE`` renders, the images the trainers render (README: 96-pixel vae4 31 % here, the
    128-pixel one 41 % at 128 pixels, 76 % at 192)."""
    sc = scenes.scenes(500, 16)
    rec = ev.to_image(vae4, ev.to_latent(vae4, train_unet.render_images(sc)))
    rate = np.mean([judge.object_ok(r, o) for r, s in zip(rec, sc) for o in s.objects])
    print("vae4 objects right", rate)
    assert rate >= VAE4_OBJECT_RATE, rate


def test_sd_draws_the_captioned_objects(sd, vae4):
    """The text-to-image UNet puts the captioned colour in the captioned cell, and some objects
    right in full (colour, shape, cell); 20 steps at the evaluation's guidance (``eu.CFG``; cfg 5
    before the 64-channel round, for the figures of earlier models). The 500-step model trained without the
    object-weighted loss draws 0 of 29 colours and 0 objects here; with it (4000 scenes, objects x5
    in the loss) the 32-channel model 10 and 4 at 128 pixels, 13 and 9 at 192 (12 and 8 at cfg 9),
    the shipped 64-channel one (2500 steps) 20 and 14 at cfg 5, 23 and 17 at cfg 9 (23 and 18 as stored in int8): the thresholds
    fail every earlier model."""
    sc = scenes.scenes(500, 16)
    imgs = [eu.generate_sd(sd, vae4, s.caption(), seed=i, steps=20) for i, s in enumerate(sc)]
    objs = [(img, o) for img, s in zip(imgs, sc) for o in s.objects]
    colour = np.mean([judge.find(i, o.cell).colour == o.colour for i, o in objs])
    right = np.mean([judge.object_ok(i, o) for i, o in objs])
    print("sd colours", colour, "objects", right)
    assert colour >= SD_COLOUR_RATE, colour
    assert right >= SD_OBJECT_RATE, right


def test_trained_and_sampled_at_one_size():
    """The UNet trainers render the images the evaluation samples latents for (``eu.SIZE``), one
    constant (``scenes.UNET_SIZE``) for the SD1.5-class UNets; vae4 keeps its own training size
    (``scenes.VAE4_SIZE``, what the shipped file says it was trained on)."""
    from safetensors import safe_open

    from precise_edit.synthetic import train_vae
    from precise_edit.synthetic.training import weight_path

    assert train_unet.SIZE == eu.SIZE == scenes.UNET_SIZE
    assert train_vae.IMAGE_SIZE["vae4"] == scenes.VAE4_SIZE
    for name, size in (("vae4", scenes.VAE4_SIZE), ("sd", scenes.UNET_SIZE), ("ip2p", scenes.UNET_SIZE)):
        with safe_open(str(weight_path(name)), "pt") as f:
            assert int(f.metadata()["image_size"]) == size, name
    assert eu.empty_latent().shape == (1, 4, eu.SIZE // 8, eu.SIZE // 8)
    sc = scenes.scenes(3, 2)
    imgs = train_unet.render_images(sc)
    assert imgs.shape == (2, eu.SIZE, eu.SIZE, 3) and np.array_equal(imgs[1], scenes.render(sc[1], eu.SIZE)[0])


def test_training_attention_is_comfyuis_own_function(sd):
    """The UNet trainers route attention through ``train_unet._sdpa`` (ComfyUI's attention_pytorch via
    the attention override, for speed); it must compute what sampling computes with ComfyUI's choice."""
    import torch

    from precise_edit.synthetic import text

    seen = []

    def spy(func, *args, **kwargs):
        seen.append(1)
        return train_unet._sdpa(func, *args, **kwargs)

    dm = sd.model.diffusion_model
    x = torch.randn(2, 4, eu.SIZE // 8, eu.SIZE // 8, generator=torch.Generator().manual_seed(0))
    ctx, _ = text.encode_batch(["a red circle at the top left", "a blue star at the center"])
    t = torch.tensor([100.0, 700.0])
    with torch.no_grad():
        ref = dm(x, timesteps=t, context=ctx)
        out = dm(x, timesteps=t, context=ctx, transformer_options={"optimized_attention_override": spy})
    assert seen and float((out - ref).abs().max()) < 1e-4 * float(ref.abs().max())


@pytest.mark.parametrize("width", [32, 96])
def test_unet_width_is_read_from_the_weights(width):
    """An sd of another width than the shipped one (``train_synthetic.py sd --channels N``) loads as
    what it is, and an ip2p started from it takes its width."""
    assert width != train_unet.CHANNELS
    other = train_unet.build(channels=width).diffusion_model.state_dict()
    assert other["input_blocks.0.0.weight"].shape[0] == width
    again = train_unet.build(other).diffusion_model
    assert again.model_channels == width
    ip = train_unet.build(train_unet.ip2p_from(other), ip2p=True).diffusion_model
    assert (ip.model_channels, ip.in_channels) == (width, 8)


def test_ip2p_starts_from_the_text_to_image_unet(sd):
    """``train_ip2p`` starts from ``sd`` as InstructPix2Pix starts from Stable Diffusion: the source
    channels start at zero, so before training the editing model computes exactly what ``sd`` does,
    whatever the source; the shipped file says it was made that way."""
    import torch
    from safetensors import safe_open

    from precise_edit.synthetic import text

    sd_state = sd.model.diffusion_model.state_dict()
    start = train_unet.build(train_unet.ip2p_from(sd_state), ip2p=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    src = torch.randn(2, 4, 8, 8, generator=gen)
    ctx, _ = text.encode_batch(["a red circle at the top left", "make the circle green"])
    t = torch.tensor([100.0, 700.0])
    with torch.no_grad():
        ref = sd.model.diffusion_model(x, timesteps=t, context=ctx)
        out = start.diffusion_model(torch.cat([x, src], 1), timesteps=t, context=ctx)
    assert torch.equal(out, ref)
    with safe_open(str(training.weight_path("ip2p")), "pt") as f:
        assert f.metadata().get("init") == "sd"


@pytest.mark.parametrize("name", ["vae4", "sd", "ip2p"])
def test_missing_weights_message(tmp_path, monkeypatch, name):
    monkeypatch.setattr(training, "WEIGHTS", tmp_path)
    with pytest.raises(training.MissingWeights, match=f"train_synthetic.py {name}"):
        models.vae(name) if name == "vae4" else models.unet(name)


def test_ip2p_uses_the_source_image(ip2p, vae4):
    """The source reaches the model through ComfyUI's concat_latent_image: the objects the edit does
    not touch keep their colour in their cell more often than with a blank source (only a little
    more: the model mostly regenerates; README)."""
    pairs = scenes.edits(1001, N_EDIT)
    with_src, blank = [], []
    for i, p in enumerate(pairs):
        src = scenes.render(p.source, eu.SIZE)[0]
        touched = {o.cell for o in (p.subject, p.result) if o is not None}
        kept = [o for o in p.target.objects if o.cell not in touched]
        a = eu.edit_ip2p(ip2p, vae4, src, p.instruction, i, STEPS)
        b = eu.edit_ip2p(ip2p, vae4, np.full_like(src, 128), p.instruction, i, STEPS)
        with_src += [judge.find(a, o.cell).colour == o.colour for o in kept]
        blank += [judge.find(b, o.cell).colour == o.colour for o in kept]
    print("ip2p kept colours", np.mean(with_src), np.mean(blank), len(with_src))
    assert np.mean(with_src) >= IP2P_KEPT_RATE, np.mean(with_src)
    assert np.mean(with_src) > np.mean(blank), (np.mean(with_src), np.mean(blank))


def test_image_guidance_keeps_the_source_and_does_the_edits(ip2p, vae4):
    """InstructPix2Pix's image scale (Instruct Guider's image-only condition against neither), which the
    evaluation samples the editing model with (``eu.IMAGE_CFG``): outside the edit's mask the result is
    closer to the source (PSNR against the source's VAE round trip) than with text guidance alone on
    nearly every pair, and at least as many edits are done (README: 50.0 -> 60.0 % of 40 pairs, held out
    52.5 -> 57.5 %)."""
    pairs = scenes.edits(1001, N_EDIT)
    gain, done, done_text = [], [], []
    for i, p in enumerate(pairs):
        src = scenes.render(p.source, eu.SIZE)[0]
        rt = ev.to_image(vae4, ev.to_latent(vae4, src[None]))[0]
        m = p.mask(eu.SIZE)
        a = eu.edit_ip2p(ip2p, vae4, src, p.instruction, i, STEPS)
        b = eu.edit_ip2p(ip2p, vae4, src, p.instruction, i, STEPS, image_cfg=1.0)
        gain.append(judge.psnr_outside(a, rt, m) - judge.psnr_outside(b, rt, m))
        done.append(judge.edit_ok(a, p))
        done_text.append(judge.edit_ok(b, p))
    print("image guidance: PSNR gain outside the mask", np.round(gain, 2), "edits", sum(done), "vs", sum(done_text))
    assert eu.IMAGE_CFG > 1.0
    assert np.median(gain) >= IMAGE_GUIDANCE_PSNR_GAIN, gain
    assert sum(g > 0 for g in gain) >= len(gain) - 1, gain
    assert sum(done) >= sum(done_text), (sum(done), sum(done_text))


def test_spatial_instruction_puts_the_added_object_in_its_place(ip2p, vae4):
    """Issue 12's measure on a handful of "add ... at the <place>" edits: the asked colour in the
    asked cell, plain vs with Spatial Instruction's region as the noise mask; away from the region
    the result is the source's own VAE round trip (the denoise mask kept the source latent there)."""
    from scipy.ndimage import binary_dilation

    pairs = scenes.edits(1200, N_SPATIAL, kinds=("add",))
    v, far_region, far_plain = [], [], []
    for i, p in enumerate(pairs):
        images = {}
        v.append(eu.spatial_verdicts(ip2p, vae4, p, i, STEPS, images=images))
        src = scenes.render(p.source, eu.SIZE)[0]
        rt = ev.to_image(vae4, ev.to_latent(vae4, src[None]))[0].astype(np.float64)
        far = ~binary_dilation(images["region"][0].numpy() > 0, iterations=16)
        far_region.append(np.abs(images[eu.VARIANTS[2]].astype(np.float64) - rt)[far].mean())
        far_plain.append(np.abs(images[eu.VARIANTS[0]].astype(np.float64) - rt)[far].mean())
    plain = np.mean([x[eu.VARIANTS[0]][0] for x in v])
    region = np.mean([x[eu.VARIANTS[2]][0] for x in v])
    print("spatial", region, plain, np.mean(far_region), np.mean(far_plain))
    assert np.mean(far_region) < FAR_FROM_REGION_ERROR, np.mean(far_region)
    assert np.mean(far_plain) > 2 * np.mean(far_region), (np.mean(far_plain), np.mean(far_region))
    assert region >= SPATIAL_REGION_RATE, region
    assert region >= plain, (region, plain)


STEPS = 12
# test_sd_draws_the_captioned_objects at cfg 9: measured 23/29, 17/29 at 64 channels (32 channels: 12/29, 8/29;
# at cfg 5 13/29, 9/29 at 192 pixels, 10/29, 4/29 at 128; before it 0, 0)
SD_COLOUR_RATE, SD_OBJECT_RATE = 0.65, 0.45
VAE4_OBJECT_RATE = 0.6          # measured 22/29 at 192 pixels (12/29 at 128; 9/29 with the 96-pixel vae4)
N_EDIT, N_SPATIAL = 6, 6
IP2P_KEPT_RATE = 0.3            # measured 4/11 (1/11 with a blank source), 12 steps, cfg 9 (the same at image scale 3), 64 channels (32: 4/11; cfg 3: 64 ch 5/11, 32 ch 3/11)
SPATIAL_REGION_RATE = 0.5       # 6/6 at 12 steps, cfg 9 (plain 6/6; 32 channels 6/6, plain 4/6; at cfg 3 plain 3/6)
IMAGE_GUIDANCE_PSNR_GAIN = 1.0  # measured: median 2.0 dB over 6 pairs, every one higher (edits 5 vs 4 of 6)
FAR_FROM_REGION_ERROR = 1.0     # measured 0.02 per 8-bit channel (60 for the plain edit; 32 channels at cfg 3: 0.13, 62)
