"""The training view: what metrics.jsonl and samples.txt say about a run, read afresh at each
poll, so that a run training in another process shows up live (the page polls every 2 s)."""

import json
from pathlib import Path
import re
import time

from ..metrics import MetricsLog, parse_rows

SAMPLE_HEADER = re.compile(r"^--- step (\d+), val_loss ([0-9.naif]+) ---$", re.MULTILINE)
MIN_LIVE_S = 10  # a run whose metrics.jsonl was written this recently is taken to be training (see progress)
MAX_SAMPLES = 30


class TrainingView:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.metrics = MetricsLog(self.folder)

    def read(self, since: int = 0) -> dict:
        """metrics.jsonl rows from line `since` on (all of them again, with reset, if the file
        got shorter, as a resume truncates it), the latest samples, and the progress."""
        lines = self.metrics.lines()
        reset = since > len(lines)
        rows = parse_rows(lines[0 if reset else since :])
        return {"rows": rows, "next": len(lines), "reset": reset, "samples": self.samples(), "progress": self.progress(lines)}

    def samples(self) -> list[dict]:
        try:
            text = (self.folder / "samples.txt").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        heads = list(SAMPLE_HEADER.finditer(text))
        out = []
        for head, after in zip(heads, heads[1:] + [None]):
            body = text[head.end() + 1 : after.start() if after else len(text)]
            out.append({"step": int(head.group(1)), "val_loss": float(head.group(2)), "text": body.rstrip("\n")})
        return out[-MAX_SAMPLES:]

    def progress(self, lines: list[str]) -> dict:
        """Step, tokens/s (between the last two logged steps), time left by the run's budget (none
        once past it: a resume may have been given a new budget, which config.json does not
        hold), and whether it is training now: metrics.jsonl written within three of its usual
        intervals between rows (at least 10 s), so that a finished run stops counting as live."""
        recent = [r for r in parse_rows(lines[-50:]) if "elapsed_s" in r]
        train = [r for r in recent if "train_loss" in r]
        budget = self._budget()
        out = {"step": None, "tokens_per_s": None, "time_left_s": None, "training": False, **budget}
        if not train:
            return out
        last = train[-1]
        out["step"], elapsed = last["step"], last["elapsed_s"]
        if len(train) > 1 and last["elapsed_s"] > train[-2]["elapsed_s"]:
            out["tokens_per_s"] = (last["tokens"] - train[-2]["tokens"]) / (last["elapsed_s"] - train[-2]["elapsed_s"])
        left = []
        if budget["time_s"] and elapsed < budget["time_s"]:
            left.append(budget["time_s"] - elapsed)
        if budget["iters"] and 0 < last["step"] < budget["iters"]:
            left.append((budget["iters"] - last["step"]) * elapsed / last["step"])
        out["time_left_s"] = min(left) if left else None
        interval = (recent[-1]["elapsed_s"] - recent[0]["elapsed_s"]) / max(1, len(recent) - 1)
        modified = self.metrics.path.stat().st_mtime
        out["training"] = time.time() - modified < max(MIN_LIVE_S, 3 * interval)
        return out

    def _budget(self) -> dict:
        try:
            train = json.loads((self.folder / "config.json").read_text(encoding="utf-8")).get("train", {})
        except (OSError, ValueError):
            train = {}
        return {"iters": train.get("iters") or 0, "time_s": train.get("time_s") or 0}
