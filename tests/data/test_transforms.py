"""build_transforms: order of ops, output shape/normalisation, torch-seeded randomness."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from mhsa.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms


def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(100, 40, 3), dtype=np.uint8))


def kinds(t):
    return [type(op).__name__ for op in t.transforms]


def test_eval_pipeline_is_resize_tensor_normalize():
    t = build_transforms(64, 32, train=False, random_erasing=0.5, pad=10)
    assert kinds(t) == ["Resize", "ToTensor", "Normalize"]
    x = t(image())
    assert x.shape == (3, 64, 32)
    assert torch.equal(x, t(image()))


def test_train_pipeline_order():
    t = build_transforms(64, 32, train=True, random_erasing=0.5, pad=10)
    assert kinds(t) == ["Resize", "RandomHorizontalFlip", "Pad", "RandomCrop", "ToTensor", "Normalize",
                        "RandomErasing"]
    assert kinds(build_transforms(64, 32, train=True, flip=False)) == ["Resize", "ToTensor", "Normalize"]


def test_normalisation_uses_imagenet_statistics():
    grey = Image.new("RGB", (32, 64), (124, 116, 104))  # ~ the ImageNet mean
    x = build_transforms(64, 32, train=False)(grey)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = (torch.tensor([124, 116, 104]) / 255 - mean) / std
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-5)


def test_random_ops_follow_the_torch_seed():
    t = build_transforms(64, 32, train=True, random_erasing=1.0, pad=4)
    torch.manual_seed(3)
    a = [t(image()) for _ in range(4)]
    torch.manual_seed(3)
    b = [t(image()) for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(a[0], x) for x in a[1:])
    assert isinstance(t.transforms[-1], T.RandomErasing)
