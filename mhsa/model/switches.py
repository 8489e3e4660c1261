"""Allowed values and defaults of the model switches (torch-free, so that the run config, the
study and the Snakefile can check a config without importing torch)."""

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
