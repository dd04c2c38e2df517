"""The training loop: steps, budgets, faults, evaluations and saves, and the saved training state.

Every random draw of a step comes from a generator that a resumed run gets back: the model's
initial weights from one seeded with the run's seed, the batches from the sampler's generator
(saved in last/state.safetensors), the dropout masks from one seeded from the seed and the step.
So a resumed --iters run ends bit-identical to one that never stopped."""

from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
import hashlib
import math
from pathlib import Path
import signal
import sys
import threading
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_last, remove_temporaries, save_last, save_model
from .config import ModelConfig
from .data import BatchSampler
from .device import autocast_for
from .errors import BluError
from .evaluate import evaluate
from .generate import TextGenerator
from .metrics import MetricsLog
from .model import Transformer
from .optim import learning_rate, make_optimizer
from .runs import Run

MAX_FAULTS_IN_A_ROW = 5  # non-finite steps tolerated in a row before training stops


@dataclass
class TrainState:
    """How far a run has got: saved as JSON beside the weights in last/state.safetensors."""

    step: int = 0  # optimizer steps taken
    tokens: int = 0  # training tokens consumed
    elapsed_s: float = 0.0  # wall-clock seconds of training and evaluation (compiling included)
    best_val_loss: float | None = None  # the best validation loss so far: that of model.safetensors
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient

    @classmethod
    def from_saved(cls, saved, path) -> "TrainState":
        """The state saved in `path`. Fields it lacks keep their defaults; other keys (older blu
        versions also saved loop variables, evaluated_step and faults_in_a_row) are ignored."""
        if not isinstance(saved, dict):
            raise BluError(f"{path} has no readable training state in its metadata")
        values = {f.name: saved[f.name] for f in fields(cls) if f.name in saved}
        for f in fields(cls):
            value = values.get(f.name, f.default)
            allowed = int if f.type is int else (int, float, type(None)) if f.default is None else (int, float)
            if not isinstance(value, allowed) or isinstance(value, bool):
                raise BluError(f"{path}: the saved training state has a bad {f.name} ({value!r})")
        return cls(**values)


class TrainResult(NamedTuple):
    state: TrainState
    interrupted: bool  # stopped by Ctrl-C or SIGTERM (and saved) before the budget was spent


def new_model(config: ModelConfig, seed: int) -> Transformer:
    """A model whose initial weights depend on `seed` alone, drawn from a generator of its own."""
    model = Transformer(config)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model


def dropout_seed(seed: int, step: int) -> int:
    """The seed of the dropout masks of a step: from the run's seed and the step alone, so a
    resumed run draws the masks it would have drawn, on any device, with nothing more to save."""
    return int.from_bytes(hashlib.sha256(f"dropout {seed} {step}".encode()).digest()[:8], "little")


def compile_for_training(model: Transformer, batch_shape, device: torch.device, log):
    """torch.compile(model), compiled now on a dummy batch so that a machine where inductor
    cannot work (no C++ compiler, say) is found out at once and trains without it, with a note.
    With dropout, each mask is drawn outside the compiled graph (a graph break: the compiler
    cannot draw from an explicit generator), so compiled and eager training draw the same masks."""
    fast = torch.compile(model)
    try:
        with autocast_for(device):
            fast(torch.zeros(batch_shape, dtype=torch.int64, device=device)).float().sum().backward()
    except Exception as error:  # torch.compile raises many kinds; any of them means: not here
        log(f"torch.compile does not work here ({type(error).__name__}: {str(error).splitlines()[0][:120]}); training without it")
        fast = model
    model.zero_grad(set_to_none=True)
    return fast


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


class Trainer:
    """A run being trained: its model, optimizer, batches and state, and the parts of a step
    and of an evaluation as methods. `train` runs the loop."""

    def __init__(self, run: Run, device: torch.device, log):
        self.run, self.config, self.folder, self.device, self.log = run, run.train_config, Path(run.folder), device, log
        self.model = new_model(run.model_config, self.config.seed).to(device)
        self.optimizer = make_optimizer(self.model, self.config, device)
        self.batches = BatchSampler(run.train_tokens, self.config.batch_size, run.model_config.context, self.config.seed)
        self.generators = {"batches": self.batches.generator}  # saved in last/ and restored
        self.dropout = torch.Generator(device) if run.model_config.dropout else None
        for block in self.model.layers:
            block.generator = self.dropout
        self.metrics = MetricsLog(self.folder)
        self.state = TrainState()

    def restore(self) -> bool:
        """Go on from the state saved in last/, if a previous start saved one (True then)."""
        remove_temporaries(self.folder)
        path = self.folder / "last" / "state.safetensors"
        saved = path.exists()
        if saved:
            self.state = TrainState.from_saved(load_last(self.folder, self.model, self.optimizer, self.generators), path)
            self.log(f"resuming {self.folder} at step {self.state.step}")
        else:
            self.log(f"{self.folder} was stopped before its first save: starting it from step 0")
        self.metrics.truncate_after(self.state.step)  # rows a killed process logged after its last save
        return saved

    def progress(self) -> float:
        """The spent fraction of the budget: of the steps, of the time, or the larger of the two."""
        fractions = []
        if self.config.iters:
            fractions.append(self.state.step / self.config.iters)
        if self.config.time_s:
            fractions.append(self.state.elapsed_s / self.config.time_s)
        return max(fractions)

    def step(self, forward) -> tuple[torch.Tensor, float] | None:
        """One optimizer step of `grad_accum` micro-steps through `forward` (the model, compiled
        or not): the summed loss and the learning rate, or None when the loss or the gradient was
        not finite, in which case nothing is updated."""
        lr = learning_rate(self.config, self.state.step, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.dropout is not None:
            self.dropout.manual_seed(dropout_seed(self.config.seed, self.state.step))
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(self.config.grad_accum):
            x, y = self.batches.next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast_for(self.device):
                logits = forward(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            (loss / self.config.grad_accum).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        # One host sync per step: a NaN or inf must never reach the weights or the optimizer moments.
        if not bool(torch.isfinite(grad_norm) & torch.isfinite(loss_sum)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens += self.config.batch_size * self.config.grad_accum * self.run.model_config.context
        return loss_sum, lr

    def note_skipped_step(self) -> None:
        s = self.state
        s.skipped_steps += 1
        self.metrics.write({"step": s.step, "tokens": s.tokens, "elapsed_s": round(s.elapsed_s, 3),
                            "skipped": "non-finite loss or gradient", "skipped_steps": s.skipped_steps})
        self.log(f"step {s.step + 1}: non-finite loss or gradient, update skipped ({s.skipped_steps} so far)")

    def evaluate_and_save(self) -> None:
        """Everything done at each evaluation: measure, keep the best, sample, save, plot."""
        val_loss = self.evaluate_and_log()
        self.keep_best(val_loss)
        self.write_sample(val_loss)
        self.checkpoint()
        self.metrics.plot()
        self.log(f"step {self.state.step}: val_loss {val_loss:.4f} (val_bpc {val_loss / math.log(2):.3f}), "
                 f"{self.state.elapsed_s:.0f}s")

    def evaluate_and_log(self) -> float:
        """The loss over the whole validation split, written to metrics.jsonl."""
        val_loss, _ = evaluate(self.model, self.run.val_tokens, self.config.eval_batch_size)
        s = self.state
        self.metrics.write({"step": s.step, "tokens": s.tokens, "elapsed_s": round(s.elapsed_s, 3),
                            "val_loss": val_loss, "val_bpc": val_loss / math.log(2)})
        return val_loss

    def keep_best(self, val_loss: float) -> None:
        """model.safetensors holds the weights with the best validation loss so far."""
        if self.state.best_val_loss is None or val_loss < self.state.best_val_loss:
            self.state.best_val_loss = val_loss
            save_model(self.folder / "model.safetensors", self.model)

    def write_sample(self, val_loss: float) -> None:
        """A sample of the current model, appended to samples.txt (same seed each time)."""
        pieces = TextGenerator(self.model, self.run.tokenizer).generate("\n", self.config.sample_chars, seed=self.config.seed)
        text = "".join(pieces)
        with open(self.folder / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"--- step {self.state.step}, val_loss {val_loss:.4f} ---\n{text}\n\n")
        self.model.train()

    def checkpoint(self) -> None:
        """last/state.safetensors: everything --resume needs to go on exactly."""
        save_last(self.folder, self.model, self.optimizer, self.generators, asdict(self.state))


def train(run: Run, device: torch.device, log=None) -> TrainResult:
    """Train `run` (from runs.create_run or runs.resume_run) until its step or time budget is
    spent, or Ctrl-C; return the final state and whether it was interrupted.

    The step budget is `iters`, the time budget `time_s` (wall clock, evaluations included);
    with both, whichever ends first. There is an evaluation every `eval_every` steps and at the end."""
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    config = run.train_config
    trainer = Trainer(run, device, log)
    # A saved state is always written by an evaluation, so the step it holds has had its own.
    evaluated_step = trainer.state.step if run.resumed and trainer.restore() else None
    state = trainer.state
    by_steps = bool(config.iters) and not config.time_s  # otherwise the bar counts seconds
    bar_total = config.iters if by_steps else round(config.time_s)
    bar = tqdm(total=bar_total, unit="step" if by_steps else "s", file=sys.stderr, dynamic_ncols=True, disable=None)
    started = time.perf_counter() - state.elapsed_s  # compiling counts against a --time budget
    # Training runs through `forward` (compiled or not); evaluation, sampling and saving use the model.
    forward = trainer.model
    if config.compile:
        forward = compile_for_training(trainer.model, (config.batch_size, run.model_config.context), device, log)
    last_log = (time.perf_counter(), state.tokens)
    faults_in_a_row = 0
    trainer.model.train()
    stop = StopRequest()
    with stop.installed():
        while trainer.progress() < 1 and not stop.requested and faults_in_a_row < MAX_FAULTS_IN_A_ROW:
            done = trainer.step(forward)
            if done is None:
                faults_in_a_row += 1
                trainer.note_skipped_step()
                continue
            faults_in_a_row = 0
            loss_sum, lr = done
            state.elapsed_s = time.perf_counter() - started
            bar.n = state.step if by_steps else min(round(state.elapsed_s), bar_total)
            if state.step % config.log_every == 0:
                train_loss = loss_sum.item() / config.grad_accum  # the only host sync, once per log_every steps
                now = time.perf_counter()
                tokens_per_s = (state.tokens - last_log[1]) / (now - last_log[0])
                last_log = (now, state.tokens)
                trainer.metrics.write({"step": state.step, "tokens": state.tokens,
                                       "elapsed_s": round(state.elapsed_s, 3), "train_loss": train_loss, "lr": lr})
                bar.set_postfix(step=state.step, loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                bar.refresh()
            if state.step % config.eval_every == 0 and trainer.progress() < 1:
                trainer.evaluate_and_save()
                evaluated_step = state.step
        bar.close()
        if evaluated_step != state.step:  # not already done, e.g. by Ctrl-C during an evaluation
            trainer.evaluate_and_save()
    if faults_in_a_row >= MAX_FAULTS_IN_A_ROW:
        raise BluError(f"training diverged: {MAX_FAULTS_IN_A_ROW} steps in a row had a non-finite loss or gradient; "
                       f"the last good state is saved in {run.folder}; try a lower --lr")
    if stop.requested:
        log(f"stopped at step {state.step} and saved; continue with: blu train --out {run.folder} --resume")
    return TrainResult(state, stop.requested)
