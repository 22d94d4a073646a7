"""The thesis's multi-branch network: trunk, heads, tracking branch, losses, stage summary.

Importing this package imports torch; the CLI imports it only inside `mtsearch model`/`train`.
"""

from mtsearch.model.multibranch import BranchOutputs, MultiBranchNet, compute_losses
from mtsearch.model.summary import StageInfo, describe

__all__ = ["BranchOutputs", "MultiBranchNet", "StageInfo", "compute_losses", "describe"]
