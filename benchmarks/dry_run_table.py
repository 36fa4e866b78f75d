r"""Per-device memory of a stage's train step under each sharding strategy, sized by the dry run on virtual CPU
devices (nothing is allocated or trained): the table of docs/scaling.md.

    python benchmarks/dry_run_table.py [--config=configs/passes.py] [--devices=8] [--sizes=1024,2048] \
        [--rows=data,fsdp,spatial,spatial_remat,bf16]

Rows (global batch: one image per device, or one image over all devices for the spatial rows):
    data           mesh data=N, batch N              fsdp           mesh fsdp=N, batch N
    spatial        mesh spatial=N, batch 1           spatial_remat  spatial, model.remat=full
    bf16           mesh data=N, batch N, bfloat16    fsdp_bf16_remat  fsdp, bfloat16, model.remat=full
Figures come from XLA's CPU compiler with a memory-ordered schedule (see dry_runs.use_virtual_devices): an
accelerator's compiler fuses and lays out differently, so read them as estimates.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from maginet_jax import train  # noqa: E402
from maginet_jax.errors import UserError  # noqa: E402
from maginet_jax.training import checks, dry_runs, sharding  # noqa: E402

_DEVICES = flags.DEFINE_integer("devices", 8, "Virtual CPU devices (the mesh size).")
_SIZES = flags.DEFINE_list("sizes", ["1024", "2048"], "Crop sizes (data.crop_size = data.resolution).")
ROWS = {  # name: (mesh axis, one image over the whole mesh, model.dtype, model.remat)
    "data": ("data", False, "float32", "none"),
    "fsdp": ("fsdp", False, "float32", "none"),
    "spatial": ("spatial", True, "float32", "none"),
    "spatial_remat": ("spatial", True, "float32", "full"),
    "bf16": ("data", False, "bfloat16", "none"),
    "fsdp_bf16_remat": ("fsdp", False, "bfloat16", "full"),
}
_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Which rows, of {list(ROWS)}.")


def row_config(base, size: int, devices: int, row: str):
    axis, one_image, dtype, remat = ROWS[row]
    c = base.copy_and_resolve_references()
    c.mesh = ((axis, devices),)
    c.batch_size = c.eval.batch_size = 1 if one_image else devices
    c.data.resolution = c.data.crop_size = size
    c.model.dtype, c.model.remat = dtype, remat
    return c


def main(argv) -> None:
    if len(argv) > 1:
        sys.exit(f"dry_run_table.py: error: unexpected arguments {argv[1:]}")
    base = train.CONFIG.value
    n = _DEVICES.value
    configs = [(size, row, row_config(base, size, n, row)) for size in map(int, _SIZES.value) for row in _ROWS.value]
    for size, row, c in configs:  # every row's config, before the first (minutes-long) dry run
        try:
            train.validate(c, read_data=False)
            checks.check_mesh(c, 1, sharding.make_mesh(c.mesh))
        except UserError as e:
            sys.exit(f"dry_run_table.py: error: the {row} row at {size}²: {e}")
    print(f"{base.stage} stage, {n} virtual CPU devices; bytes per device (GiB)")
    # TFLOPs/step: XLA's count of the global program as written; "as compiled": the per-device programs' counts
    # summed over the devices, with the work that partitioning adds (halo exchanges, maps computed whole).
    print("| size | row | images/device | arguments | temporaries | total | TFLOPs/step | as compiled | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, row, c in configs:
        with tempfile.TemporaryDirectory() as workdir:
            t = time.time()
            r = train.dry_run(c, workdir)
            took = time.time() - t
        b = {k: v / 2**30 for k, v in r["bytes_per_device"].items()}
        per_device = "1" if c.batch_size == n else f"1/{n}"
        print(f"| {size}² | {row} | {per_device} | {b['arguments']:.2f} | {b['temporaries']:.2f} | "
              f"{b['total']:.2f} | {r['flops_per_step'] / 1e12:.2f} | {r['flops_per_device'] * n / 1e12:.2f} | "
              f"{took:.0f} |", flush=True)


if __name__ == "__main__":
    if not any(a.split("=")[0] == "--config" for a in sys.argv):
        sys.argv.insert(1, "--config=configs/passes.py")  # before any --config.key override
    argv = train.parse_flags(sys.argv, prog="dry_run_table.py")
    unknown = [r for r in _ROWS.value if r not in ROWS]
    if not _ROWS.value or not _SIZES.value:
        sys.exit("dry_run_table.py: error: --rows and --sizes must name at least one each")
    if unknown:
        sys.exit(f"dry_run_table.py: error: --rows: {','.join(unknown)} unknown; choose from {','.join(ROWS)}")
    if _DEVICES.value < 1 or not all(v.isdigit() and int(v) > 0 for v in _SIZES.value):
        sys.exit("dry_run_table.py: error: --devices and --sizes must be positive integers")
    for name, values in (("rows", _ROWS.value), ("sizes", [str(int(v)) for v in _SIZES.value])):
        twice = ",".join(dict.fromkeys(v for v in values if values.count(v) > 1))
        if twice:  # each would be compiled (minutes) and printed twice
            sys.exit(f"dry_run_table.py: error: --{name}: {twice} given more than once")
    try:
        dry_runs.use_virtual_devices(_DEVICES.value, True)
    except UserError as e:
        sys.exit(f"dry_run_table.py: error: {str(e).replace('--dry_run_devices', '--devices')}")
    app.run(main, argv=argv, flags_parser=lambda a: a)
