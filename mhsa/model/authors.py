"""The authors' public code as a second reading of the model: switches, all off by default.

Each switch reproduces one difference between the paper's text and hongchenphd/MHSA-Net (commit
317160e, ``models.rar: models/networks.py``); ``docs/paper-to-code.md`` gives the file and line of each.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck

from mhsa.switches import ATTENTION_MLPS, ATTENTION_SOFTMAXES, AUTHORS_SWITCHES, INITS, PARAM_SETS, SAFFM_FORMS

__all__ = ["AUTHORS_SWITCHES", "INITS", "PARAM_SETS"]

_CHOICES = {
    "attention_softmax": ATTENTION_SOFTMAXES,
    "attention_mlp": ATTENTION_MLPS,
    "saffm_form": SAFFM_FORMS,
    "init": INITS,
}

# Two calls of the same block on the same input per step (models/networks.py:241 and :261) give the same
# output but update BatchNorm's running statistics twice: r <- 0.9 (0.9 r + 0.1 s) + 0.1 s = 0.81 r + 0.19 s.
_TWICE_MOMENTUM = 1 - (1 - 0.1) ** 2


def check_authors_switches(sw: dict, fusion: str, attention_layers: int = 2) -> None:
    unknown = sorted(set(sw) - set(AUTHORS_SWITCHES))
    if unknown:
        raise ValueError(f"unknown model switch(es) {unknown}; known: {list(AUTHORS_SWITCHES)}")
    for name, choices in _CHOICES.items():
        if sw[name] not in choices:
            raise ValueError(f"{name}={sw[name]!r} must be one of {list(choices)}")
    for name in ("z_layernorm", "extra_bottleneck", "shared_classifier", "residual_detach_q"):
        if not isinstance(sw[name], bool):
            raise ValueError(f"{name}={sw[name]!r} must be a bool")
    if sw["shared_classifier"] and fusion == "concat":
        raise ValueError("shared_classifier=True needs p* and z of one size; fusion='concat' makes p* K*512-d")
    if sw["attention_mlp"] == "authors" and attention_layers != 2:
        raise ValueError(f"attention_mlp='authors' fixes the MLP's depth; leave attention_layers at 2, "
                         f"got {attention_layers}")


def extra_bottleneck(channels: int) -> Bottleneck:
    """The code's ``res_part2``: a torchvision Bottleneck (C -> C/4 -> C), PyTorch's default init."""
    block = Bottleneck(channels, channels // 4)
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = _TWICE_MOMENTUM
    return block


def frozen_parameter_names(model: nn.Module, param_set: str = "authors") -> set[str]:
    """The parameters ``get_optim_policy`` (models/networks.py:317-329) leaves out of the optimiser.

    It lists neither the attention MLP (w_1, w_2, w_3), nor Eq 2's linear layer (fc = w3, b3), nor the
    fusion MLP's last layer (fc3), nor the LayerNorm; they keep their initial values.
    """
    if param_set not in PARAM_SETS:
        raise ValueError(f"param_set={param_set!r} must be one of {list(PARAM_SETS)}")
    if param_set == "all" or not getattr(model, "has_mhsam", False):
        return set()
    prefixes = ["mhsam.attention.", "mhsam.embed.", "rlm.norm."]
    score = getattr(model.fusion, "score", None)
    if score is not None:  # SAFFM (either form); CONCAT and SUM have no parameters
        prefixes.append(f"fusion.score.{len(score) - 1}.")
    return {name for name, _ in model.named_parameters() if name.startswith(tuple(prefixes))}


def apply_authors_init(model: nn.Module) -> None:
    """Re-initialise the heads as models/networks.py:20-40, 186-190, 226-232 do.

    GFB BatchNorm weight ~ N(1, 0.02); classifiers Kaiming-normal fan_out, bias 0; attention MLP and Eq 2's
    linear layer Xavier-uniform (the last attention layer and the fusion's last layer keep PyTorch's default);
    the fusion's other layers Xavier-uniform weights with PyTorch's default bias.
    """
    nn.init.normal_(model.gfb.reduce[1].weight, 1.0, 0.02)
    nn.init.zeros_(model.gfb.reduce[1].bias)
    for name, module in model.named_children():
        if name.startswith("classifier_"):
            nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out")
            nn.init.zeros_(module.bias)
    if not model.has_mhsam:
        return
    _xavier_then_default_last(model.mhsam.attention)
    nn.init.xavier_uniform_(model.mhsam.embed.weight)
    nn.init.zeros_(model.mhsam.embed.bias)
    score = getattr(model.fusion, "score", None)
    if score is not None:
        _xavier_then_default_last(score)


def _xavier_then_default_last(seq: nn.Sequential) -> None:
    layers = [m for m in seq if isinstance(m, nn.Conv2d | nn.Linear)]
    for layer in layers[:-1]:
        layer.reset_parameters()  # PyTorch's default bias, if any
        nn.init.xavier_uniform_(layer.weight)
    layers[-1].reset_parameters()

