"""Allowed values and defaults of the model and loss switches of the paper's ablations.

Torch-free, so that the run config, the study and the Snakefile check a config without importing
torch. `mhsa.model` re-exports the model's (also from `heads.py`, `backbone.py`, `build.py`),
`mhsa.losses.competition` and `mhsa.losses.fdrt` the losses'.
"""

FUSIONS = ("saffm", "concat", "sum")  # Table VIII
BACKBONES = ("resnet18", "resnet34", "resnet50")
# 1: the paper (stage 4 keeps the resolution, Q(x) is 1/16 of the input); 2: torchvision's ResNet
LAST_STRIDES = (1, 2)
# 2: the paper's Eq 1 MLP; 3: the authors' public code
ATTENTION_LAYERS = (2, 3)

# switch -> default; the defaults are the paper's full MHSA-Net
SWITCHES: dict[str, object] = {
    "mhsam": True,
    "fusion": "saffm",
    "residual": True,
    "last_stride": 1,
    "attention_layers": 2,
    "feat_dim": 512,
}

# The paper's threshold gamma of Eq 12 (Sec. VII-B); the run config and the study default to it.
DEFAULT_GAMMA = 1e-3
COMPETITION_FORMS = ("paper", "code")  # L_C as Eq 12, or as the authors' code
FDRT_NORMS = ("l1", "fro")  # Eq 3 as written, or the Frobenius norm of the text and the code
