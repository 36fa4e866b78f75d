"""The Markdown table and bar chart of a `benchmarks.compare` report (its JSON as a dict)."""

from __future__ import annotations

import os


def dtype(report: dict) -> str:
    return report["config"]["model"].get("dtype", "float32")


def stem(report: dict) -> str:
    """`<stage>` for float32, `<stage>_<dtype>` otherwise, then `_perceptual-bfloat16` for bfloat16 loss networks:
    the file names of the table and chart."""
    name = report["stage"] if dtype(report) == "float32" else f"{report['stage']}_{dtype(report)}"
    bf16_losses = report["config"].get("perceptual", {}).get("precision") == "bfloat16"
    return name + ("_perceptual-bfloat16" if bf16_losses else "")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}"


def _infer_cells(r: dict) -> list[str]:
    if "infer_step_s" not in r:  # a run cut off after the train steps (benchmarks.compare saves it then)
        return ["not timed", "n/a"]
    return [f"{_ms(r['infer_step_s'])} [{_ms(r['infer_step_min_s'])}–{_ms(r['infer_step_max_s'])}]",
            f"{r['infer_images_per_s']:.1f}"]


def pipeline_line(p: dict) -> str:
    """What the input pipeline delivered against what the JAX train step consumes, one sentence."""
    consumed = f"{p['jax_train_step_images_per_s']:.1f}" if p["jax_train_step_images_per_s"] else "n/a"
    ratio = f"{p['ratio']:.1f}×" if p["ratio"] else "n/a"
    return (f"Input pipeline alone ({p['worker_count']} grain workers): {p['images_per_s']:.1f} images/s; "
            f"the JAX train step consumes {consumed} images/s ({ratio}).")


def table(report: dict) -> str:
    """Markdown: one row per variant, step times in ms (median [min–max]), images/s, speed relative to JAX."""
    jax_train = next((r["train_step_s"] for r in report["results"] if r["variant"] == "jax"), None)
    mfu = any("train_mfu" in r for r in report["results"])
    head = ["variant", "layout", "train step ms (median [min–max])", "train img/s", "JAX speed-up",
            "infer step ms (median [min–max])", "infer img/s", "warm-up s (train)", "peak memory MiB"]
    head += ["train MFU"] if mfu else []
    lines = [f"{report['stage']} stage on {report['device']} ({report['device_kind']}), {dtype(report)}: batch "
             f"{report['batch_size']} at {report['resolution']}², {report['rounds']} interleaved rounds after "
             f"{report['warmup']} warm-up "
             f"steps; jax {report['versions']['jax']}, torch {report['versions']['torch']}"
             + (f"; at commit {report['commit']}." if report.get("commit") else "."), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        memory = f"{r['peak_memory_bytes'] / 2**20:.0f}" if r["peak_memory_bytes"] else "n/a"
        cells = [r["variant"], r["layout"],
                 f"{_ms(r['train_step_s'])} [{_ms(r['train_step_min_s'])}–{_ms(r['train_step_max_s'])}]",
                 f"{r['train_images_per_s']:.1f}",
                 f"{r['train_step_s'] / jax_train:.2f}×" if jax_train else "n/a",
                 *_infer_cells(r), f"{r['train_warmup_s']:.1f}", memory]
        cells += [f"{r['train_mfu']:.1%}" if "train_mfu" in r else "n/a"] if mfu else []
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("JAX speed-up: the variant's train step time over JAX's (above 1: JAX is faster). Peak memory: "
                 + "; ".join(sorted({f"{r['framework']}: {r['memory_source']}" for r in report["results"]})) + ".")
    if report.get("pipeline"):
        lines.append(pipeline_line(report["pipeline"]))
    if report.get("note"):  # what a reader must know about how the figures were made (set by hand)
        lines += ["", report["note"]]
    lines += ["", f"Command: `{report['command']}`", "", f"![{stem(report)}]({stem(report)}.png)", ""]
    return "\n".join(lines)


def chart(report: dict, path: str) -> None:
    """Grouped bars: train and inference step time per variant."""
    import matplotlib  # optional (the bench extra): only the chart needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in report["results"]]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    x = range(len(names))
    for offset, mode in ((-0.2, "train"), (0.2, "infer")):
        if any(f"{mode}_step_s" not in r for r in report["results"]):
            continue
        values = [r[f"{mode}_step_s"] * 1e3 for r in report["results"]]
        low = [v - r[f"{mode}_step_min_s"] * 1e3 for v, r in zip(values, report["results"])]
        high = [r[f"{mode}_step_max_s"] * 1e3 - v for v, r in zip(values, report["results"])]
        ax.bar([i + offset for i in x], values, 0.4, yerr=[low, high], capsize=3, label=f"{mode} step")
    ax.set_xticks(list(x), [n.replace("_channels_last", "\nchannels_last") for n in names], fontsize=8)
    ax.set_ylabel("ms per step (median, min–max)")
    ax.set_title(f"{report['stage']}: batch {report['batch_size']} at {report['resolution']}², {dtype(report)}, "
                 f"{report['device']}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict, directory: str) -> tuple[str, str]:
    """Writes <directory>/<stem>.md and <stem>.png (see `stem`); returns their paths."""
    os.makedirs(directory, exist_ok=True)
    md, png = (os.path.join(directory, f"{stem(report)}.{ext}") for ext in ("md", "png"))
    with open(md, "w") as f:
        f.write(table(report))
    chart(report, png)
    return md, png
