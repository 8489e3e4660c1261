"""MHSA-Net assembly (Fig. 2) and ``build_model``, the single entry point used by training and evaluation."""

from __future__ import annotations

import os

import torch
from torch import nn

from mhsa.model.authors import (
    AUTHORS_SWITCHES,
    apply_authors_init,
    check_authors_switches,
    extra_bottleneck,
    frozen_parameter_names,
)
from mhsa.model.backbone import LAST_STRIDES, Backbone
from mhsa.model.heads import (
    ATTENTION_LAYERS,
    FUSIONS,
    GlobalFeatureBranch,
    HeadWeightFusion,
    MultiHeadSelfAttention,
    ResidualLearning,
    build_fusion,
)
from mhsa.switches import SWITCHES


class MHSANet(nn.Module):
    """Backbone + GFB, and with ``mhsam`` the MHSAB: MHSAM -> fusion (SAFFM/concat/sum) and RLM.

    Train mode returns ``q, logits_q`` (Baseline) plus ``p, P, z, alpha, logits_p, logits_z`` (MHSAM).
    Eval mode returns ``global`` (q*) plus ``local`` (p*), ``concat`` ([p*, q*]), ``heads`` (P), ``alpha``.
    """

    def __init__(
        self,
        num_classes: int,
        num_heads: int = 8,
        backbone: str = "resnet50",
        pretrained: bool | str | os.PathLike = False,
        mhsam: bool = True,
        fusion: str = "saffm",
        residual: bool = True,
        last_stride: int = 1,
        attention_layers: int = 2,
        feat_dim: int = 512,
        **authors: object,
    ) -> None:
        super().__init__()
        sw = {**AUTHORS_SWITCHES, **authors}
        check_authors_switches(sw, fusion, attention_layers)
        self.switches = sw
        self.num_heads = num_heads
        self.fusion_name = fusion
        self.backbone = Backbone(backbone, pretrained=pretrained, last_stride=last_stride)
        channels = self.backbone.out_channels
        self.extra_block = extra_bottleneck(channels) if sw["extra_bottleneck"] else None
        self.gfb = GlobalFeatureBranch(channels, feat_dim)
        self.classifier_q = nn.Linear(feat_dim, num_classes)
        self.has_mhsam = mhsam
        self.shared_classifier = bool(sw["shared_classifier"])
        self.norm_p = mhsam and fusion == "saffm" and sw["saffm_form"] == "authors"
        if mhsam:
            self.mhsam = MultiHeadSelfAttention(
                channels, num_heads, feat_dim, layers=attention_layers,
                softmax=sw["attention_softmax"], mlp=sw["attention_mlp"],
            )
            self.fusion = HeadWeightFusion(feat_dim, num_heads) if self.norm_p else build_fusion(fusion, feat_dim)
            fused_dim = feat_dim * num_heads if fusion == "concat" else feat_dim
            if not self.shared_classifier:
                self.classifier_p = nn.Linear(fused_dim, num_classes)
            self.rlm = ResidualLearning(
                feat_dim, residual=residual, detach_q=sw["residual_detach_q"], norm_z=sw["z_layernorm"]
            )
            if not self.shared_classifier:
                self.classifier_z = nn.Linear(feat_dim, num_classes)
        self._init_heads()
        if sw["init"] == "authors":
            apply_authors_init(self)

    def frozen_parameter_names(self, param_set: str = "authors") -> set[str]:
        """Names of the parameters the authors' optimiser leaves out (``optim.param_set: authors``)."""
        return frozen_parameter_names(self, param_set)

    def _init_heads(self) -> None:
        # reid-strong-baseline style; the (possibly pretrained) backbone is left untouched
        for name, module in self.named_modules():
            if name.startswith(("backbone", "extra_block")):
                continue
            if name.startswith("classifier_"):
                nn.init.normal_(module.weight, std=0.001)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        Q = self.backbone(x)
        if self.extra_block is not None:
            Q = self.extra_block(Q)
        q = self.gfb(Q)
        if not self.has_mhsam:
            return {"q": q, "logits_q": self.classifier_q(q)} if self.training else {"global": q}
        P, alpha = self.mhsam(Q)
        p = self.fusion(P)
        if self.norm_p:
            p = self.rlm.normalize(p).to(P.dtype)
        if not self.training:
            return {"global": q, "local": p, "concat": torch.cat([p, q], dim=1), "heads": P, "alpha": alpha}
        z = self.rlm(q, P)
        classifier_p = self.classifier_q if self.shared_classifier else self.classifier_p
        classifier_z = self.classifier_q if self.shared_classifier else self.classifier_z
        return {
            "q": q,
            "p": p,
            "P": P,
            "z": z,
            "alpha": alpha,
            "logits_q": self.classifier_q(q),
            "logits_p": classifier_p(p),
            "logits_z": classifier_z(z),
        }


def build_model(
    num_classes: int,
    num_heads: int = 8,
    backbone: str = "resnet50",
    pretrained: bool | str | os.PathLike = False,
    **switches: object,
) -> MHSANet:
    """Build MHSA-Net; the defaults are the paper's full model. See ``SWITCHES`` for the ablation switches.

    ``pretrained``: False | "imagenet" (torchvision IMAGENET1K_V1) | path to a local ResNet state-dict file.
    """
    unknown = sorted(set(switches) - set(SWITCHES))
    if unknown:
        raise ValueError(f"unknown model switch(es) {unknown}; known switches: {list(SWITCHES)}")
    cfg = {**SWITCHES, **switches}
    _check_switches(cfg)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be a positive int")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads={num_heads!r} must be a positive int")
    return MHSANet(num_classes, num_heads=num_heads, backbone=backbone, pretrained=pretrained, **cfg)


def build_model_from_config(num_classes: int, model_cfg: object) -> MHSANet:
    """``build_model`` from a config section: a dataclass (``mhsa.config.ModelConfig``) or a dict whose keys
    are ``build_model``'s arguments; an unknown key is an unknown switch (ValueError)."""
    fields = model_cfg if isinstance(model_cfg, dict) else vars(model_cfg)
    return build_model(num_classes, **fields)


def _check_switches(cfg: dict[str, object]) -> None:
    for name in ("mhsam", "residual"):
        if not isinstance(cfg[name], bool):
            raise ValueError(f"{name}={cfg[name]!r} must be a bool")
    if cfg["fusion"] not in FUSIONS:
        raise ValueError(f"fusion={cfg['fusion']!r} must be one of {list(FUSIONS)}")
    if cfg["last_stride"] not in LAST_STRIDES:
        raise ValueError(f"last_stride={cfg['last_stride']!r} must be 1 or 2")
    if cfg["attention_layers"] not in ATTENTION_LAYERS:
        raise ValueError(f"attention_layers={cfg['attention_layers']!r} must be 2 or 3")
    if not isinstance(cfg["feat_dim"], int) or isinstance(cfg["feat_dim"], bool) or cfg["feat_dim"] < 1:
        raise ValueError(f"feat_dim={cfg['feat_dim']!r} must be a positive int")
