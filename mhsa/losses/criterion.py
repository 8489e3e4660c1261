"""Total MHSA-Net objective: Eq 13 = L_MHSAB (Eq 11, built from Eq 8 and 10) + L_GFB + lambda3 L_C."""

from __future__ import annotations

import torch
from torch import nn

from mhsa.losses.competition import CODE_THRESHOLD, DEFAULT_GAMMA, FORMS, REDUCTIONS, competition
from mhsa.losses.fdrt import FDRT_FORMS, NORMS, fdrt, fdrt_authors
from mhsa.losses.ihtl import ihtl
from mhsa.losses.triplet import DISTANCES, hard_triplet
from mhsa.switches import LOSS_WEIGHTS

TERMS = (
    "ce_global",
    "ce_local",
    "triplet_local",
    "ce_residual",
    "triplet_residual",
    "fdrt",
    "ihtl",
    "competition",
)


class Criterion(nn.Module):
    """Eq 13: L_total = L_GFB + L_SAFFM + L_ReN + lambda1 L_FDRT + lambda2 T_IHTL + lambda3 L_C.

    - L_GFB = CE(logits_q) (Section IV), left out with ``global_ce=False`` (MHSA-Net dagger, Table V);
    - L_SAFFM = CE(logits_p) + hard_triplet(p) (Eq 8); L_ReN = CE(logits_z) + hard_triplet(z) (Eq 10);
    - FDRT (Eq 3) and IHTL (Eq 5) act on P (the paper's P-perp is the same tensor); L_C (Eq 12) on alpha.

    The authors' public code as a second reading (all off by default): ``distance="euclidean"`` (triplet
    and IHTL on square-rooted distances), ``fdrt_form="authors"`` (``fdrt_authors``; ``fdrt_norm`` then
    plays no part), ``competition_reduction="sum"`` and ``competition_threshold`` (the ``code`` form's
    threshold).

    ``crit(outputs, pids) -> (total, terms)``: ``terms`` maps the names in ``TERMS`` to detached UNWEIGHTED
    values; a term whose weight is 0 is neither computed nor reported. Baseline outputs (no ``P``) give only
    ``ce_global``.
    """

    def __init__(
        self,
        lambda1: float = LOSS_WEIGHTS["lambda1"],
        lambda2: float = LOSS_WEIGHTS["lambda2"],
        lambda3: float = LOSS_WEIGHTS["lambda3"],
        gamma: float = DEFAULT_GAMMA,
        global_ce: bool = True,
        label_smoothing: float = 0.0,
        fdrt_norm: str = "l1",
        competition_form: str = "paper",
        ihtl_self_positive: bool = False,
        distance: str = "squared",
        fdrt_form: str = "paper",
        competition_reduction: str = "mean",
        competition_threshold: float = CODE_THRESHOLD,
    ) -> None:
        super().__init__()
        for name, value in (("lambda1", lambda1), ("lambda2", lambda2), ("lambda3", lambda3)):
            if value < 0:
                raise ValueError(f"{name}={value!r} must be >= 0")
        if fdrt_norm not in NORMS:
            raise ValueError(f"fdrt_norm={fdrt_norm!r} must be one of {list(NORMS)}")
        if competition_form not in FORMS:
            raise ValueError(f"competition_form={competition_form!r} must be one of {list(FORMS)}")
        if lambda3 > 0 and competition_form == "paper" and gamma <= 0:
            raise ValueError(f"gamma={gamma!r} must be > 0")
        self.lambda1, self.lambda2, self.lambda3, self.gamma = lambda1, lambda2, lambda3, gamma
        self.global_ce = global_ce
        self.fdrt_norm = fdrt_norm
        self.competition_form = competition_form
        self.ihtl_self_positive = ihtl_self_positive
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        _check_authors_options(distance, fdrt_form, competition_reduction, competition_threshold)
        self.distance, self.fdrt_form = distance, fdrt_form
        self.competition_reduction, self.competition_threshold = competition_reduction, competition_threshold

    @classmethod
    def from_config(cls, loss_cfg: object) -> Criterion:
        """A Criterion from a config section: a dataclass (``mhsa.config.LossConfig``) or a dict whose keys
        are ``Criterion``'s arguments."""
        return cls(**(loss_cfg if isinstance(loss_cfg, dict) else vars(loss_cfg)))

    def forward(
        self, outputs: dict[str, torch.Tensor], pids: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weighted: dict[str, tuple[float, torch.Tensor]] = {}
        if self.global_ce:
            weighted["ce_global"] = (1.0, self._ce(outputs["logits_q"], pids))
        if "P" in outputs:
            weighted["ce_local"] = (1.0, self._ce(outputs["logits_p"], pids))
            weighted["triplet_local"] = (1.0, hard_triplet(outputs["p"], pids, self.distance))
            weighted["ce_residual"] = (1.0, self._ce(outputs["logits_z"], pids))
            weighted["triplet_residual"] = (1.0, hard_triplet(outputs["z"], pids, self.distance))
            if self.lambda1 > 0:
                weighted["fdrt"] = (self.lambda1, self._fdrt(outputs["P"]))
            if self.lambda2 > 0:
                weighted["ihtl"] = (
                    self.lambda2,
                    ihtl(outputs["P"], pids, self_positive=self.ihtl_self_positive, distance=self.distance),
                )
            if self.lambda3 > 0:
                weighted["competition"] = (
                    self.lambda3,
                    competition(outputs["alpha"], self.gamma, form=self.competition_form,
                                reduction=self.competition_reduction, code_threshold=self.competition_threshold),
                )
        if not weighted:
            raise ValueError(
                "no loss term is active: a Baseline output with global_ce=False has nothing to train"
            )
        total = sum(weight * value for weight, value in weighted.values())
        return total, {name: value.detach() for name, (_, value) in weighted.items()}

    def _ce(self, logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        # CE in float32: under autocast the logits may be half precision
        return self.ce(logits.float(), pids)

    def _fdrt(self, P: torch.Tensor) -> torch.Tensor:
        return fdrt_authors(P) if self.fdrt_form == "authors" else fdrt(P, norm=self.fdrt_norm)


def _check_authors_options(distance: str, fdrt_form: str, reduction: str, threshold: float) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r} must be one of {list(DISTANCES)}")
    if fdrt_form not in FDRT_FORMS:
        raise ValueError(f"fdrt_form={fdrt_form!r} must be one of {list(FDRT_FORMS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"competition_reduction={reduction!r} must be one of {list(REDUCTIONS)}")
    if not threshold > 0:
        raise ValueError(f"competition_threshold={threshold!r} must be > 0")
