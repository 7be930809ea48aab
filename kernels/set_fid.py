"""FID and KID of a set of images against another, on torch-fidelity's InceptionV3 features.

The numbers are torch-fidelity's own (``fid_features_to_statistics`` / ``fid_statistics_to_metric`` /
``kid_features_to_metric``) on the 2048-d pool features of its TensorFlow-compatible InceptionV3
(``FeatureExtractorInceptionV3``, images as uint8, resized inside the network to 299 px like the
original TF graph). The weights file is given as a path (never downloaded): torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
FEATURE = "2048"
FEATURE_DIM = 2048
# FID's covariance has 2048 x 2048 entries: with fewer images than that it is rank-deficient and the
# value is biased upwards and unstable (the usual advice is >= 10,000; 2,048 is the bare minimum).
FID_MIN_IMAGES = FEATURE_DIM
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100


def inception(weights_path: str, device="cpu"):
    """torch-fidelity's InceptionV3 feature extractor with the weights from ``weights_path``."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE], feature_extractor_weights_path=weights_path)
    return model.to(device).eval()


def to_uint8_nchw(images01: torch.Tensor) -> torch.Tensor:
    """ComfyUI ``[N, H, W, C]`` 0..1 images to ``[N, 3, H, W]`` uint8 (as a PNG holds them).
    Raises ``ValueError`` on NaN or infinite values (they have no pixel value to measure)."""
    if not bool(torch.isfinite(images01).all()):
        raise ValueError("the images hold NaN or infinite values: check the node that made them")
    x = images01[..., :3].clamp(0, 1).mul(255).round().to(torch.uint8)
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    return x.permute(0, 3, 1, 2).contiguous()


def features(model, batches: Iterable[torch.Tensor], device="cpu") -> torch.Tensor:
    """2048-d features ``[N, 2048]`` (float32 on CPU, as torch-fidelity keeps them) of uint8 ``[B, 3, H, W]`` batches."""
    out = []
    with torch.no_grad():
        for b in batches:
            if b.dtype != torch.uint8:
                raise ValueError("images must be uint8 [B, 3, H, W]")
            (f,) = model(b.to(device))
            out.append(f.detach().cpu().float())
    if not out:
        return torch.zeros(0, FEATURE_DIM)
    return torch.cat(out)


@dataclass
class SetScore:
    fid: float | None
    kid_mean: float | None
    kid_std: float | None
    n_edited: int
    n_reference: int
    kid_subset_size: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def score(feat_edited: torch.Tensor, feat_reference: torch.Tensor, kid_subsets: int = KID_SUBSETS,
          kid_subset_size: int = KID_SUBSET_SIZE, seed: int = 2020) -> SetScore:
    """FID and KID (torch-fidelity's computation) with the sample sizes and warnings on small sets."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    n1, n2 = len(feat_edited), len(feat_reference)
    warnings = []
    if min(n1, n2) < 2:
        raise ValueError(f"FID needs at least 2 images per set (edited: {n1}, reference: {n2})")
    if min(n1, n2) < FID_MIN_IMAGES:
        warnings.append(f"only {min(n1, n2)} images in the smaller set: FID over fewer than {FID_MIN_IMAGES} images "
                        "is biased upwards and varies with the sample; compare FIDs only at equal set sizes, "
                        "and prefer KID for small sets")
    fid = fid_statistics_to_metric(fid_features_to_statistics(feat_edited.float()),
                                   fid_features_to_statistics(feat_reference.float()), verbose=False)
    subset = min(kid_subset_size, n1, n2)
    if subset < kid_subset_size:
        warnings.append(f"KID subsets of {subset} images (torch-fidelity's default is {kid_subset_size})")
    kid = kid_features_to_metric(feat_edited.float(), feat_reference.float(), kid_subsets=kid_subsets,
                                 kid_subset_size=subset, verbose=False, rng_seed=seed)
    return SetScore(fid["frechet_inception_distance"], kid["kernel_inception_distance_mean"],
                    kid["kernel_inception_distance_std"], n1, n2, subset, warnings)
