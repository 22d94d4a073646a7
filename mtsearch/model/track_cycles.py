"""The tracking branch's cycles, walked, and what they are scored by (thesis eq. 3.3).

How a walk runs: the 3k+k(k+1)/2 tracker steps of a clip are independent chains of steps (the
backward chain, k long cycles, k skip cycles), so every step at the same depth runs as one
batched call: 2k calls per batch instead of one per step, with no host sync anywhere.

The scores: `negative_cosine` (l_sim), the grid loss between the theta a cycle brings home and
theta_gt (`cycle_losses`, the thesis's l_skip and l_long), or, with `track.cycle_loss: walk`, the
cross-entropy of each cycle's last affinity (`walk_losses`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mtsearch.model.track_geometry import TRUNK_STRIDE, to_cell_units

GRID_POINTS = 20  # the theta loss compares transformed points of a 20x20 grid over [-1, 1]^2
# one batched tracker step: (queries, frames, features to crop) -> (theta, crops, logits)
Step = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor | None],
    tuple[torch.Tensor, torch.Tensor | None, torch.Tensor],
]


def grid_points(device: torch.device | None = None) -> torch.Tensor:
    """(400, 3) homogeneous points of a 20x20 grid over [-1, 1]^2."""
    axis = torch.linspace(-1, 1, GRID_POINTS, device=device)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    xs, ys = xs.flatten(), ys.flatten()
    return torch.stack([xs, ys, torch.ones_like(xs)], dim=1)


def grid_loss(
    theta: torch.Tensor, theta_gt: torch.Tensor, points: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample mean squared distance of a 20x20 grid of points mapped by both affines -> (N,).

    TimeCycle's TransformedGridLoss: compares transforms, not pixels, so it is scale-free and cheap.
    `points` (from `grid_points`) saves rebuilding the grid on every call.
    """
    if points is None:
        points = grid_points(theta.device)
    diff = points.to(theta.dtype) @ (theta - theta_gt).transpose(1, 2)  # (N, 400, 2)
    return diff.pow(2).sum(-1).mean(-1)


def negative_cosine(a_norm: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
    """l_sim per sample -> (N,): the thesis's negative Frobenius inner product of two patch features.

    Both (N, D, p, p) maps are L2-normalised per position (over channels) and the inner product is
    divided by the p*p positions, so l_sim is minus the mean cosine similarity, in [-1, 1]. Why this
    normalisation: the raw product of unnormalised ReLU features is unbounded below (growing the
    features lowers it without tracking anything); per-position unit vectors are the very features
    the affinities compare; and the mean makes the term's scale independent of track_dim and of the
    patch size, so lambda and w_track mean the same in every preset.
    """
    return -(a_norm * b_norm).sum(1).flatten(1).mean(1)


@dataclass
class _Chain:
    """One cycle's walk through the tracked frames: `path` is what is left to visit."""

    kind: str  # back | long | skip
    cycle: int  # i: the cycle reaches frame t - i*f
    path: list[int]  # tracked-frame indices still to visit (0 = target, i = t - i*f)
    query: torch.Tensor  # (B, D, p, p) L2-normalised patch feature it starts the next step from

    @property
    def needs_crop(self) -> bool:
        """Its next step feeds another step (or l_sim), not only a theta loss."""
        return self.kind == "back" or len(self.path) > 1


@dataclass
class Walk:
    """What one walk through the cycles produced."""

    q0_norm: torch.Tensor  # (B, D, p, p) the target patch's feature, unit vectors
    back_norm: list[torch.Tensor] = field(default_factory=list)  # per step back: the crop, unit
    back_theta: list[torch.Tensor] = field(default_factory=list)  # per step back: (B, 2, 3)
    home: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # cycle -> last theta
    home_logits: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # its affinity logits


def walk_cycles(step: Step, q0_norm: torch.Tensor, g_norm: torch.Tensor, g_crop: torch.Tensor,
                past_frames: int) -> Walk:
    """Every tracker step of the k long and k skip cycles, one batched `step` per depth.

    q0_norm (B, D, p, p): the target patch, where every chain starts; g_norm and g_crop
    (k+1, B, D, h, w): the tracked frames in tracking order (target, t-f, t-2f, ...) as unit
    vectors (what affinities compare) and as what gets cropped.
    """
    batch, k = q0_norm.shape[0], past_frames
    # every chain starts from the target patch: the backward chain (target -> t-f -> ...), and
    # the k skip cycles (target -> t-i*f -> target); the backward chain starts long cycle i
    # when it reaches t-i*f (-> t-(i-1)*f -> ... -> target)
    chains = [_Chain("back", 1, [1], q0_norm)]
    chains += [_Chain("skip", i, [i, 0], q0_norm) for i in range(1, k + 1)]
    walk = Walk(q0_norm)
    while chains:
        chains.sort(key=lambda c: not c.needs_crop)  # rows that need a crop come first
        cropped = [c.path[0] for c in chains if c.needs_crop]
        theta, crop, logits = step(
            torch.cat([c.query for c in chains]),
            torch.cat([g_norm[c.path[0]] for c in chains]),
            torch.cat([g_crop[j] for j in cropped]) if cropped else None,
        )
        crop_norm = F.normalize(crop, dim=1) if crop is not None else None
        next_chains = []
        for row, chain in enumerate(chains):
            rows = slice(row * batch, (row + 1) * batch)
            if not chain.needs_crop:  # the cycle is home: its theta goes to the loss
                walk.home[chain.kind, chain.cycle] = theta[rows]
                walk.home_logits[chain.kind, chain.cycle] = logits[rows]
                continue
            query = crop_norm[rows]
            if chain.kind == "back":
                i = chain.cycle
                walk.back_norm.append(query)
                walk.back_theta.append(theta[rows])
                if i < k:
                    next_chains.append(_Chain("back", i + 1, [i + 1], query))
                next_chains.append(_Chain("long", i, list(range(i - 1, -1, -1)), query))
            else:
                next_chains.append(_Chain(chain.kind, chain.cycle, chain.path[1:], query))
        chains = next_chains
    return walk


def _cycle_order(past_frames: int) -> list[tuple[str, int]]:
    """The long cycles 1..k, then the skip cycles 1..k: the rows of a (2, k, B) loss."""
    k = past_frames
    return [("long", i) for i in range(1, k + 1)] + [("skip", i) for i in range(1, k + 1)]


def cycle_losses(walk: Walk, patch_theta: torch.Tensor, past_frames: int,
                 points: torch.Tensor) -> torch.Tensor:
    """(2, k, B): the grid losses of the long cycles 1..k, then of the skip cycles 1..k."""
    k, batch = past_frames, patch_theta.shape[0]
    theta_end = torch.cat([walk.home[key] for key in _cycle_order(k)])
    cycle = grid_loss(theta_end, patch_theta.repeat(2 * k, 1, 1), points)
    return cycle.view(2, k, batch)


def walk_losses(walk: Walk, patch_theta: torch.Tensor, past_frames: int,
                cell_offsets: torch.Tensor, crop: int) -> torch.Tensor:
    """(2, k, B), `track.cycle_loss: walk`: the cross-entropy of each cycle's last affinity.

    For each cycle's last step (back into the target frame), its affinity is scored against where
    each patch cell truly belongs (bilinear weights on the frame's cells under theta_gt). It
    supervises the affinity itself, as a contrastive random walk does (Jabri et al. 2020), instead
    of only the theta read from it. cell_offsets (p*p, 2): the patch's cells in patch coordinates.
    """
    k, batch = past_frames, patch_theta.shape[0]
    points = patch_theta[:, :, :2] @ cell_offsets.T + patch_theta[:, :, 2:]  # (B, 2, p*p)
    cells = to_cell_units(points, crop)
    axis = torch.arange(crop // TRUNK_STRIDE, device=points.device, dtype=points.dtype)
    tent = (1 - (cells[..., None] - axis).abs()).clamp(min=0)  # (B, 2, p*p, h)
    target = (tent[:, 1, :, :, None] * tent[:, 0, :, None, :]).flatten(2)  # (B, p*p, h*w)
    target = target / target.sum(2, keepdim=True).clamp(min=1e-6)
    logits = torch.stack([walk.home_logits[key] for key in _cycle_order(k)]).float()  # (2k, B, p*p, h*w)
    ce = -(target * logits.log_softmax(dim=3)).sum(3).mean(2)  # (2k, B)
    return ce.view(2, k, batch)
