"""The training loop: optimizer, learning-rate schedule, budgets, evaluation,
checkpoints and logging (metrics.jsonl, loss.png, samples.txt)."""

from contextlib import contextmanager
import io
import json
import math
from pathlib import Path
import signal
import sys
import threading
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import atomic_write, load_last, remove_temporaries, save_last, save_model
from .config import ModelConfig, TrainConfig
from .data import BatchSampler
from .errors import BluError
from .device import autocast_for
from .evaluate import evaluate
from .generate import TextGenerator
from .model import Transformer
from .optim import learning_rate, make_optimizer

MAX_FAULTS_IN_A_ROW = 5  # non-finite steps tolerated in a row before training stops


def compile_for_training(model: Transformer, batch_shape, device: torch.device, log):
    """torch.compile(model), compiled now on a dummy batch so that a machine where inductor
    cannot work (no C++ compiler, say) is found out at once and trains without it, with a note."""
    fast = torch.compile(model)
    try:
        with autocast_for(device):
            fast(torch.zeros(batch_shape, dtype=torch.int64, device=device)).float().sum().backward()
    except Exception as error:  # torch.compile raises many kinds; any of them means: not here
        log(f"torch.compile does not work here ({type(error).__name__}: {str(error).splitlines()[0][:120]}); training without it")
        fast = model
    model.zero_grad(set_to_none=True)
    return fast


class MetricsLog:
    """metrics.jsonl (one JSON object per line, appended) and the loss.png drawn from it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.plot_path = Path(run_dir) / "loss.png"

    def write(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass  # a line cut short by a kill
        return rows

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


class StopRequest:
    """The first Ctrl-C (or SIGTERM) asks training to stop after the current step
    and save; a second Ctrl-C interrupts at once (atomic writes keep the folder readable)."""

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def train(run_dir, model_config: ModelConfig, config: TrainConfig, tokenizer, train_tokens, val_tokens,
          device: torch.device, resume: bool = False, log=None) -> dict:
    """Train until the step or time budget is spent (or Ctrl-C); return the final state.

    The step budget is `config.iters`, the time budget `config.time_s` (wall clock,
    evaluations included); with both, whichever ends first."""
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    run_dir = Path(run_dir)
    torch.manual_seed(config.seed)
    model = Transformer(model_config).to(device)
    optimizer = make_optimizer(model, config, device)
    sampler = BatchSampler(train_tokens, config.batch_size, model_config.context, config.seed)
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "best_val_loss": None, "skipped_steps": 0, "faults_in_a_row": 0}
    metrics = MetricsLog(run_dir)
    if resume:
        remove_temporaries(run_dir)
        if (run_dir / "last" / "state.safetensors").exists():
            state = {**state, **load_last(run_dir, model, optimizer, {"batches": sampler.generator}), "faults_in_a_row": 0}
            log(f"resuming {run_dir} at step {state['step']}")
        else:
            log(f"{run_dir} was stopped before its first save: starting it from step 0")
        metrics.truncate_after(state["step"])  # rows a killed process logged after its last save
    tokens_per_step = config.batch_size * config.grad_accum * model_config.context

    def check_faults(faulty: bool) -> None:
        if not faulty:
            state["faults_in_a_row"] = 0
            return
        state["skipped_steps"] += 1
        state["faults_in_a_row"] += 1
        metrics.write({"step": state["step"], "tokens": state["tokens"], "elapsed_s": round(state["elapsed_s"], 3),
                       "skipped": "non-finite loss or gradient", "skipped_steps": state["skipped_steps"]})
        log(f"step {state['step'] + 1}: non-finite loss or gradient, update skipped ({state['skipped_steps']} so far)")

    def progress() -> float:
        fractions = []
        if config.iters:
            fractions.append(state["step"] / config.iters)
        if config.time_s:
            fractions.append(state["elapsed_s"] / config.time_s)
        return max(fractions)

    def evaluate_and_save() -> None:
        if state.get("evaluated_step") == state["step"]:
            return  # e.g. Ctrl-C right after an evaluation
        state["evaluated_step"] = state["step"]
        val_loss, _ = evaluate(model, val_tokens, config.eval_batch_size)
        row = {"step": state["step"], "tokens": state["tokens"], "elapsed_s": round(state["elapsed_s"], 3),
               "val_loss": val_loss, "val_bpc": val_loss / math.log(2)}
        metrics.write(row)
        best = state["best_val_loss"]
        if best is None or val_loss < best:
            state["best_val_loss"] = val_loss
            save_model(run_dir / "model.safetensors", model)
        text = "".join(TextGenerator(model, tokenizer).generate("\n", config.sample_chars, seed=config.seed))
        with open(run_dir / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"--- step {state['step']}, val_loss {val_loss:.4f} ---\n{text}\n\n")
        model.train()
        save_last(run_dir, model, optimizer, {"batches": sampler.generator}, state)
        metrics.plot()
        log(f"step {state['step']}: val_loss {val_loss:.4f} (val_bpc {row['val_bpc']:.3f}), {state['elapsed_s']:.0f}s")

    by_steps = bool(config.iters) and not config.time_s  # otherwise the bar counts seconds
    bar_total = config.iters if by_steps else round(config.time_s)
    bar = tqdm(total=bar_total, unit="step" if by_steps else "s", file=sys.stderr, dynamic_ncols=True, disable=None)
    started = time.perf_counter() - state["elapsed_s"]  # compiling counts against a --time budget
    # Training runs through `forward` (compiled or not); evaluation, sampling and saving use `model`.
    forward = compile_for_training(model, (config.batch_size, model_config.context), device, log) if config.compile else model
    last_log = (time.perf_counter(), state["tokens"])
    model.train()
    stop = StopRequest()
    with stop.installed():
        while progress() < 1 and not stop.requested and state["faults_in_a_row"] < MAX_FAULTS_IN_A_ROW:
            lr = learning_rate(config, state["step"], progress())
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for _ in range(config.grad_accum):
                x, y = sampler.next()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast_for(device):
                    logits = forward(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                (loss / config.grad_accum).backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            # One host sync per step: a NaN or inf must never reach the weights or the optimizer moments.
            if not bool(torch.isfinite(grad_norm) & torch.isfinite(loss_sum)):
                optimizer.zero_grad(set_to_none=True)
                check_faults(faulty=True)
                continue
            check_faults(faulty=False)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["tokens"] += tokens_per_step
            state["elapsed_s"] = time.perf_counter() - started
            bar.n = state["step"] if by_steps else min(round(state["elapsed_s"]), bar_total)
            if state["step"] % config.log_every == 0:
                train_loss = loss_sum.item() / config.grad_accum  # the only host sync, once per log_every steps
                now = time.perf_counter()
                tokens_per_s = (state["tokens"] - last_log[1]) / (now - last_log[0])
                last_log = (now, state["tokens"])
                metrics.write({"step": state["step"], "tokens": state["tokens"],
                               "elapsed_s": round(state["elapsed_s"], 3), "train_loss": train_loss, "lr": lr})
                bar.set_postfix(step=state["step"], loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                bar.refresh()
            if state["step"] % config.eval_every == 0 and progress() < 1:
                evaluate_and_save()
        bar.close()
        evaluate_and_save()
    if state["faults_in_a_row"] >= MAX_FAULTS_IN_A_ROW:
        raise BluError(f"training diverged: {MAX_FAULTS_IN_A_ROW} steps in a row had a non-finite loss or gradient; "
                       f"the last good state is saved in {run_dir}; try a lower --lr")
    if stop.requested:
        log(f"stopped at step {state['step']} and saved; continue with: blu train --out {run_dir} --resume")
    return {**state, "interrupted": stop.requested}
