"""`mtsearch model`: the network stage by stage, like the thesis's Table 3.1.

Shapes, parameters and MACs come from `mtsearch.model.describe`, which builds the real modules on
the meta device, so the table is exact and appears in a couple of seconds even for `thesis`.
"""

from __future__ import annotations

import argparse

from mtsearch.cli import EXIT_OK
from mtsearch.config import TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.presets import branches_label

# the parser's defaults for --preset / --branches; with --config only other values override it
_DEFAULT_PRESET, _DEFAULT_BRANCHES = "thesis", "cls,track,dir"
_SOURCE = "command line"


def _config(args: argparse.Namespace) -> TrialConfig:
    """The config to show: --config's file (if any) with --preset/--branches applied on top."""
    from mtsearch.cli.train import load_config_file

    cfg = load_config_file(args.config) if args.config else TrialConfig()
    overrides = {}
    if not args.config or args.preset != _DEFAULT_PRESET:
        overrides["model.preset"] = args.preset
    if not args.config or args.branches != _DEFAULT_BRANCHES:
        overrides["model.branches"] = args.branches
    try:
        return cfg.with_overrides(overrides, _SOURCE)
    except InvalidInput as exc:  # name the flag the user typed, not the config key behind it
        flag = {"model.preset": "--preset", "model.branches": "--branches"}.get(exc.key)
        if flag is None:
            raise
        raise InvalidInput(_SOURCE, flag, exc.what, exc.got) from None


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(n) for n in shape)


def _gmacs(macs: int) -> str:
    """One format for the whole column: two decimals (a stage under 0.005 GMACs reads 0.00)."""
    return f"{macs / 1e9:.2f}"


def cmd_model(args: argparse.Namespace) -> int:
    if args.num_classes is None or args.num_classes < 1:
        raise InvalidInput(_SOURCE, "--num-classes", "must be >= 1", args.num_classes)
    cfg = _config(args)

    from rich.console import Console
    from rich.table import Table

    from mtsearch.model import describe  # torch

    rows = describe(cfg, args.num_classes)
    total = rows[-1]
    frames, crop = cfg.data.clip_frames, cfg.crop
    title = (
        f"{cfg.model.preset} preset · {branches_label(cfg.model.branches)} · "
        f"{args.num_classes} classes · input 3×{frames}×{crop}×{crop}"
    )
    table = Table(title=title, title_justify="left", show_footer=True)
    table.add_column("stage", "total", no_wrap=True)
    table.add_column("output", _shape(total.out_shape), no_wrap=True)
    table.add_column("layers", overflow="fold")
    table.add_column("params", f"{total.params:,}", justify="right", no_wrap=True)
    table.add_column("GMACs", _gmacs(total.macs), justify="right", no_wrap=True)
    for row in rows[:-1]:
        table.add_row(
            row.name, _shape(row.out_shape), row.layers, f"{row.params:,}", _gmacs(row.macs)
        )

    console = Console(highlight=False)
    console.print(table)
    notes = [f"{total.params / 1e6:.2f} M parameters, {total.macs / 1e9:.2f} GMACs per clip"]
    if cfg.has("track"):
        notes.append(
            f"tracking: patch {cfg.patch}×{cfg.patch}, k = {cfg.track.past_frames} past frames "
            f"at gap f = {cfg.track.frame_gap}; its stages run at training time only"
        )
    notes.append("MACs: convolutions, fc layers and affinities (forward); the patch re-uses the trunk")
    for note in notes:
        console.print(note)
    return EXIT_OK
