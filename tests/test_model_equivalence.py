"""Issue 8's fast path computes the landed network's function: 2D trunk, batched tracking steps.

The reference is `legacy_model.py`, a frozen copy of the 3D-trunk, step-by-step code; its state
dicts are the old checkpoint layout, so loading them also checks that old checkpoints load.
"""

from __future__ import annotations

import legacy_model as legacy
import pytest
import torch

from mtsearch.config import TrialConfig, thesis_tracking
from mtsearch.model import MultiBranchNet, compute_losses
from mtsearch.model.trunk import Trunk

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(preset: str = "tiny", **overrides: object) -> TrialConfig:
    """The landed network computed the thesis's tracking formula (issue 13 made it optional)."""
    return TrialConfig.from_mapping(
        {"model.preset": preset, **thesis_tracking(preset), **overrides}
    ).resolved()


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_2d_trunk_matches_the_3d_trunk_outputs_and_gradients(preset: str) -> None:
    cfg = config(preset)
    torch.manual_seed(0)
    old = legacy.Trunk(cfg.preset.width, cfg.preset.depths)
    legacy.init_weights(old)
    new = Trunk(cfg.preset.width, cfg.preset.depths)
    new.load_state_dict(old.state_dict())  # 5-D (out, in, 1, k, k) weights squeezed on load
    clips = torch.randn(2, 3, 5, cfg.crop, cfg.crop)
    probe = torch.randn(2, new.out_channels, 5, cfg.crop // 8, cfg.crop // 8)
    out_old, out_new = old(clips), new(clips)
    assert out_new.shape == out_old.shape
    assert max_rel(out_new, out_old) < 1e-5
    (out_old * probe).sum().backward()
    (out_new * probe).sum().backward()
    for (name, p_old), p_new in zip(old.named_parameters(), new.parameters()):
        assert max_rel(p_new.grad, p_old.grad.reshape(p_new.shape)) < 1e-5, name


@pytest.mark.parametrize(("batch", "branches"), [(4, "cls+track+dir"), (3, "cls+track+dir"), (2, "cls+track")])
def test_losses_and_gradients_equal_the_landed_network(batch: int, branches: str) -> None:
    """Same weights, same generator seed: same reversals, same patches, same losses and gradients."""
    cfg = config("tiny", **{"model.branches": branches})
    torch.manual_seed(0)
    old = legacy.MultiBranchNet(cfg, 7)
    new = MultiBranchNet(cfg, 7)
    new.load_state_dict(old.state_dict())
    clips = torch.randn(batch, 3, 13, cfg.crop, cfg.crop)
    labels = torch.randint(0, 7, (batch,))
    results = []
    for model, losses_of in ((old, legacy.compute_losses), (new, compute_losses)):
        out = model(clips, generator=torch.Generator().manual_seed(5))
        losses = losses_of(out, labels, cfg)
        losses["loss"].backward()
        results.append((out, losses, dict(model.named_parameters())))
    (out_old, losses_old, params_old), (out_new, losses_new, params_new) = results
    if out_old.dir_labels is not None:
        assert torch.equal(out_old.dir_labels, out_new.dir_labels)
    assert set(losses_old) == set(losses_new)
    for key in losses_old:
        assert losses_new[key].item() == pytest.approx(losses_old[key].item(), rel=1e-5, abs=1e-6)
    for term in ("sim", "skip", "long"):
        assert out_new.track_terms[term].item() == pytest.approx(
            out_old.track_terms[term].item(), rel=1e-5, abs=1e-6
        )
    assert set(params_old) == set(params_new)
    for name, p_new in params_new.items():
        grad_old = params_old[name].grad.reshape(p_new.shape)
        assert max_rel(p_new.grad, grad_old) < 1e-4, name


def test_old_layout_state_dict_loads_and_gives_the_same_logits() -> None:
    cfg = config("small")
    torch.manual_seed(1)
    old = legacy.MultiBranchNet(cfg, 5).eval()
    state = old.state_dict()
    assert state["trunk.conv1.0.weight"].dim() == 5  # the landed layout
    new = MultiBranchNet(cfg, 5).eval()
    new.load_state_dict(state)
    assert new.trunk.conv1[0].weight.dim() == 4
    clips = torch.randn(2, 3, 13, cfg.crop, cfg.crop)
    with torch.no_grad():
        a = old(clips, track=False, generator=torch.Generator().manual_seed(0))
        b = new(clips, track=False, generator=torch.Generator().manual_seed(0))
    assert max_rel(b.logits, a.logits) < 1e-5
    assert max_rel(b.dir_logits, a.dir_logits) < 1e-5


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
    with torch.no_grad():
        want, got = plain(clips, track=False, draws=draws), compiled(clips, track=False, draws=draws)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.dir_logits, want.dir_logits, rtol=1e-4, atol=1e-4)


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
    results = []
    for model in (plain, compiled):
        out = model(clips, draws=draws)
        losses = compute_losses(out, labels, cfg)
        losses["loss"].backward()
        results.append((losses["loss_track"].detach(), {n: p.grad for n, p in model.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name, grad in want_grads.items():
        assert max_rel(got_grads[name], grad) < 1e-4, name
    assert compiled.tracking._compiled is not None
    compiled.eval()  # the probe's path: eager, whatever the batch
    feat = compiled.trunk(clips).detach()
    cycle, _, _ = compiled.tracking.probe(feat, clips, compiled.trunk.frames, draws.patch_theta)
    plain.eval()
    want_cycle, _, _ = plain.tracking.probe(feat, clips, plain.trunk.frames, draws.patch_theta)
    torch.testing.assert_close(cycle, want_cycle)
