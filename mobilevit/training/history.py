"""Per-epoch history of a Trainer run (from `trainer.state.log_history`) and its plot."""

from __future__ import annotations

from pathlib import Path


def epoch_history(log_history: list[dict]) -> list[dict]:
    """One dict per epoch: "epoch", "train_loss", "train_<metric>", "eval_loss", "eval_<metric>" (whatever was
    logged). Training values come from `MobileViTTrainer`'s per-epoch log ("train_loss_epoch"), evaluation
    values from Trainer's evaluation at the end of each epoch."""
    epochs: dict[int, dict] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        epoch = int(round(entry["epoch"]))
        row = epochs.setdefault(epoch, {"epoch": epoch})
        if "train_loss_epoch" in entry:
            row["train_loss"] = entry["train_loss_epoch"]
            row.update({k: v for k, v in entry.items() if k.startswith("train_") and k != "train_loss_epoch"})
        elif "eval_loss" in entry:
            row.update({k: v for k, v in entry.items()
                        if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))
                        and not k.startswith("eval_iou_")})
    return [epochs[e] for e in sorted(epochs) if len(epochs[e]) > 1]


def _draw(axes, history: list[dict], metric: str, label: str = "") -> None:
    for ax, name in zip(axes, ("loss", metric)):
        for split, style in (("train", "o-"), ("eval", "s--")):
            points = [(row["epoch"], row[f"{split}_{name}"]) for row in history
                      if row.get(f"{split}_{name}") is not None]
            if points:
                ax.plot(*zip(*points), style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name.replace("_", " "))
        ax.set_title(f"{label} {name.replace('_', ' ')}".strip(), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()


def plot_histories(runs: list[tuple[str, list[dict], str]], path: str | Path, title: str = "") -> None:
    """One row per run (label, history, metric): loss and metric per epoch, train and eval; saved as PNG."""
    # a pyplot-free Figure: no global backend switch, so a notebook's inline plots keep working
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4 * len(runs)))
    axes = fig.subplots(len(runs), 2, squeeze=False)
    for row, (label, history, metric) in zip(axes, runs):
        _draw(row, history, metric, label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_history(history: list[dict], metric: str, path: str | Path, title: str = "") -> None:
    """Loss and `metric` per epoch, train and eval, for one run; saved as PNG."""
    plot_histories([(title, history, metric)], path)
