"""Issue 8's fast path computes the landed network's function: 2D trunk, batched tracking steps.

The reference is `legacy_model.py`, a frozen copy of the 3D-trunk, step-by-step code; its state
dicts are the old checkpoint layout, so loading them also checks that old checkpoints load.

How the comparisons hold on any CPU (issue 19): both implementations also run in float64, where
they must agree to float64's rounding, so the float64 comparison is the one that says "the same
function". The float32 runs (the path that trains) are compared with that float64 reference, the
error measured over a whole tensor, ||a - ref|| / ||ref||, against a bound derived from float32's
rounding (`rounding_bound`), never element by element: other kernels and thread counts sum in
another order, which moves tiny elements by more than their own size.
"""

from __future__ import annotations

import copy
import math

import legacy_model as legacy
import pytest
import torch
from torch import nn

from mtsearch.config import TrialConfig
from mtsearch.model import MultiBranchNet, compute_losses
from mtsearch.model.trunk import Trunk
from mtsearch.presets import thesis_tracking
from mtsearch.records import squeezed_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

U32, U64 = 2.0**-24, 2.0**-53  # unit roundoff of float32 and float64

# float32 gradients against float64 ones, measured over the whole gradient (every parameter's
# together). A gradient is not a smooth function at float32's scale: where rounding moves a
# pre-activation across 0 (a ReLU) or reorders a near-tie (a max pool), a whole term of a gradient
# sum moves. In float64, moving the weights by 1e-7 of themselves moved the tiny network's gradient
# by up to 4e-2 of its norm (by 1e-8: 2.5e-7). Measured float32 errors, 1 and 2 threads: trunk
# tiny <= 2.6e-6, small <= 5.4e-3 (3 seeds); whole tiny network <= 3.9e-2 (3 configurations x 4
# seeds). This bound catches a wrong gradient, not rounding: the float64 comparisons bound that.
GRAD32_BOUND = 0.25


def config(preset: str = "tiny", **overrides: object) -> TrialConfig:
    """The landed network computed the thesis's tracking formula (issue 13 made it optional)."""
    return TrialConfig.from_mapping(
        {"model.preset": preset, **thesis_tracking(preset), **overrides}
    ).resolved()


def load_old_layout(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state_dict of the 3D layout as a checkpoint of that era loads (records.py)."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    model.load_state_dict(squeezed_weights(state, shapes))


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64: the error of a tensor as a whole."""
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def rounding_bound(model: nn.Module, positions: int = 1, u: float = U32) -> float:
    """L * sqrt(N) * u: how far rounding can move a result of `model` from the exact one, relative
    to its norm. The model has L weight layers (convolutions and linears; the longest path has
    fewer), each a sum of at most N terms: a layer's in_channels x kernel volume, or the
    `positions` B*T*H*W that a batch-norm statistic or a weight's gradient sums over. A sum of N
    terms of mixed sign, rounded in any order, is off by about sqrt(N) * u of its terms' size (N * u
    only if every rounding went the same way), and the layers' errors add up."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]
    terms = max(positions, *(m.weight[0].numel() for m in layers))
    return len(layers) * math.sqrt(terms) * u


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter's gradient, flattened (the 3D trunk's weights are (out, in, 1, k, k))."""
    return {name: p.grad.reshape(-1) for name, p in model.named_parameters()}


def whole(gradients: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.double() for g in gradients.values()])


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_2d_trunk_matches_the_3d_trunk_outputs_and_gradients(preset: str) -> None:
    cfg = config(preset)
    torch.manual_seed(0)
    old = legacy.Trunk(cfg.preset.width, cfg.preset.depths)
    legacy.init_weights(old)
    new = Trunk(cfg.preset.width, cfg.preset.depths)
    load_old_layout(new, old.state_dict())  # 5-D (out, in, 1, k, k) weights squeezed
    old64, new64 = copy.deepcopy(old).double(), copy.deepcopy(new).double()
    clips = torch.randn(2, 3, 5, cfg.crop, cfg.crop)
    probe = torch.randn(2, new.out_channels, 5, cfg.crop // 8, cfg.crop // 8)
    outs, gradients = {}, {}
    for name, trunk in (("old", old), ("new", new), ("old64", old64), ("new64", new64)):
        dtype = torch.float64 if name.endswith("64") else torch.float32
        out = trunk(clips.to(dtype))
        (out * probe.to(dtype)).sum().backward()
        outs[name], gradients[name] = out.detach(), grads(trunk)
    assert outs["new"].shape == outs["old"].shape
    assert list(gradients["new"]) == list(gradients["old"])
    ref, ref_grads = outs["old64"], gradients["old64"]
    positions = 2 * 5 * (cfg.crop // 2) ** 2  # after conv1: B*T*H*W

    # The same function: float64 agrees to float64's rounding. The outputs: rounding_bound (tiny
    # 2.2e-13, small 6.3e-13); measured 0. A gradient relative to its own norm: a batch-norm
    # bias's gradient sums N terms of both signs that cancel to ~1/sqrt(N) of their size, so the
    # bound is L * N * u (tiny 3.3e-11, small 1.4e-10); measured <= 5.2e-14.
    assert rel_err(outs["new64"], ref) <= rounding_bound(old, positions, U64)
    for name, grad in gradients["new64"].items():
        bound = rounding_bound(old, positions, U64) * math.sqrt(positions)
        assert rel_err(grad, ref_grads[name]) <= bound, name

    # float32, both implementations: outputs within rounding_bound (tiny 1.2e-4, small 3.4e-4) of
    # the float64 reference; measured 1.6e-6 and 6.1e-6 (3 seeds, 1 and 2 threads).
    for impl in ("old", "new"):
        assert rel_err(outs[impl], ref) <= rounding_bound(old, positions), impl
        assert rel_err(whole(gradients[impl]), whole(ref_grads)) <= GRAD32_BOUND, impl


@pytest.mark.parametrize(("batch", "branches"), [(4, "cls+track+dir"), (3, "cls+track+dir"), (2, "cls+track")])
def test_losses_and_gradients_equal_the_landed_network(batch: int, branches: str) -> None:
    """Same weights, same generator seed: same reversals, same patches, same losses and gradients."""
    cfg = config("tiny", **{"model.branches": branches})
    torch.manual_seed(0)
    old = legacy.MultiBranchNet(cfg, 7)
    new = MultiBranchNet(cfg, 7)
    load_old_layout(new, old.state_dict())
    old64, new64 = copy.deepcopy(old).double(), copy.deepcopy(new).double()
    clips = torch.randn(batch, 3, 13, cfg.crop, cfg.crop)
    labels = torch.randint(0, 7, (batch,))
    runs = {}
    for name, model, losses_of in (("old", old, legacy.compute_losses), ("new", new, compute_losses),
                                   ("old64", old64, legacy.compute_losses),
                                   ("new64", new64, compute_losses)):
        dtype = torch.float64 if name.endswith("64") else torch.float32
        out = model(clips.to(dtype), generator=torch.Generator().manual_seed(5))
        losses = losses_of(out, labels, cfg)
        losses["loss"].backward()
        values = {**losses, **{f"track_{term}": v for term, v in out.track_terms.items()}}
        runs[name] = (out.dir_labels, {k: v.item() for k, v in values.items()}, grads(model))
    ref_dir, ref, ref_grads = runs["old64"]
    for name, (dir_labels, values, gradients) in runs.items():
        if ref_dir is not None:
            assert torch.equal(dir_labels, ref_dir), name  # the same host draws
        assert set(values) == set(ref) and list(gradients) == list(ref_grads), name

    # The same function, in float64. The new tracker rounds each step's theta to float32 (so that
    # bf16 autocast keeps float32 geometry) and builds the grid loss's points in float32, so the
    # two differ by float32 roundings (6e-8) carried through the walk: measured <= 1.1e-7 in a loss
    # and <= 3.9e-6 of a gradient's norm (3 configurations x 4 seeds, 1 and 2 threads).
    _, values, gradients = runs["new64"]
    for key, want in ref.items():
        assert abs(values[key] - want) <= 1e-5 * max(abs(want), 1.0), key
    for name, grad in gradients.items():
        assert rel_err(grad, ref_grads[name]) <= 1e-4, name

    # float32, both implementations: losses within rounding_bound (batch 4: 6.8e-4) of float64;
    # measured <= 4.2e-7. Gradients: see GRAD32_BOUND.
    bound = rounding_bound(old, batch * 13 * (cfg.crop // 2) ** 2)
    for impl in ("old", "new"):
        _, values, gradients = runs[impl]
        for key, want in ref.items():
            assert abs(values[key] - want) <= bound * max(abs(want), 1.0), (impl, key)
        assert rel_err(whole(gradients), whole(ref_grads)) <= GRAD32_BOUND, impl


def test_old_layout_state_dict_loads_and_gives_the_same_logits() -> None:
    cfg = config("small")
    torch.manual_seed(1)
    old = legacy.MultiBranchNet(cfg, 5).eval()
    state = old.state_dict()
    assert state["trunk.conv1.0.weight"].dim() == 5  # the landed layout
    new = MultiBranchNet(cfg, 5).eval()
    load_old_layout(new, state)
    assert new.trunk.conv1[0].weight.dim() == 4
    old64, new64 = copy.deepcopy(old).double(), copy.deepcopy(new).double()
    clips = torch.randn(2, 3, 13, cfg.crop, cfg.crop)
    outs = {}
    with torch.no_grad():
        for name, model in (("old", old), ("new", new), ("old64", old64), ("new64", new64)):
            dtype = torch.float64 if name.endswith("64") else torch.float32
            outs[name] = model(clips.to(dtype), track=False, generator=torch.Generator().manual_seed(0))
    ref = outs["old64"]
    # float64: the same function to float64's rounding (measured: equal); float32: within
    # rounding_bound (eval mode, the longest sum is conv5_x's 3x3x3 over 256 channels: 2.2e-4) of
    # it, measured <= 5.4e-7 (3 seeds, 1 and 2 threads).
    for name, u in (("new64", U64), ("old", U32), ("new", U32)):
        assert rel_err(outs[name].logits, ref.logits) <= rounding_bound(old, u=u), name
        assert rel_err(outs[name].dir_logits, ref.dir_logits) <= rounding_bound(old, u=u), name


def test_draws_come_from_the_host_generator_in_the_landed_order() -> None:
    cfg = config("tiny")
    model = MultiBranchNet(cfg, 3)
    a = model.draw(5, torch.Generator().manual_seed(9))
    b = model.draw(5, torch.Generator().manual_seed(9))
    assert torch.equal(a.reverse, b.reverse) and torch.equal(a.patch_theta, b.patch_theta)
    assert a.reverse.dtype == torch.bool and a.patch_theta.shape == (5, 2, 3)
    gen = torch.Generator().manual_seed(9)  # the landed order: reversals, then patches
    legacy.reverse_half(torch.zeros(5, 1, 2, 1, 1), gen)
    assert torch.equal(legacy.random_patch_theta(5, model.tracking.scale, gen), a.patch_theta)
    assert model.draw(5, torch.Generator().manual_seed(9), track=False).patch_theta is None


@pytest.mark.slow
def test_compiled_stages_compute_the_same_network(one_torch_thread):
    """`compile: true` (issue 8): torch.compile of trunk and heads changes speed, not the function,
    and leaves parameter names alone, so checkpoints move between compiled and plain runs."""
    cfg = TrialConfig.from_mapping({"model.preset": "tiny"}).resolved()
    torch.manual_seed(0)
    plain = MultiBranchNet(cfg, 6).eval()
    compiled = MultiBranchNet(cfg, 6).eval()
    compiled.load_state_dict(plain.state_dict())
    compiled.compile_stages()
    assert list(compiled.state_dict()) == list(plain.state_dict())
    clips = torch.randn(2, 3, cfg.data.clip_frames, cfg.crop, cfg.crop)
    draws = plain.draw(2, torch.Generator().manual_seed(1), track=False)
    plain64 = copy.deepcopy(plain).double()
    with torch.no_grad():
        want, got = plain(clips, track=False, draws=draws), compiled(clips, track=False, draws=draws)
        ref = plain64(clips.double(), track=False, draws=draws)
    # compiled kernels sum in another order: both within rounding_bound (7.4e-5) of float64,
    # measured <= 3.9e-7 (2 seeds)
    for out in (want, got):
        assert rel_err(out.logits, ref.logits) <= rounding_bound(plain)
        assert rel_err(out.dir_logits, ref.dir_logits) <= rounding_bound(plain)


@pytest.mark.slow
@pytest.mark.parametrize("formula", ["thesis", "centred crop"])
def test_compiled_tracker_steps_train_like_the_eager_ones(formula: str) -> None:
    """`compile` also compiles the tracker's training steps (issue 8): the same l_track and the
    same gradients as the eager walk, for the thesis's formula (re-encoded target patch) and for a
    centred, cropped target; evaluation's probe keeps the eager steps."""
    keys = {} if formula == "thesis" else {"track.target_patch": "crop", "track.center_features": True}
    cfg = config("tiny", **{"model.branches": "cls+track", **keys})
    torch.manual_seed(0)
    plain = MultiBranchNet(cfg, 6)
    compiled = MultiBranchNet(cfg, 6)
    compiled.load_state_dict(plain.state_dict())
    compiled.tracking.compile_steps()
    clips = torch.randn(2, 3, cfg.data.clip_frames, cfg.crop, cfg.crop)
    labels = torch.tensor([1, 4])
    draws = plain.draw(2, torch.Generator().manual_seed(3))
    plain64 = copy.deepcopy(plain).double()
    results = []
    for model in (plain, compiled, plain64):
        out = model(clips.to(next(model.parameters()).dtype), draws=draws)
        losses = compute_losses(out, labels, cfg)
        losses["loss"].backward()
        results.append((losses["loss_track"].item(), grads(model)))
    (want, want_grads), (got, got_grads), (ref, ref_grads) = results
    # l_track: both within rounding_bound (3.6e-4) of float64; measured <= 8.0e-7 (2 seeds)
    bound = rounding_bound(plain, 2 * cfg.data.clip_frames * (cfg.crop // 2) ** 2)
    assert abs(want - ref) <= bound * abs(ref) and abs(got - ref) <= bound * abs(ref)
    assert rel_err(whole(want_grads), whole(ref_grads)) <= GRAD32_BOUND
    assert rel_err(whole(got_grads), whole(ref_grads)) <= GRAD32_BOUND
    # Compiled against eager, tensor by tensor: the trunk runs eagerly in both, bit for bit, so
    # they differ only by how the fused tracker steps round (float32, 6e-8 a value), carried back
    # into each gradient: measured <= 1.6e-5 of a gradient's norm (conv1's batch-norm bias, whose
    # sum cancels; 2 formulas x 8 seeds, 1 and 2 threads), while scaling one tracker weight by
    # 1 + 1e-3 moves its gradient by 1e-3.
    for name, grad in want_grads.items():
        assert rel_err(got_grads[name], grad) <= 2e-4, name
    assert compiled.tracking._compiled is not None
    compiled.eval()  # the probe's path: eager, whatever the batch
    feat = compiled.trunk(clips).detach()
    cycle, _, _ = compiled.tracking.probe(feat, clips, compiled.trunk.frames, draws.patch_theta)
    plain.eval()
    want_cycle, _, _ = plain.tracking.probe(feat, clips, plain.trunk.frames, draws.patch_theta)
    assert torch.equal(cycle, want_cycle)  # the same eager code on the same values: bit for bit
