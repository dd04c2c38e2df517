"""metrics.jsonl, one JSON object per log or evaluation event, and loss.png drawn from it."""

import io
import json
from pathlib import Path

from .files import atomic_write


def parse_rows(lines) -> list[dict]:
    """The rows of lines of metrics.jsonl: a line cut short by a kill, or being written right
    now by a training process, is left out."""
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class MetricsLog:
    """metrics.jsonl (one JSON object per line, appended) and the loss.png drawn from it. The
    one reader of the file: the training loop's and the server's training view's."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.plot_path = Path(run_dir) / "loss.png"

    def write(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def lines(self) -> list[str]:
        """The file's lines as they are (none before the first row is written)."""
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def rows(self) -> list[dict]:
        return parse_rows(self.lines())

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.rows() if r.get("step", 0) <= step]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt

        rows = self.rows()
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), label=label, marker="o" if key == "val_loss" else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
        plt.close(fig)
        atomic_write(self.plot_path, png.getvalue())
