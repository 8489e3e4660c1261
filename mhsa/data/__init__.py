"""Re-ID data: benchmark parsers (``datasets``), synthetic stand-ins (``synthetic``), the P x K
sampler (``sampler``), transforms (``transforms``) and the torch dataset (``loader``).

Submodules are imported on demand so that parsing and generating data does not import torch.
"""
