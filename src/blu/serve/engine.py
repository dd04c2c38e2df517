"""Continuous batching: one thread steps one `DecodeBatch` for every request at once.

Requests (`Job`s, each with `n` choices) wait in a bounded queue and join the batch between
decode steps: their prompts are prefilled into free rows (`DecodeBatch.add`), then every row
advances one token per step, each at its own position. A choice leaves at its stop string or
its token limit, and a job whose client went away leaves before the next step is computed
(`DecodeBatch.remove`). Each row samples with its own options and its own `torch.Generator`,
through `sampling.sample`, exactly as `blu generate` does for one text; so a seeded request
gives the text `blu generate` gives, unless sharing the batch changes a logit enough to flip a
draw (see the README, "Same seed, same text").

Events go back to the asyncio side through `Job.send`, which must be thread-safe. Nothing in
this module knows about HTTP."""

from collections import deque
from pathlib import Path
import secrets
import sys
import threading
import time

import torch

from ..config import SamplingOptions
from ..decode import DecodeBatch, Decoder
from ..errors import BluError
from ..generate import StopStrings
from ..runs import load_config, load_run
from ..sampling import sample
from .errors import ApiError
from .events import Failure, Finish, Job, Piece, TokenInfo

HISTORY = 256  # tokens each row remembers for the repetition penalty: the largest repetition_window served
RELOAD_CHECK_S = 0.5  # how often an idle engine looks for newer weights


class Choice:
    """A row of the batch: one choice of a job, its generator, stream decoder and stop strings."""

    def __init__(self, job: Job, index: int, device, tokenizer):
        self.job, self.index = job, index
        seed = secrets.randbits(63) if job.seed is None else job.seed + index
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.text = tokenizer.stream_decoder()
        self.end_id = tokenizer.end_id  # the end-of-text token (byte and bpe runs): the text is over
        self.stops = StopStrings(job.stop)
        self.pending: deque[tuple[str, TokenInfo | None]] = deque()  # pieces the stop strings hold back
        self.generated = 0

    def advance(self, token: int, info: TokenInfo | None) -> bool:
        """Take the next token and send what became safe to show; True when the choice is done."""
        self.generated += 1
        ended = token == self.end_id  # as TextGenerator.generate: the end token is counted, never shown
        piece = "" if ended else self.text.feed(token)
        if not ended:
            self.pending.append((piece, info))
        shown = self.stops.feed(piece)
        done = ended or self.stops.stopped or self.generated >= self.job.max_tokens
        if done and not self.stops.stopped:
            shown += self.stops.feed(self.text.flush()) + self.stops.flush()
        self._send(shown)
        if done:
            reason = "stop" if self.stops.stopped or ended else "length"
            self.job.send(Finish(self.index, reason, self.generated))
        return done

    def _send(self, shown: str) -> None:
        """Send `shown` with the tokens it is made of (those past a stop string are never sent)."""
        tokens, remaining = [], len(shown)
        while self.pending and len(self.pending[0][0]) <= remaining:
            piece, info = self.pending.popleft()
            remaining -= len(piece)
            if info is not None:
                tokens.append(info)
        if shown or tokens:
            self.job.send(Piece(self.index, shown, tokens))


class Engine:
    """The batch and the thread that steps it. `submit` queues a job, `cancel` drops one."""

    def __init__(self, run_folder, device="cpu", capacity: int = 64, max_queue: int = 256, log=None):
        self.folder, self.device = Path(run_folder), torch.device(device)
        self.capacity, self.max_queue = capacity, max_queue
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.meta, self.model_config, _, self.tokenizer = load_config(self.folder)
        self.lock = threading.Condition()
        self.waiting: deque[Job] = deque()
        self.active = 0  # jobs submitted and not yet over: waiting, running, or cancelled and not yet dropped
        self.rows: list[Choice] = []
        self.batch: DecodeBatch | None = None  # None until the run has weights
        self.logits: torch.Tensor | None = None  # (rows, vocab): what each row samples from next
        self.weights_mtime: int | None = None
        self.reloads = 0  # newer weights picked up since the start
        self._checked = 0.0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="blu-engine", daemon=True)
        self._reload_if_newer()

    @property
    def ready(self) -> bool:
        return self.batch is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self.lock.notify()
        self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        with self.lock:
            if not self.ready:
                raise ApiError(503, f"{self.folder} has no weights yet: training saves them at its first evaluation",
                               code="model_not_ready", headers={"Retry-After": "5"})
            if len(self.waiting) >= self.max_queue:
                raise ApiError(503, f"the server is busy ({len(self.waiting)} requests waiting); retry later",
                               code="queue_full", headers={"Retry-After": "1"})
            self.waiting.append(job)
            self.active += 1
            self.lock.notify()

    def cancel(self, job: Job) -> None:
        with self.lock:
            job.cancelled = True
            self.lock.notify()

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self.lock:
                    if not self.rows and not self.waiting and not self._stopping:
                        self.lock.wait(timeout=RELOAD_CHECK_S)
                    if self._stopping:
                        return
                try:
                    if not self.rows:  # between requests: a newer model.safetensors is picked up here
                        self._reload_if_newer()
                    for job in self._admissible():
                        self._admit(job)
                    if self.rows:
                        self._step()
                except Exception as error:  # a bug or a device failure: every client is told, the batch starts afresh
                    self.log(f"blu serve: generation failed: {type(error).__name__}: {error}")
                    self._fail_all(f"generation failed: {type(error).__name__}: {error}")

    def _admissible(self) -> list[Job]:
        """Waiting jobs that fit in the free rows, first come first served."""
        taken, free = [], self.capacity - len(self.rows)
        with self.lock:
            while self.waiting and self.waiting[0].n <= free:
                job = self.waiting.popleft()
                free -= job.n
                taken.append(job)
        return taken

    def _admit(self, job: Job) -> None:
        if job.cancelled or job.max_tokens == 0:
            for index in range(job.n if not job.cancelled else 0):
                job.send(Finish(index, "length", 0))
            self._job_over(job)
            return
        prompt = torch.tensor([job.prompt_ids] * job.n, device=self.device)
        logits = self.batch.add(prompt)
        self.logits = logits if self.logits is None else torch.cat((self.logits, logits))
        self.rows.extend(Choice(job, index, self.device, self.tokenizer) for index in range(job.n))
        job.rows_left = job.n

    def _step(self) -> None:
        """Sample one token for every row, send the text, drop the rows that are done, and
        compute the next logits for the others."""
        for row in reversed(range(len(self.rows))):
            if self.rows[row].job.cancelled:
                self._remove(row)
        if not self.rows:
            return
        logits, history = self.logits, self.batch.history
        wanted = any(choice.job.logprobs is not None for choice in self.rows)
        logprobs = torch.log_softmax(logits.float(), dim=-1) if wanted else None
        if self.tokenizer.unk_id is not None:  # <unk> stands for no character: never generated
            logits[:, self.tokenizer.unk_id] = float("-inf")
        tokens = self._sample(logits, history).tolist()  # one device sync for the whole batch
        done = [row for row, (choice, token) in enumerate(zip(self.rows, tokens))
                if choice.advance(token, self._token_info(logprobs[row], token, choice.job.logprobs)
                                  if choice.job.logprobs is not None else None)]
        for row in reversed(done):
            self._remove(row, tokens)
        self.logits = self.batch.step(torch.tensor(tokens, device=self.device)) if self.rows else None

    def _sample(self, logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """A token for every row: rows with the same options are sampled together, each with its
        own generator (see sampling.draw), so a row draws what it would draw alone."""
        groups: dict[SamplingOptions, list[int]] = {}
        for row, choice in enumerate(self.rows):
            groups.setdefault(choice.job.options, []).append(row)
        if len(groups) == 1:  # the usual case: no gathering
            (options, _), = groups.items()
            return sample(logits, options, [choice.generator for choice in self.rows], history)
        tokens = torch.empty(len(self.rows), dtype=torch.long, device=logits.device)
        for options, members in groups.items():
            index = torch.tensor(members, device=logits.device)
            tokens[index] = sample(logits[index], options, [self.rows[r].generator for r in members], history[index])
        return tokens

    def _token_info(self, logprobs: torch.Tensor, token: int, alternatives: int) -> TokenInfo:
        decode = self.tokenizer.decode
        top = []
        if alternatives:
            candidates = logprobs.clone()
            if self.tokenizer.unk_id is not None:
                candidates[self.tokenizer.unk_id] = float("-inf")
            values, ids = candidates.topk(min(alternatives, candidates.shape[0]))
            top = [(decode([i]), v) for i, v in zip(ids.tolist(), values.tolist())]
        return TokenInfo(decode([token]), float(logprobs[token]), top)

    def _remove(self, row: int, tokens: list | None = None) -> None:
        """Drop a row as DecodeBatch.remove does (the last row moves into its place), mirrored in
        the rows, the pending logits and this step's tokens."""
        choice, last = self.rows[row], len(self.rows) - 1
        self.batch.remove(row)
        self.rows[row] = self.rows[last]
        self.rows.pop()
        self.logits[row] = self.logits[last]
        self.logits = self.logits[:last]
        if tokens is not None:
            tokens[row] = tokens[last]
            tokens.pop()
        choice.job.rows_left -= 1
        if choice.job.rows_left == 0:
            self._job_over(choice.job)

    def _job_over(self, job: Job) -> None:
        with self.lock:
            self.active -= 1

    def _fail_all(self, message: str) -> None:
        jobs = {id(choice.job): choice.job for choice in self.rows}
        with self.lock:
            jobs.update({id(job): job for job in self.waiting})
            self.waiting.clear()
            self.active -= len(jobs)
        for job in jobs.values():
            job.send(Failure(message))
        self.rows, self.logits = [], None
        if self.batch is not None:
            self.batch = DecodeBatch(self.batch.decoder, self.capacity, HISTORY)

    def _reload_if_newer(self) -> None:
        """Load model.safetensors when it is newer than the weights in use (training saves the
        best weights there at each evaluation). Called only between requests, so that one
        request is always generated by one set of weights."""
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S and self.batch is not None:
            return
        self._checked = now
        try:
            mtime = (self.folder / "model.safetensors").stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self.weights_mtime:
            return
        try:
            _, model, _ = load_run(self.folder, self.device)
        except BluError as error:  # e.g. caught mid-write by a copy that is not atomic: keep what we have
            self.log(f"blu serve: could not load newer weights ({error}); keeping the current ones")
            self._checked = now
            return
        batch = DecodeBatch(Decoder(model), self.capacity, HISTORY)
        with self.lock:
            if self.batch is not None:
                self.reloads += 1
            self.batch, self.weights_mtime = batch, mtime
