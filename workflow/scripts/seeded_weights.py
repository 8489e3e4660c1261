"""Snakemake adapter: the seeded random weights of one ResNet (`model.pretrained: seeded`, the rehearsal
preset), written once per results directory and loaded by every cell through `model.pretrained: <path>`."""

# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script directive)
from wf_common import add_repo_to_path

add_repo_to_path(__file__)

import torch  # noqa: E402

from mhsa.io import atomic_write  # noqa: E402
from mhsa.model.backbone import seeded_state_dict  # noqa: E402
from mhsa.run.job_log import log_to  # noqa: E402


def _save(state: dict, tmp: str) -> None:
    with open(tmp, "wb") as fh:  # a file object: torch keeps the errno of a full disk
        torch.save(state, fh)


with log_to(snakemake.log[0]) as log:
    backbone, seed = snakemake.wildcards.backbone, int(snakemake.params.seed)
    state = seeded_state_dict(backbone, seed)
    atomic_write(snakemake.output[0], lambda tmp: _save(state, tmp))
    log.info("seeded random %s weights (seed %d, %d tensors) at %s", backbone, seed, len(state), snakemake.output[0])
