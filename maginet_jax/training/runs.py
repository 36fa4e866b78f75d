"""Run directories: a new one prepared (one holding something else refused), and finished ones as inputs: a
workdir's config and the parameters of one of its checkpoints (the latest, or a step), for later stages,
fine-tuning, evaluation and prediction, and whether a saved run's architecture is the config's.

Workdirs may be any path `etils.epath` understands (local, `gs://`, ...); `run_path` turns one into an
`epath.Path`. A run's workdir holds `config.json` (`write_config`) and `checkpoints/<step>/state`, whose
`params` subtree maps network names to parameters. Only that subtree is read (orbax partial restore), so the
optimizer state never reaches memory. `tools.import_pix2pixhd` writes the same two things (`params/` instead of
checkpoints) for imported weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import uuid
from typing import Callable

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from maginet_jax.errors import UserError, first_line, root_cause_line
from maginet_jax.training import sharding
from maginet_jax.training.state import Build, abstract_params


def run_path(path: str) -> epath.Path:
    """`path` as an epath.Path: local paths made absolute (orbax needs them so), URLs such as gs://b/x as given
    (os.path would turn them into <cwd>/gs:/b/x)."""
    return epath.Path(path if "://" in str(path) else os.path.abspath(path))


def write_config(config, workdir: str) -> None:
    """Saves the config a run trains with as `<workdir>/config.json` (what `read_config` reads)."""
    (run_path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))


def read_config(workdir: str, *, expect_stage: str | tuple[str, ...], what: str) -> ml_collections.ConfigDict:
    """The config a run was trained with; UserError unless `workdir` holds a run of `expect_stage`.

    `what` names the setting that gave `workdir` (e.g. "init.albedo_workdir"), for the error message.
    """
    expected = (expect_stage,) if isinstance(expect_stage, str) else tuple(expect_stage)
    path = run_path(workdir) / "config.json"
    if not path.is_file():
        raise UserError(f"{what}={workdir!r} is not a maginet_jax run directory: it has no config.json")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{what}={workdir!r}: cannot read config.json ({e})") from None
    if not isinstance(saved, dict):
        raise UserError(f"{what}={workdir!r}: its config.json holds a {type(saved).__name__}, not a config")
    config = ml_collections.ConfigDict(saved)
    stage = config.get("stage")
    if stage not in expected:
        raise UserError(f"{what}={workdir!r} holds a {stage!r} run, not {' or '.join(map(repr, expected))}")
    return with_defaults(config)


def with_defaults(saved: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`saved` with every key it lacks taken from its stage's default config (`configs/<stage>.py`; imported
    weights, `tools.import_pix2pixhd`'s stage, have none and are returned as saved).

    A run saved before a key existed lacks it; a new key's default keeps the behaviour from before it, so the
    filled config is what the run was trained with, and evaluation and later stages validate it like a new one.
    """
    def fill(values: dict, defaults: dict) -> dict:
        for key, default in defaults.items():
            if key not in values:
                values[key] = default
            elif isinstance(default, dict) and isinstance(values[key], dict):
                fill(values[key], default)
        return values

    if importlib.util.find_spec(f"configs.{saved.stage}") is None:
        return saved
    defaults = importlib.import_module(f"configs.{saved.stage}").get_config("")
    return ml_collections.ConfigDict(fill(saved.to_dict(), defaults.to_dict()))


def latest_step(checkpoints: epath.Path) -> int | None:
    """The step of the newest finished checkpoint in the directory `checkpoints`; None if it holds none or does
    not exist (it is not created)."""
    if not checkpoints.is_dir():
        return None
    with ocp.CheckpointManager(checkpoints) as manager:
        return manager.latest_step()


UPSTREAM_HINT = ("a run trained against it keeps the step it started from, which max_checkpoints_to_keep may have "
                 "deleted since: keep_checkpoints_every_steps and keep_best_checkpoints keep more")


def params_dir(workdir: str, *, what: str, step: int = 0, hint: str = UPSTREAM_HINT) -> epath.Path:
    """The saved tree to read: `<workdir>/params` (imported weights), else the checkpoint of `step` (0: the
    latest) and its state. `hint` ends the error for a step it does not have."""
    imported = run_path(workdir) / "params"
    if imported.is_dir():
        return imported
    root = run_path(workdir) / "checkpoints"
    if step:
        if not (root / str(step) / "state").is_dir():
            kept = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
            raise UserError(f"{what}={workdir!r} has no checkpoint of step {step} (it has "
                            f"{', '.join(map(str, kept)) or 'none'}{'; ' + hint if hint else ''})")
        return root / str(step) / "state"
    step = latest_step(root)
    if step is None:
        raise UserError(f"{what}={workdir!r} has no finished checkpoint yet")
    return root / str(step) / "state"


def pin_upstream(config, workdir: str, resumed: bool) -> None:
    """Sets each `init.<stage>_step` of a run trained against a finished upstream run (`init.<stage>_workdir`)
    that is 0 ("the latest"): a resumed run to the step its start used (from its config.json), a new one to the
    upstream's latest step. The loop then saves them in config.json, so a resumed run, its evaluation and later
    stages use the network it trained against, even after the upstream run has trained on. A run resumed against
    another upstream run (not the same one moved) is pinned to the new one's latest step."""
    keys = [k for k in config.get("init", {}) if k.endswith("_step")]
    saved = read_config(workdir, expect_stage=config.stage, what="--workdir").init if resumed and keys else {}
    if resumed and "from_step" in keys:  # what a fine-tuned run started from: a resume never reads it again
        config.init.from_workdir, config.init.from_step = saved.get("from_workdir", ""), saved.get("from_step", 0)
        keys.remove("from_step")
    for key in keys:
        upstream_key = key[:-len("_step")] + "_workdir"
        upstream = config.init.get(upstream_key)
        if config.init[key] or not upstream or (run_path(upstream) / "params").is_dir():
            continue
        pinned, before = saved.get(key), saved.get(upstream_key) or ""
        if pinned and before and run_path(before).exists() and not _same_path(before, upstream):
            logging.warning("init.%s=%r is not %r, the run this one was started against: going on against the "
                            "latest checkpoint of the new one", upstream_key, upstream, before)
            pinned = 0  # the step of another run
        config.init[key] = pinned or latest_step(run_path(upstream) / "checkpoints") or 0


def _same_path(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return bool(a and b) and os.path.samefile(a, b)
    except OSError:  # a missing or non-local path
        return False


def _key(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_saved_shapes(directory: str, like, describe: str) -> None:
    """UserError "`describe`: <first difference>" unless the saved tree in `directory` holds every array of
    `like` with its shape. Read from the checkpoint's metadata, before any array: a read that fails midway
    leaves orbax's other reads calling back into a closed event loop, a screen of tracebacks at exit."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        saved = handler.metadata(epath.Path(directory))
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise UserError(f"{describe}: {first_line(e)}") from None
    finally:
        handler.close()
    saved = {_key(path): tuple(x.shape) for path, x in jax.tree_util.tree_leaves_with_path(saved)}
    for path, x in jax.tree_util.tree_leaves_with_path(like):
        key = _key(path)
        if key not in saved:
            raise UserError(f"{describe}: it has no {key}")
        if saved[key] != tuple(x.shape):
            raise UserError(f"{describe}: {key} is {tuple(x.shape)} here, {saved[key]} there")


def restore_params(directory: str, like: dict[str, nnx.State], *, what: str) -> dict[str, nnx.State]:
    """The saved parameters of the networks named in `like`, shaped, typed and sharded like `like` (arrays or
    ShapeDtypeStructs)."""
    describe = f"{what}: the checkpoint in '{directory}' does not fit the model configured for it"
    check_saved_shapes(directory, {"params": like}, describe)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), like)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            return checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
                item={"params": like}, restore_args={"params": restore_args}, partial_restore=True))["params"]
    except Exception as e:  # the shapes fit (above): a file cut short, missing or damaged (orbax: bare Exception)
        raise UserError(f"{what}: cannot read the checkpoint in '{directory}' (a file cut short, missing or "
                        f"damaged?): {root_cause_line(e)}") from None


def abstract_networks(builds: dict[str, Build], mesh: Mesh) -> tuple[dict[str, nnx.GraphDef], dict]:
    """(graphdefs, parameter ShapeDtypeStructs replicated over `mesh`) of the networks `builds` makes."""
    graphdefs, like = {}, {}
    for name, build in builds.items():
        graphdefs[name], shapes = abstract_params(build)
        like[name] = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)), shapes)
    return graphdefs, like


def load_params(workdir: str, networks: Callable[[ml_collections.ConfigDict], dict[str, Build]], *,
                stage: str | tuple[str, ...], what: str, mesh: Mesh, names: tuple[str, ...] | None = None,
                step: int = 0, hint: str = UPSTREAM_HINT):
    """(config, graphdefs, params) of a finished run (its checkpoint of `step`; 0: the latest), replicated over
    `mesh`: `networks(config)` rebuilds its networks (all of them, or those in `names`). `hint`: as `params_dir`."""
    config = read_config(workdir, expect_stage=stage, what=what)
    builds = networks(config)
    graphdefs, like = abstract_networks({name: builds[name] for name in names or builds}, mesh)
    return config, graphdefs, restore_params(params_dir(workdir, what=what, step=step, hint=hint), like, what=what)


def _as_tuples(x):
    return tuple(map(_as_tuples, x)) if isinstance(x, (list, tuple)) else x  # config.json stores tuples as lists


def model_differences(saved, ours, keys, *, prefix: str = "model.", defaults=None) -> list[str]:
    """"<prefix><key>: <saved> there, <ours> here" for each of `keys` in which a saved run's model config differs
    from ours; a key the saved run lacks takes its value from `defaults` (what runs before the key existed did)."""
    defaults = defaults or {}
    out = []
    for k in keys:
        theirs, mine = _as_tuples(saved.get(k, defaults.get(k))), _as_tuples(ours.get(k))
        if theirs != mine:
            out.append(f"{prefix}{k}: {theirs!r} there, {mine!r} here")
    return out


SHAPE_FREE_KEYS = ("dtype", "remat")  # model keys that change neither parameters nor what is computed


def check_same_model(saved, ours, what: str, workdir: str, prefix: str = "model.") -> None:
    """UserError naming every model key (but dtype and remat) in which a saved run's model config differs from
    ours (`what` names the setting that gave `workdir`)."""
    keys = sorted((set(saved) | set(ours)) - set(SHAPE_FREE_KEYS))
    diffs = model_differences(dict(saved), dict(ours), keys, prefix=prefix)
    if diffs:
        raise UserError(f"{what}={workdir!r} has another architecture than the config: " + "; ".join(diffs))


# What the loop, a dry run and `maginet_jax.evaluate` write in a workdir beside config.json (launch/
# local_multiprocess.sh adds process_<i>.log files, before the processes start; another process's
# `prepare_workdir` a moment's probe).
RUN_ENTRIES = re.compile(r"checkpoints|metrics\.jsonl|samples|eval|profile|dry_run\.json|events\.out\.tfevents\..*"
                         r"|process_\d+\.log|\.write_test_.*")


def check_not_foreign(workdir: str) -> None:
    """UserError if `workdir` holds files but is no run's (neither a run's config.json nor checkpoints/, and
    entries no run writes, or a config.json of something else): training would write its config.json,
    metrics.jsonl and samples over whatever of the user's has those names."""
    path = run_path(workdir)
    if not str(workdir).strip() or not path.is_dir() or (path / "checkpoints").is_dir():
        return  # (an empty flag, or a file: `prepare_workdir` says so)
    try:
        saved = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):  # none, or not JSON: not a run's
        saved = None
    if isinstance(saved, dict) and "stage" in saved:
        return
    foreign = sorted(p.name for p in path.iterdir() if not RUN_ENTRIES.fullmatch(p.name))
    if foreign:
        raise UserError(f"--workdir={workdir!r} holds files of something else than a run ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}): give a new or empty directory, or a run's workdir "
                        f"to resume it")


def start_from(config) -> epath.Path | None:
    """The saved parameters `init.from_workdir` names for a fine-tuning run (a run of the same stage and
    architecture; its checkpoint of `init.from_step`, 0: the latest), or None; UserError for anything else."""
    source, what = config.get("init", {}).get("from_workdir"), "init.from_workdir"
    if not source:
        return None
    saved = read_config(source, expect_stage=config.stage, what=what)
    check_same_model(saved.model, config.model, what, source)
    return params_dir(source, what=what, step=config.init.from_step, hint="")


def prepare_workdir(workdir: str, *, what: str = "--workdir") -> None:
    """Creates `workdir` and proves it writable, or raises UserError naming the flag `what`; touches nothing
    already there."""
    if not str(workdir).strip():  # os.path.abspath("") is the current directory
        raise UserError(f"{what} is empty: give a directory")
    try:
        path = run_path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {what}={workdir!r}: {e.strerror or e}") from None
