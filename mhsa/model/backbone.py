"""ResNet backbone producing the feature tensor Q(x) of Section IV.

The paper removes the down-sampling at the start of stage 4 (``layer4``) so that a 384x128 image gives
Q(x) of 24x8x2048 instead of 12x4x2048. ``last_stride=2`` keeps torchvision's original stride.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from mhsa.errors import WeightsError
from mhsa.switches import BACKBONES, LAST_STRIDES

# name -> (constructor, ImageNet weights enum, channels of Q(x))
RESNETS: dict[str, tuple[Callable[..., models.ResNet], models.WeightsEnum, int]] = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, 512),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1, 2048),
}

if set(RESNETS) != set(BACKBONES):  # the names are checked before torch is imported
    raise ImportError(f"mhsa.switches.BACKBONES {BACKBONES} != the backbones built here {tuple(RESNETS)}")


class WeightsUnavailableError(WeightsError, RuntimeError):
    """The ImageNet weights are neither cached nor downloadable (offline machine)."""


class WeightsFileNotFoundError(WeightsError, FileNotFoundError):
    """`model.pretrained` names a file that does not exist."""


class WeightsMismatchError(WeightsError, RuntimeError):
    """`model.pretrained` holds the weights of another network (missing or unexpected keys, shapes)."""


class Backbone(nn.Module):
    """ResNet stem + stages 1-4 (no pooling, no fc); forward returns Q(x) as (B, C, H/16, W/16)."""

    def __init__(
        self, name: str = "resnet50", pretrained: bool | str | os.PathLike = False, last_stride: int = 1
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone={name!r} is not supported; choose one of {list(RESNETS)}")
        if last_stride not in LAST_STRIDES:
            raise ValueError(f"last_stride={last_stride!r} must be 1 (paper) or 2 (torchvision default)")
        constructor, imagenet_weights, channels = RESNETS[name]
        resnet = constructor(weights=None)
        # the fc layer is never used; dropping it also makes a strict state-dict load ignore fc.*
        resnet.fc = nn.Identity()
        _load_pretrained(resnet, pretrained, imagenet_weights)
        set_last_stride(resnet, last_stride)

        self.name = name
        self.out_channels = channels
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer2(self.layer1(x))
        return self.layer4(self.layer3(x))


def set_last_stride(resnet: models.ResNet, stride: int) -> None:
    block = resnet.layer4[0]
    # Bottleneck puts the stride on conv2 (torchvision "ResNet v1.5"), BasicBlock on conv1
    strided_conv = block.conv2 if isinstance(block, models.resnet.Bottleneck) else block.conv1
    strided_conv.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def _load_pretrained(
    resnet: models.ResNet, pretrained: bool | str | os.PathLike, imagenet_weights: models.WeightsEnum
) -> None:
    if pretrained is False or pretrained is None:
        return
    if pretrained is True or pretrained == "imagenet":
        state = _imagenet_state_dict(imagenet_weights)
    elif isinstance(pretrained, str | os.PathLike):
        state = _local_state_dict(Path(pretrained), imagenet_weights)
    else:
        raise ValueError(
            f"pretrained={pretrained!r} must be False, 'imagenet' or a path to a state-dict file"
        )
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        resnet.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing/unexpected keys or shapes: weights of another network
        first = (str(err).strip().splitlines() or [""])[-1].strip()[:160] + " ..."
        raise WeightsMismatchError(
            f"pretrained weights {pretrained!r} (model.pretrained) do not fit this ResNet (model.backbone): "
            f"{first}; use the state dict of the same ResNet (e.g. torchvision's {imagenet_weights.url})"
        ) from None


def seeded_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision ResNet `name` initialised from `seed` (torchvision's own init): a
    stand-in for ImageNet weights where none can be downloaded, so that the `model.pretrained: <path>` loading
    path runs (the rehearsal preset, `pretrained: seeded`). Same name and seed, same tensors."""
    if name not in RESNETS:
        raise ValueError(f"backbone={name!r} is not supported; choose one of {list(RESNETS)}")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return RESNETS[name][0](weights=None).state_dict()
    finally:
        torch.random.set_rng_state(generator_state)


def _imagenet_state_dict(weights: models.WeightsEnum) -> dict[str, torch.Tensor]:
    filename = weights.url.rsplit("/", 1)[-1]
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # offline machines fail with URLError/OSError; any failure means the same thing
        target = Path(torch.hub.get_dir()) / "checkpoints" / filename
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
        # from None: the urllib/hub chain says only "no network"; the message says what to do
        raise WeightsUnavailableError(
            f"ImageNet weights {filename} are not in {target.parent} and cannot be downloaded ({reason}). "
            f"Download {weights.url} and put it at {target}, or set model.pretrained to a local "
            "state-dict file (or false)."
        ) from None


def _local_state_dict(path: Path, weights: models.WeightsEnum) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsFileNotFoundError(
            f"pretrained weights file {path} (model.pretrained) does not exist. Put a ResNet state dict there "
            f"(e.g. torchvision's {weights.url}), or use pretrained='imagenet' with the file in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}."
        )
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, zipfile errors, ...
        raise WeightsError(f"pretrained weights file {path} (model.pretrained) cannot be loaded: "
                           f"{_load_failure(err)}; use a plain ResNet state-dict file") from None
    # checkpoints saved by training scripts often wrap the weights; unwrap the common key
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"pretrained weights file {path} (model.pretrained) does not hold a state dict "
                           f"(got {type(state).__name__}); use a plain ResNet state-dict file")
    return state


def _load_failure(err: BaseException) -> str:
    """Why torch.load refused a file, without torch's advice to load it with weights_only=False: such a
    file may run code when loaded, and nothing here ever loads it that way (docs/reliability.md)."""
    if "weights_only" in str(err) or "Unpickl" in type(err).__name__:
        return "it holds Python objects a state dict never contains (refused: loading them could run code)"
    text = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
    return f"it is corrupt or not a torch file ({type(err).__name__}: {text[:160]})"
