"""MHSA-Net losses (paper Eq 3-5, 8, 10-13): one small file per term, composed with explicit weights by
`Criterion`, each weighted term returned for logging."""

from mhsa.losses.competition import competition
from mhsa.losses.criterion import TERMS, Criterion
from mhsa.losses.fdrt import fdrt, fdrt_authors
from mhsa.losses.ihtl import ihtl
from mhsa.losses.triplet import hard_triplet

__all__ = ["TERMS", "Criterion", "competition", "fdrt", "fdrt_authors", "hard_triplet", "ihtl"]
