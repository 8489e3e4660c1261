"""Allowed values and defaults of the model and loss switches of the paper's ablations.

Torch-free, so that the run config, the study and the Snakefile check a config without importing
torch. `mhsa.model` re-exports the model's (also from `heads.py`, `backbone.py`, `build.py`),
`mhsa.losses.competition` and `mhsa.losses.fdrt` the losses'.
"""

import math
from dataclasses import dataclass

FUSIONS = ("saffm", "concat", "sum")  # Table VIII
BACKBONES = ("resnet18", "resnet34", "resnet50")
# 1: the paper (stage 4 keeps the resolution, Q(x) is 1/16 of the input); 2: torchvision's ResNet
LAST_STRIDES = (1, 2)
# 2: the paper's Eq 1 MLP; 3: one more hidden layer (the authors' MLP is ATTENTION_MLPS' "authors")
ATTENTION_LAYERS = (2, 3)

# The authors' public code as a second reading (mhsa/model/authors.py, docs/paper-to-code.md "Two readings"):
# each tuple's first value is the paper's reading and the default.
ATTENTION_SOFTMAXES = ("heads", "positions")  # alpha over the K heads per position (Eq 1), or per head over h*w
ATTENTION_MLPS = ("paper", "authors")  # C->512->K, or the code's C->1024->256->K
SAFFM_FORMS = ("paper", "authors")  # Eq 6-7, or one scalar weight per head and a LayerNorm on p*
INITS = ("paper", "authors")  # initialisation of the heads
PARAM_SETS = ("all", "authors")  # what the optimiser updates: everything, or the code's get_optim_policy
WARMUPS = ("linear", "staircase")  # Sec. VII-B, or lr = 1e-4 * (epoch // 5 + 1)
DISTANCES = ("squared", "euclidean")  # triplet and IHTL on squared or square-rooted distances
AUTHORS_SWITCHES: dict[str, object] = {
    "attention_softmax": ATTENTION_SOFTMAXES[0],
    "attention_mlp": ATTENTION_MLPS[0],
    "saffm_form": SAFFM_FORMS[0],
    "z_layernorm": False,  # True: one more LayerNorm on z after the residual sum (e)
    "extra_bottleneck": False,  # True: a randomly initialised Bottleneck after layer4 (f)
    "shared_classifier": False,  # True: one classifier for q*, p* and z (g, with loss.global_ce=False)
    "residual_detach_q": False,  # True: q* enters the RLM without its gradient (A2)
    "init": INITS[0],
}

# switch -> default; the defaults are the paper's full MHSA-Net
SWITCHES: dict[str, object] = {
    "mhsam": True,
    "fusion": "saffm",
    "residual": True,
    "last_stride": 1,
    "attention_layers": 2,
    "feat_dim": 512,
    **AUTHORS_SWITCHES,
}

# The paper's loss weights of Eq 11 and 13 (Sec. VII-B, the full MHSA-Net); LossConfig and Criterion default to them.
LOSS_WEIGHTS = {"lambda1": 1e-4, "lambda2": 1.0, "lambda3": 1e-3}
# The paper's threshold gamma of Eq 12 (Sec. VII-B); the run config and the study default to it.
DEFAULT_GAMMA = 1e-3
COMPETITION_FORMS = ("paper", "code")  # L_C as Eq 12, or as the authors' code
FDRT_NORMS = ("l1", "fro")  # Eq 3 as written, or the Frobenius norm of the text and the code
COMPETITION_REDUCTIONS = ("mean", "sum")  # L_C averaged (paper) or summed over the batch (authors' code)
# competition_form "code": the authors' root loss.py:278 hard-codes this threshold instead of gamma
# (their utils/loss.py:289 has 1e-3)
COMPETITION_CODE_THRESHOLD = 0.01
FDRT_FORMS = ("paper", "authors")  # Eq 3, or the code's Gram of un-normalised P scaled by 1/25
RERANK_INPUTS = ("squared", "euclidean")  # what re-ranking is fed: torchreid's form, or the authors'


def feature_map_size(height: int, width: int, last_stride: int = 1) -> tuple[int, int]:
    """(h, w) of Q(x), the ResNet's last feature map, for an input of height x width: the stem and
    stages 2-3 each halve with ceil (conv/pool arithmetic with padding), stage 4 by `last_stride`."""
    def down(n: int) -> int:
        for stride in (2, 2, 2, 2, last_stride):  # conv1, max-pool, layer2, layer3, layer4
            n = -(-n // stride)
        return n

    return down(height), down(width)

# The instruction set of the CPU kernels (mhsa.run.cpu_kernels): this CPU's own, or pinned so that CPU runs
# repeat bit for bit across x86-64 machines (docs/reliability.md "Across machines").
CPU_KERNEL_LEVELS = ("native", "portable", "avx2")


# ------------------------------------------------------------------------------------------ bounds
@dataclass(frozen=True)
class Range:
    """The allowed values of one numeric knob: lo <= v <= hi (an end left out with None; `lo_open` /
    `hi_open`: that end excluded). Floats must also be finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def text(self) -> str:
        """'>= 0', '> 0', 'in [0, 1]', 'in (0, 1]', ..."""
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


NONNEG, POSITIVE, COUNT, UNIT = Range(0), Range(0, lo_open=True), Range(1), Range(0, 1)
# Every int and float knob of the run config, with its range: the one place bounds live
# (docs/architecture.md, "Where each allowed value and default lives"). `mhsa.config.validate` checks each (the
# synthetic generator checks its own parameters against them too); tests/test_schema_drift.py fails
# when a numeric field of any section has no entry here, or mhsa/study/config.schema.yaml
# states other bounds.
# Relations between knobs (warm-up within the epochs, K within the feature map, P within the
# identities) are checked in code below and by the data checks.
BOUNDS: dict[str, Range] = {
    "seed": NONNEG,  # seeds the sampler's numpy Generator, which takes no negative seed
    "threads": NONNEG,  # 0: torch's default
    "checkpoint_every": NONNEG,  # 0: only after the last epoch
    "model.num_heads": COUNT,
    "model.last_stride": Range(1, 2),  # also one of switches.LAST_STRIDES
    "model.attention_layers": Range(2, 3),  # also one of switches.ATTENTION_LAYERS
    "model.feat_dim": COUNT,
    "loss.lambda1": NONNEG,
    "loss.lambda2": NONNEG,
    "loss.lambda3": NONNEG,
    "loss.gamma": POSITIVE,
    "loss.label_smoothing": Range(0, 1, hi_open=True),  # 1 would leave no label at all
    "loss.competition_threshold": POSITIVE,
    "data.height": Range(16),
    "data.width": Range(16),
    "data.p": Range(2),  # the triplet losses need two identities per batch
    "data.k": Range(2),  # ... and two images per identity
    "data.random_erasing": UNIT,  # a probability
    "data.pad": NONNEG,  # pixels of padding before the random crop
    "data.workers": NONNEG,
    "data.test_batch": COUNT,
    "data.cache_max_gb": NONNEG,
    "optim.lr": POSITIVE,
    "optim.weight_decay": NONNEG,
    "optim.momentum": UNIT,
    "optim.warmup_epochs": NONNEG,  # and <= optim.epochs
    "optim.warmup_factor": Range(0, 1, lo_open=True),  # the warm-up's first lr is lr * warmup_factor
    "optim.milestones": NONNEG,  # each milestone (epochs), strictly increasing
    "optim.decay": NONNEG,
    "optim.epochs": COUNT,
    "optim.grad_clip": NONNEG,  # 0: no clipping
    "eval.every": NONNEG,  # 0: evaluate at the end only
    "eval.rerank_k1": COUNT,
    "eval.rerank_k2": COUNT,
    "eval.rerank_lambda": UNIT,
    "eval.attention_images": COUNT,
    # the synthetic generator's parameters (data.synthetic, a mapping; mhsa.data.synthetic.generate)
    "data.synthetic.seed": NONNEG,
    "data.synthetic.num_ids": COUNT,
    "data.synthetic.images_per_id": Range(3),  # one train, one query, one gallery image at least
    "data.synthetic.num_cams": Range(2),  # query and gallery cameras differ
    "data.synthetic.height": Range(15),  # the generator's clutter needs height // 3 > 4 pixels
    "data.synthetic.width": Range(10),  # ... and width // 2 > 4
}
