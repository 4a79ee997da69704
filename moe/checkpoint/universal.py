"""Resume an AutoEP run (`moe.impl: autoep`) at another layout through DeepSpeed's own universal checkpoint.

Unlike native MoE (moe/checkpoint/layout_free.py: universal checkpointing skips its experts, DeepSpeed issue 5716),
DeepSpeed 0.19.8 converts AutoEP experts: `deepspeed.checkpoint.ds_to_universal` consolidates the per-rank expert
files and ZeRO-1/2/3 optimizer shards into one fp32 tensor (and its Adam moments) per parameter, experts stacked as
(E, ...), and `load_checkpoint` with `load_universal` slices them for any autoep_size and data-parallel size
(deepspeed/checkpoint/universal_checkpoint.py `_resolve_autoep_partition`). Run on the tiny AutoEP Mixtral
(tests/checkpoint/test_universal.py; the next-but-one loss after the resume against the uninterrupted run; the
measured effect of each slip is in benchmarks/RESULTS.md):
- ZeRO-1/2 -> ZeRO-1/2, EP 2 -> 1, 1 -> 2, 2 ranks -> 1: DeepSpeed alone is exact;
- ZeRO-3 -> ZeRO-3 at another EP size: it loads, but the optimizer state is wrong, see `load_converted`;
- ZeRO-1/2 <-> ZeRO-3: it does not load (model-states name, then optimizer_state.pt format), see the two shims.
So the weights and Adam moments are DeepSpeed's; our own code is only the few lines below that make one converted
folder readable by every stage's loader and undo the ZeRO-3 loader's two slips.

    <tag>/universal/   ds_to_universal's output (zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt, the model-states
                       files with the LR schedule, step counters and client state) and COMPLETE, written last
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from moe.checkpoint.metadata import COMPLETE, UNIVERSAL


def universal_dir(tag_dir: Path) -> Path:
    return tag_dir / UNIVERSAL


def is_converted(tag_dir: Path) -> bool:
    return (universal_dir(tag_dir) / COMPLETE).is_file()


def run_ds_to_universal(tag_dir: Path, out_dir: Path, timeout: float | None = None) -> None:
    """DeepSpeed's converter on one checkpoint tag: an offline single process, whatever the layout that saved it.

    It reads every file under its input folder recursively (deepspeed/checkpoint/reshape_utils.py `get_files`,
    an os.walk), so a tag that already holds `universal/` (or any subfolder) would count its model-states files
    twice; it is given a folder of links to the tag's own top-level files instead."""
    with tempfile.TemporaryDirectory(prefix="moe-ds-checkpoint-") as staging:
        for path in tag_dir.iterdir():
            if path.is_file():
                (Path(staging) / path.name).symlink_to(path.resolve())
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            staging,
            "--output_folder",
            str(out_dir),
            "--num_extract_workers",
            "1",
            "--num_merge_workers",
            "1",
        ]
        env = dict(os.environ, DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"ds_to_universal failed on {tag_dir} (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
            f"{proc.stderr[-4000:]}"
        )
    # It also points a `latest_universal` file in the output's parent at the output; we always load by name.
    (out_dir.parent / "latest_universal").unlink(missing_ok=True)


def _name_model_states_for_every_stage(out_dir: Path) -> None:
    """Our own shim, so that a ZeRO-1/2 conversion resumes under ZeRO-3 and back.

    The engine reads its step counters, LR schedule and client state from the model-states file whose name its own
    ZeRO stage gives (`zero_pp_rank_0_mp_rank_00_model_states.pt` under ZeRO-3, `mp_rank_00_model_states.pt`
    otherwise: deepspeed/runtime/engine.py `_get_ckpt_name`, globbed with pp rank 0 under load_universal), while
    ds_to_universal copies the file under the name the saving stage gave it; a cross-stage load then finds none
    (deepspeed/runtime/state_dict_factory.py:168 `assert len(self.ckpt_list) > 0`). The weights and
    optimizer state come from zero/ under every stage, so the same file is linked under the other name."""
    for path in sorted(out_dir.glob("mp_rank_*_model_states.pt")):
        twin = out_dir / f"zero_pp_rank_0_{path.name}"
        if not twin.exists():
            os.link(path, twin)
    for path in sorted(out_dir.glob("zero_pp_rank_0_mp_rank_*_model_states.pt")):
        twin = out_dir / path.name.removeprefix("zero_pp_rank_0_")
        if not twin.exists():
            os.link(path, twin)


def _bridge_zero_stage_formats(out_dir: Path) -> None:
    """Our own shim: make one universal folder readable by both of DeepSpeed's universal loaders.

    ds_to_universal writes what the saving stage's loader reads, and the two loaders read different things:
    - ZeRO-1/2 (deepspeed/runtime/base_optimizer.py `load_hp_checkpoint_state_from_checkpoint_dir`) asserts a
      `ds_version` in zero/optimizer_state.pt (stage_1_and_2.py:3678 "Empty ds_version in checkpoint"), takes the
      Adam step from zero/<param>/step.pt and each tensor as {"param": tensor of the parameter's shape}
      (checkpoint/universal_checkpoint.py `load_hp_checkpoint_state`); a ZeRO-3 conversion has no ds_version, no
      step.pt, and stores the non-expert tensors bare and flattened;
    - ZeRO-3 (runtime/zero/stage3.py:3664) takes the step from
      optimizer_state.pt["optimizer_state_dict"]["state"][0]["step"], which a ZeRO-1/2 conversion does not write
      (KeyError: 'optimizer_state_dict').
    The values are the same; only where they are kept differs, so each missing form is added next to the other."""
    zero = out_dir / "zero"
    states = torch.load(next(out_dir.glob("*mp_rank_00_model_states.pt")), map_location="cpu", weights_only=False)
    shapes = {name: tuple(shape) for group in states["param_shapes"] for name, shape in group.items()}
    optim = torch.load(zero / "optimizer_state.pt", map_location="cpu", weights_only=False)
    first_step = next(zero.glob("*/step.pt"), None)  # every parameter's step.pt holds the same step
    if first_step is not None:
        step = torch.load(first_step, weights_only=False)
    else:
        step = next(iter(optim["optimizer_state_dict"]["state"].values()))["step"]
    optim.setdefault("ds_version", states["ds_version"])
    optim.setdefault("optimizer_state_dict", {"state": {0: {"step": step}}, "param_groups": optim["param_groups"]})
    torch.save(optim, zero / "optimizer_state.pt")
    for folder in (p for p in zero.iterdir() if p.is_dir()):
        if not (folder / "step.pt").exists():
            torch.save(step, folder / "step.pt")
        for path in folder.glob("*.pt"):
            saved = torch.load(path, map_location="cpu", weights_only=False)
            if isinstance(saved, torch.Tensor) and path.name != "step.pt":
                shape = shapes.get(folder.name, saved.shape)
                torch.save({"param": saved.view(shape)}, path)


def convert(tag_dir: Path, timeout: float | None = None) -> Path:
    """Write `<tag>/universal/` once (atomically: renamed into place after COMPLETE)."""
    out = universal_dir(tag_dir)
    tmp = out.with_name(UNIVERSAL + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    run_ds_to_universal(tag_dir, tmp, timeout)
    _name_model_states_for_every_stage(tmp)
    _bridge_zero_stage_formats(tmp)
    (tmp / COMPLETE).write_text("")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def load_converted(engine, tag_dir: Path) -> dict:
    """Load `<tag>/universal/` into a fresh engine of any AutoEP layout (ZeRO 1/2/3); returns the client state.

    `load_universal` is read only inside load_checkpoint (deepspeed/runtime/engine.py), so it is switched on for this
    load alone: the run's ds_config, saved with its next checkpoints, keeps loading ordinary checkpoints."""
    groups = engine.optimizer.optimizer.param_groups  # the torch optimizer inside DeepSpeed's ZeRO wrapper
    own = [{k: v for k, v in group.items() if k not in ("params", "lr")} for group in groups]
    config = engine._config
    previous, config.load_universal_checkpoint = config.load_universal_checkpoint, True
    try:
        load_path, client_state = engine.load_checkpoint(str(tag_dir), tag=UNIVERSAL)
    finally:
        config.load_universal_checkpoint = previous
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the universal checkpoint {universal_dir(tag_dir)}")
    # The ZeRO-3 loader gives every group the hyperparameters of saved group 0 (runtime/zero/stage3.py:3687), so the
    # no-decay group (norms, biases) would decay, and the next-but-one loss move. The ZeRO-1/2 one
    # copies group names made for the old EP size ("ep_size_2"). The groups keep their own (the recipe's); the
    # learning rate is the loaded schedule's, the same in every group.
    for group, keep in zip(groups, own):
        group.update(keep)
    # The ZeRO-3 loader also hands one step tensor to every sub-group's state (stage3.py:3681); torch's Adam
    # increments it in place, so each group's bias correction would count one step per group per step.
    for state in engine.optimizer.optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()
    return client_state
