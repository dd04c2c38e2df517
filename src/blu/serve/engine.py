"""Continuous batching: one thread steps one `DecodeBatch` for every request at once.

Requests (`Job`s, each with `n` choices) wait in a bounded queue and join the batch between
decode steps: their prompts are prefilled into free rows (`DecodeBatch.add`), then every row
advances one token per step, each at its own position. A choice leaves at its stop string, its
end-of-text token or its token limit (its `TextStream` says which), and a job whose client went
away leaves before the next step is computed (`DecodeBatch.remove`). Each row samples with its
own options and its own `torch.Generator`, through `sampling.sample`, exactly as `blu generate`
does for one text; so a seeded request gives the text `blu generate` gives, unless sharing the
batch changes a logit enough to flip a draw (see the README, "Same seed, same text").

A job that asked for its prompt's scores (echo with logprobs) has its prompt scored first, with
the other waiting prompts in one batched forward (scoring.py).

Events go back through `Job.send`, which must be thread-safe. Nothing in this module knows
about HTTP: it refuses a job by raising `events.Refused`."""

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
from ..generate import forbid
from ..runs import load_config, load_run
from ..sampling import sample
from ..text_stream import TextStream
from .events import Candidate, Failure, Finish, Job, Refused, TextDelta, TokenInfo
from .scoring import first_token, score_prompts, to_score
from .settings import ServerSettings

RELOAD_CHECK_S = 0.5  # how often an idle engine looks for newer weights


class Choice:
    """A row of the batch: one choice of a job, its generator and its text stream."""

    def __init__(self, job: Job, index: int, device, tokenizer):
        self.job, self.index = job, index
        seed = secrets.randbits(63) if job.seed is None else job.seed + index
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.text = TextStream(tokenizer, job.stop, job.max_tokens, job.stop_ids)
        self.infos: dict[int, TokenInfo] = {}  # by position, until the text of their token is shown

    def advance(self, token: int, info: TokenInfo | None) -> bool:
        """Take the next token and send what became safe to show; True when the choice is done."""
        if info is not None:
            self.infos[self.text.tokens] = info
        shown = self.text.feed(token)
        tokens = []
        for position, offset in self.text.released:
            if (released := self.infos.pop(position, None)) is not None:
                released.offset = offset
                tokens.append(released)
        if shown or tokens:
            self.job.send(TextDelta(self.index, shown, tokens))
        if self.text.reason:
            self.job.send(Finish(self.index, self.text.reason, self.text.tokens))
        return self.text.reason is not None


class Engine:
    """The batch and the thread that steps it. `submit` queues a job, `cancel` drops one.

    `capacity`: rows decoded together; `max_queue`: jobs that may wait for rows; `history`:
    tokens each row keeps for the repetition penalty (the largest repetition_window served)."""

    def __init__(self, run_folder, device="cpu", capacity: int = ServerSettings.max_batch,
                 max_queue: int = ServerSettings.max_queue, history: int = ServerSettings.max_repetition_window, log=None):
        self.folder, self.device = Path(run_folder), torch.device(device)
        self.capacity, self.max_queue, self.history = capacity, max_queue, history
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.meta, self.model_config, _, self.tokenizer = load_config(self.folder)
        self.lock = threading.Condition()
        self.waiting: deque[Job] = deque()
        self.active = 0  # jobs submitted and not yet over: waiting, running, or cancelled and not yet dropped
        self.rows: list[Choice] = []
        self.batch: DecodeBatch | None = None  # None until the run has weights
        self.model = None  # the model itself, for scoring prompts (scoring.py)
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

    def submit(self, *jobs: Job) -> None:
        """Queue the jobs of one request, all or none (a request of many prompts is refused only
        when the queue is already full)."""
        with self.lock:
            if not self.ready:
                raise Refused(f"{self.folder} has no weights yet: training saves them at its first evaluation",
                              "model_not_ready", 5)
            if len(self.waiting) >= self.max_queue:
                raise Refused(f"the server is busy ({len(self.waiting)} requests waiting); retry later", "queue_full", 1)
            self.waiting.extend(jobs)
            self.active += len(jobs)
            self.lock.notify()

    def cancel(self, *jobs: Job) -> None:
        with self.lock:
            for job in jobs:
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
                    self._score_waiting()
                    self._admit_waiting()
                    if self.rows:
                        self._step()
                except Exception as error:  # a bug or a device failure: every client is told, the batch starts afresh
                    self.log(f"blu serve: generation failed: {type(error).__name__}: {error}")
                    self._fail_all(f"generation failed: {type(error).__name__}: {error}")

    def _admit_waiting(self) -> None:
        """Waiting jobs into the free rows, first come first served. A job leaves the queue only
        once it has its rows, so that when its prefill fails (out of memory, say) it is still
        found, with every other, by `_fail_all`."""
        while True:
            with self.lock:
                if not self.waiting or self.waiting[0].n > self.capacity - len(self.rows):
                    return
                job = self.waiting[0]
                if job.score is not None and not job.scored and not job.cancelled:
                    return  # its prompt is scored first, at the next turn
            self._admit(job)
            with self.lock:
                self.waiting.popleft()

    def _score_waiting(self) -> None:
        """Score the prompts due this turn (scoring.to_score); a job that generates at most one
        token is then done without taking a row."""
        with self.lock:
            jobs = to_score(self.waiting)
        if not jobs:
            return
        over = set()
        for job, logits in zip(jobs, score_prompts(self.model, self.tokenizer, jobs)):
            if job.max_tokens <= 1:
                choices = [Choice(job, index, self.device, self.tokenizer) for index in range(job.n)]
                first_token(choices, logits, self.batch.width, self.tokenizer.unk_id, self._token_info)
                over.add(id(job))
        with self.lock:
            self.waiting = deque(job for job in self.waiting if id(job) not in over)
            self.active -= len(over)

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
        tokens = self._sample(forbid(logits, self.tokenizer.unk_id), history).tolist()  # one device sync for the whole batch
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
        top = []
        if alternatives:
            candidates = forbid(logprobs.clone()[None], self.tokenizer.unk_id)[0]
            values, ids = candidates.topk(min(alternatives, candidates.shape[0]))
            top = [self._candidate(i, v) for i, v in zip(ids.tolist(), values.tolist())]
        return TokenInfo(self._candidate(token, float(logprobs[token])), top)

    def _candidate(self, token: int, logprob: float) -> Candidate:
        raw = self.tokenizer.token_bytes[token]
        return Candidate(raw.decode("utf-8", errors="replace"), raw, logprob)

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
            self.batch = DecodeBatch(self.batch.decoder, self.capacity, self.history)

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
        batch = DecodeBatch(Decoder(model), self.capacity, self.history)
        with self.lock:
            if self.batch is not None:
                self.reloads += 1
            self.batch, self.model, self.weights_mtime = batch, model, mtime
