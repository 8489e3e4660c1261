"""Allowed values and defaults of the model and loss switches of the paper's ablations.

Torch-free, so that the run config, the study and the Snakefile check a config without importing
torch. `mhsa.model` re-exports the model's (also from `heads.py`, `backbone.py`, `build.py`),
`mhsa.losses.competition` and `mhsa.losses.fdrt` the losses'.
"""

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
