"""Loss constants and option enums, importable without torch (the typed config needs them).

It sits outside the ``losses`` package, whose import loads every loss (and torch); see
:mod:`lidar_ssl_core.losses.st_slidr` for what each option means.
"""

from __future__ import annotations

from enum import Enum

DEFAULT_TEMPERATURE = 0.07  # SLidR / ST-SLidR code (NCE_temperature)
DEFAULT_NUM_MATCHES = 4096  # PPKT pairs per batch (num_matches)


class STForm(str, Enum):
    """Which reading of ST-SLidR to compute (see the module table)."""

    PAPER = "paper"
    AUTHORS_CODE = "authors_code"


class Tolerance(str, Enum):
    """How semantically similar negatives are tolerated."""

    KNN = "knn"  # Eqs. 5-6, used by ST-SLidR
    ALPHA = "alpha"  # Eq. 2 (with alpha_min)
    NONE = "none"  # plain InfoNCE (SLidR), e.g. balancing alone


class VoteNorm(str, Enum):
    """How Eq. 7's votes are normalised (module docstring)."""

    MINMAX = "minmax"  # (v - v_min) / (v_max - v_min): the paper's text and the authors' code
    PRINTED = "printed"  # (v - v_min) / v_max: the paper's printed formula
