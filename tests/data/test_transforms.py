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


# ------------------------------------------------------- the authors' Cutout (data.erasing: cutout)
def test_cutout_is_the_authors_square_at_the_same_position(monkeypatch):
    """utils/random_erasing.py:11-36 (tests/reference_impls.py) at the paper's 384 x 128: a 64 x 64 square of
    zeros in normalised space. With the authors' position draws fixed, their image and ours are equal at
    every corner and in the middle."""
    import random

    from reference_impls import AuthorsCutout

    from mhsa.data.transforms import Cutout, apply_cutout, cutout_pixels

    assert cutout_pixels(128) == 64 and cutout_pixels(32) == 16  # half the width: the code's 64 at 128
    x = torch.randn(3, 384, 128, generator=torch.Generator().manual_seed(0))
    for top, left in [(0, 0), (384 - 64, 128 - 64), (100, 7), (0, 128 - 64)]:
        draws = iter([top, left])
        monkeypatch.setattr(random, "uniform", lambda a, b: 0.0)  # always erase
        monkeypatch.setattr(random, "randint", lambda a, b, d=draws: next(d))
        theirs = AuthorsCutout(probability=0.5, size=64, mean=[0.0, 0.0, 0.0])(x.clone())
        ours = apply_cutout(x.clone(), top, left, 64)
        assert torch.equal(theirs, ours)
        assert int((ours != x).any(0).sum()) == 64 * 64
    # our draws cover the same positions (both ends included) at the same rate
    cut = Cutout(p=0.5)
    torch.manual_seed(1)
    tops, lefts, erased = [], [], 0
    for _ in range(3000):
        y = cut(torch.ones(3, 384, 128))
        rows, cols = torch.nonzero((y == 0).all(0), as_tuple=True)
        if len(rows):
            erased += 1
            assert len(rows) == 64 * 64
            tops.append(int(rows.min()))
            lefts.append(int(cols.min()))
    assert 0.45 < erased / 3000 < 0.55
    assert min(tops) == 0 and max(tops) <= 384 - 64 and min(lefts) == 0 and max(lefts) == 128 - 64


def test_cutout_leaves_an_image_it_does_not_fit_alone():
    """The authors' condition `w < img.size(2) and h < img.size(1)`: a square as wide as the image is never
    drawn; theirs and ours both return it unchanged."""
    from reference_impls import AuthorsCutout

    from mhsa.data.transforms import Cutout

    x = torch.randn(3, 64, 32)
    assert torch.equal(AuthorsCutout(probability=1.0, size=32)(x.clone()), x)
    assert torch.equal(Cutout(p=1.0, side=0.999)(x.clone()), x)


def test_train_pipeline_with_cutout():
    t = build_transforms(64, 32, train=True, random_erasing=1.0, erasing="cutout")
    assert kinds(t) == ["Resize", "RandomHorizontalFlip", "ToTensor", "Normalize", "Cutout"]
    torch.manual_seed(0)
    x = t(image())
    zero = (x == 0).all(0)
    assert int(zero.sum()) == 16 * 16  # half the 32-pixel width
    rows, cols = torch.nonzero(zero, as_tuple=True)
    assert int(rows.max() - rows.min()) == int(cols.max() - cols.min()) == 15
