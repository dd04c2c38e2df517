"""The training loop: steps, budgets, faults, evaluations and saves (the state it saves: checkpoint.TrainState).

Every random draw of a step comes from a generator that a resumed run gets back: the model's
initial weights from one seeded with the run's seed, the batches from the sampler's generator
(saved in last/state.safetensors), the dropout masks from one seeded from the seed and the step.
So a resumed --iters run ends bit-identical to one that never stopped.

Under torchrun every rank runs this loop on its slice of each batch (see distributed.py): the
decisions of each step are agreed, the evaluation is shared, and rank 0 alone writes and talks.
A run on conversations (chat_train.py) draws whole ones and learns the assistant's tokens alone."""

from contextlib import nullcontext
import hashlib
import math
from pathlib import Path
import sys
import time
from typing import NamedTuple

import torch
from tqdm import tqdm

from .chat_eval import scored_counts, token_byte_lengths
from .chat_train import batches_for, evaluate_chats, micro_loss, target_count
from .checkpoint import TrainState, load_last, remove_temporaries, save_last, save_model
from .config import ModelConfig
from .device import autocast_for, compile_for_training
from .distributed import Agreed, SkipEvaluation, StopRequest, World
from .evaluate import evaluate_shared, scored_tokens
from .fine_tune import load_parent_weights
from .metrics import MetricsLog
from .model import Transformer
from .optim import learning_rate, make_optimizer
from .runs import Run
from .samples import append_sample, chat_samples, text_sample

MAX_FAULTS_IN_A_ROW = 5  # non-finite steps tolerated in a row before training stops


class TrainResult(NamedTuple):
    state: TrainState
    interrupted: bool  # stopped by Ctrl-C or SIGTERM (and saved) before the budget was spent


def new_model(config: ModelConfig, seed: int) -> Transformer:
    """A model whose initial weights depend on `seed` alone, drawn from a generator of its own."""
    model = Transformer(config)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model


def dropout_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of the dropout masks of a step: from the run's seed, the step and the rank alone,
    so a resumed run draws the masks it would have drawn, on any device, with nothing more to
    save. Each rank draws its own masks (the same ones would repeat across the global batch)."""
    key = f"dropout {seed} {step}" + (f" rank {rank}" if rank else "")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


class Trainer:
    """A run being trained: its model, optimizer, batches and state, and the parts of a step
    and of an evaluation as methods. `train` runs the loop. Under torchrun there is one per
    rank; only rank 0's writes files and logs (the others get a `log` that says nothing)."""

    def __init__(self, run: Run, device: torch.device, log, world: World | None = None):
        self.run, self.config, self.folder, self.device, self.log = run, run.train_config, Path(run.folder), device, log
        self.world = world = world or World()
        self.model = new_model(run.model_config, self.config.seed)
        if run.meta.get("init_from") is not None:  # --init-from: the parent's weights (replaced by a resume's)
            load_parent_weights(self.model, run.meta["init_from"])
        self.model = self.model.to(device)
        self.optimizer = make_optimizer(self.model, self.config, device)
        self.batches = batches_for(run, self.config.batch_size, world)
        self.generators = {"batches": self.batches.generator}  # saved in last/ and restored
        self.dropout = torch.Generator(device) if run.model_config.dropout else None
        for block in self.model.layers:
            block.generator = self.dropout
        self.metrics = MetricsLog(self.folder)
        self.state = TrainState(processes=world.size)
        self.stop = StopRequest(self.announce_stop, can_skip=not world.distributed)
        self.started = time.perf_counter()  # see start_clock
        self.lr, self.eval_s = 0.0, None  # eval_s: how long the last evaluation took

    def restore(self) -> bool:
        """Go on from the state saved in last/, if a previous start saved one (True then)."""
        if self.world.main:
            remove_temporaries(self.folder)
        path = self.folder / "last" / "state.safetensors"
        saved = path.exists()
        if saved:
            self.state = load_last(self.folder, self.model, self.optimizer, self.generators)
            self.log(f"resuming {self.folder} at step {self.state.step}")
            if self.state.processes != self.world.size:  # the data stays the run's; the batch per step changes
                per_step = self.config.batch_size * self.config.grad_accum  # sequences per step and process
                self.log(f"it was trained on {self.state.processes} processes and goes on with {self.world.size}: "
                         f"{self.config.batch_size} sequences per process, so each step now takes "
                         f"{per_step * self.world.size} instead of {per_step * self.state.processes}")
                self.state.processes = self.world.size
        else:
            self.log(f"{self.folder} was stopped before its first save: starting it from step 0")
        if self.world.main:
            self.metrics.truncate_after(self.state.step)  # rows a killed process logged after its last save
        return saved

    def start_clock(self) -> None:
        """The budget's clock starts now, before the first step (moved back by the time a resumed
        run had already spent): reading, tokenizing and compiling are set-up, not training."""
        self.started = time.perf_counter() - self.state.elapsed_s

    def announce_stop(self, count: int) -> None:
        """Said at once on a Ctrl-C (or SIGTERM): the first, then the second (see StopRequest)."""
        again = "stop at once, keeping the last save" if self.world.distributed else "skip it"
        self.log(f"stopping: saving and running the final evaluation (Ctrl-C again to {again})" if count == 1 else
                 "skipping the final evaluation: saving the training state (Ctrl-C again to stop at once, keeping the last save)")

    def progress(self) -> float:
        """The spent fraction of the budget: of the steps, of the time, or the larger of the two."""
        fractions = []
        if self.config.iters:
            fractions.append(self.state.step / self.config.iters)
        if self.config.time_s:
            fractions.append(self.state.elapsed_s / self.config.time_s)
        return max(fractions)

    def step(self, forward) -> Agreed:
        """One optimizer step of `grad_accum` micro-steps through `forward` (the model, compiled
        or not, under DDP on several processes), as every rank agreed: nothing is updated when
        the loss or the gradient was not finite on some rank."""
        self.lr = learning_rate(self.config, self.state.step, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        if self.dropout is not None:
            self.dropout.manual_seed(dropout_seed(self.config.seed, self.state.step, self.world.rank))
        loss_sum = torch.zeros((), device=self.device)
        micro_batches = [[t.to(self.device, non_blocking=True) for t in self.batches.next()]
                         for _ in range(self.config.grad_accum)]
        # Conversations: the mean over the assistant targets of the whole global batch, not of each row's.
        targets = target_count(micro_batches, self.world) if self.run.chats else None
        scale = None if targets is None else (self.world.size / targets).float()
        for micro, (x, y) in enumerate(micro_batches):
            # DDP averages the gradients over the ranks at the last micro-step's backward only.
            last = micro == self.config.grad_accum - 1
            with nullcontext() if last or not self.world.distributed else forward.no_sync():
                with autocast_for(self.device):  # no name keeps the logits: freed before the backward
                    backward, loss = micro_loss(forward(x), y, scale, self.config.grad_accum)
                backward.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        # A NaN or inf must never reach the weights or the optimizer moments, on any rank.
        agreed = self.world.agree(torch.isfinite(grad_norm) & torch.isfinite(loss_sum), loss_sum, self.stop.requested,
                                  time.perf_counter() - self.started)
        self.state.elapsed_s = agreed.elapsed_s
        if agreed.finite:
            self.optimizer.step()
            self.state.step += 1
            # a conversation run counts the tokens it learns from (its rows are as long as their conversations)
            self.state.tokens += int(targets) if targets is not None else self.config.batch_size * self.world.size * \
                self.config.grad_accum * self.run.model_config.context
        self.optimizer.zero_grad(set_to_none=True)
        return agreed

    def record(self, row: dict) -> None:
        """A row of metrics.jsonl, with the step, tokens and time (written by rank 0 alone)."""
        if self.world.main:
            s = self.state
            self.metrics.write({"step": s.step, "tokens": s.tokens, "elapsed_s": round(s.elapsed_s, 3), **row})

    def note_skipped_step(self) -> None:
        s = self.state
        s.skipped_steps += 1
        self.record({"skipped": "non-finite loss or gradient", "skipped_steps": s.skipped_steps})
        self.log(f"step {s.step + 1}: non-finite loss or gradient, update skipped ({s.skipped_steps} so far)")

    def evaluate_and_save(self) -> None:
        """Everything done at each evaluation: measure (every rank its share), then on rank 0
        keep the best, sample, save, plot. After a second Ctrl-C, the training state alone is saved."""
        try:
            if self.stop.skip_evaluation:
                raise SkipEvaluation
            start = time.perf_counter()
            with self.stop.skippable():
                val_loss, val_bpb = self.validate()
            self.eval_s = time.perf_counter() - start
        except SkipEvaluation:
            self.state.evaluated = False  # a resumed run evaluates this step before it ends
            if self.world.main:
                save_last(self.folder, self.model, self.optimizer, self.generators, self.state)
            self.log(f"step {self.state.step}: saved without evaluating")
            return
        self.state.evaluated = True
        per_char = {"val_bpc": val_loss / math.log(2)} if self.run.tokenizer.kind == "char" else {}  # bits per token otherwise
        chats = scored_counts(self.run.chats[1]) if self.run.chats else {}  # assistant tokens alone: how many
        self.record({"val_loss": val_loss, **per_char, "val_bpb": val_bpb, **chats})
        improved = self.state.best_val_loss is None or val_loss < self.state.best_val_loss
        if improved:
            self.state.best_val_loss = val_loss
        if self.world.main:
            if improved:  # model.safetensors holds the weights with the best validation loss so far
                save_model(self.folder / "model.safetensors", self.model)
            self.write_sample(val_loss)
            save_last(self.folder, self.model, self.optimizer, self.generators, self.state)  # for --resume
            self.metrics.plot()
        self.log(f"step {self.state.step}: val_loss {val_loss:.4f} (val_bpb {val_bpb:.3f}), {self.state.elapsed_s:.0f}s")

    def announce_final_evaluation(self) -> None:
        """Say what the wait after the last step is for, when long enough to wonder: the last
        evaluation took 2 s or more, or there was none yet and the validation text is large."""
        n = scored_tokens(self.run.val_tokens)
        if (self.eval_s or 0) >= 2 or (self.eval_s is None and n >= 100_000):
            took = f" (the last took {self.eval_s:.0f} s)" if self.eval_s else ""
            self.log(f"step {self.state.step}: the final evaluation, on {n:,} validation tokens{took}")

    def validate(self) -> tuple[float, float]:
        """The loss (nats per token) and bits per byte over the whole validation split, shared by the ranks."""
        if self.run.chats:  # on the assistant targets of the held-out conversations
            return evaluate_chats(self.model, self.run.chats[1], token_byte_lengths(self.run.tokenizer),
                                  self.config.eval_batch_size, self.world)
        return evaluate_shared(self.model, self.run.val_tokens, self.run.val_bytes, self.config.eval_batch_size, self.world)

    def write_sample(self, val_loss: float) -> None:
        """samples.txt's entry for this evaluation (samples.py): a text, or answers to held-out conversations."""
        model, tokenizer, chars, seed = self.model, self.run.tokenizer, self.config.sample_chars, self.config.seed
        body = chat_samples(model, tokenizer, self.run.chats[1], seed, chars) if self.run.chats \
            else text_sample(model, tokenizer, chars, seed)
        append_sample(self.folder, self.state.step, val_loss, body)

def train(run: Run, device: torch.device, log=None, world: World | None = None) -> TrainResult:
    """Train `run` (from runs.create_run, runs.resume_run or, under torchrun, runs.open_run) until
    its step or time budget is spent, or Ctrl-C; return the final state and whether it was interrupted.

    The step budget is `iters`, the time budget `time_s` (wall clock from the first step,
    evaluations included); with both, whichever ends first. There is an evaluation every
    `eval_every` steps and at the end."""
    world = world or World()
    if not world.main:
        log = lambda message: None  # noqa: E731 - only rank 0 talks
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    config = run.train_config
    trainer = Trainer(run, device, log, world)
    # A saved state is written by an evaluation (so the step it holds has had its own), unless a
    # second Ctrl-C skipped it.
    evaluated_step = trainer.state.step if run.resumed and trainer.restore() and trainer.state.evaluated else None
    state = trainer.state
    by_steps = bool(config.iters) and not config.time_s  # otherwise the bar counts seconds
    bar_total = config.iters if by_steps else round(config.time_s)
    bar = tqdm(total=bar_total, unit="step" if by_steps else "s", file=sys.stderr, dynamic_ncols=True,
               disable=None if world.main else True)
    # Training runs through `forward` (compiled or not, under DDP); evaluation, sampling and saving use the model.
    forward = trainer.model
    if config.compile:
        log("compiling the model for training (torch.compile; the budget's clock starts after it)")
        forward = compile_for_training(trainer.model, (config.batch_size, run.model_config.context), device, log)
    forward = world.wrap(forward, device)
    trainer.start_clock()
    last_log, faults_in_a_row = (time.perf_counter(), state.tokens), 0
    agreed_stop = False  # under torchrun: some rank was asked to stop, as the ranks agreed at the last step

    def stopping() -> bool:  # one process stops before its next step; several after the step that agreed on it
        return agreed_stop if world.distributed else trainer.stop.requested

    trainer.model.train()
    with trainer.stop.installed():
        if run.meta.get("init_from") is not None and evaluated_step is None and state.step == 0:
            # Where a fine-tune starts: the parent's loss on the new validation text, kept as the
            # best so far. Measured before the budget's clock starts, as set-up is.
            trainer.evaluate_and_save()
            evaluated_step = 0
            trainer.start_clock()
        while trainer.progress() < 1 and not stopping() and faults_in_a_row < MAX_FAULTS_IN_A_ROW:
            agreed = trainer.step(forward)
            agreed_stop = agreed.stop
            if not agreed.finite:
                faults_in_a_row += 1
                trainer.note_skipped_step()
                continue
            faults_in_a_row = 0
            bar.n = state.step if by_steps else min(round(state.elapsed_s), bar_total)
            if state.step % config.log_every == 0:
                train_loss = agreed.loss_sum.item() / config.grad_accum  # reads the loss from the device: once per log
                now = time.perf_counter()
                tokens_per_s = (state.tokens - last_log[1]) / (now - last_log[0])
                last_log = (now, state.tokens)
                trainer.record({"train_loss": train_loss, "lr": trainer.lr})
                bar.set_postfix(step=state.step, loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                bar.refresh()
            if state.step % config.eval_every == 0 and trainer.progress() < 1:
                trainer.evaluate_and_save()
                evaluated_step = state.step
        bar.close()
        if evaluated_step != state.step:  # not already done, e.g. by Ctrl-C during an evaluation
            if not trainer.stop.requested:  # Ctrl-C said what comes
                trainer.announce_final_evaluation()
            trainer.evaluate_and_save()
    if faults_in_a_row >= MAX_FAULTS_IN_A_ROW:
        raise world.error(f"training diverged: {MAX_FAULTS_IN_A_ROW} steps in a row had a non-finite loss or gradient; "
                          f"the last good state is saved in {run.folder}; try a lower --lr")
    if stopping():
        launcher = "torchrun (its flags) -m " if world.distributed else ""
        log(f"stopped at step {state.step} and saved; continue with: {launcher}blu train --out {run.folder} --resume")
    return TrainResult(state, stopping())
