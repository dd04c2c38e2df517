"""Several processes training one model: which rank this is, the process group and
DistributedDataParallel, and the decisions every rank must take together.

torchrun starts one process per device and says which one each is through the environment
(RANK, WORLD_SIZE, LOCAL_RANK); without it there is one process and no process group at all,
so a plain `blu train` runs exactly as it always did. Rules every rank keeps:

- the global batch is drawn from the seed alone and each rank takes its slice (data.BatchSampler);
- rank 0 prepares the run folder while the others wait, and is the only one that writes to it;
- whether to skip a step (a non-finite loss or gradient on any rank), to stop (Ctrl-C or SIGTERM
  on any rank) and the clock (rank 0's) are agreed by one small all_reduce per step, so every
  rank takes the same branch and none is left waiting in a collective."""

from contextlib import contextmanager
from dataclasses import dataclass
import datetime
import os
import signal
import threading
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist

from .errors import BluError, ReportedByRankZero

# How long a rank waits in a collective before giving up. A peer that dies breaks its
# connections at once (the others fail at their next collective, and torchrun stops them);
# this bounds the wait for one that hangs, or for a machine torchrun cannot reach. Long because
# the other ranks wait in a collective while rank 0 reads and tokenizes a large text, or saves.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


class Agreed(NamedTuple):
    """What every rank decided together at the end of a step's backward pass."""

    finite: bool  # the loss and the gradient were finite on every rank: take the step
    loss_sum: torch.Tensor  # the micro-steps' summed loss, averaged over the ranks
    stop: bool  # some rank was asked to stop (Ctrl-C or SIGTERM)
    elapsed_s: float  # rank 0's clock


@dataclass(frozen=True)
class World:
    """The processes training one model: this one's rank among `size`, and its rank on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    restarts: int = 0  # how many times torchrun restarted the group (after a worker died)

    @classmethod
    def from_env(cls) -> "World":
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                   int(env.get("TORCHELASTIC_RESTART_COUNT", 0)))

    @property
    def main(self) -> bool:
        """The rank that prepares, writes, prints and draws."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: the GPU of its local rank on CUDA (one process per GPU)."""
        if not self.distributed:
            return device
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise BluError(f"local rank {self.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                               "start at most that many processes per node (--nproc-per-node)")
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        if device.type != "cpu":
            raise BluError(f"training on several processes works on CUDA (NCCL) or the CPU (gloo), not on {device.type}")
        return device

    @contextmanager
    def process_group(self, device: torch.device):
        """The process group for the life of the block: NCCL between GPUs, gloo between CPUs.
        Nothing at all on one process."""
        if not self.distributed:
            yield
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=self._store(), rank=self.rank, world_size=self.size,
                                timeout=COLLECTIVE_TIMEOUT, device_id=device if device.type == "cuda" else None)
        try:
            yield
            # Every rank done with its collectives before any tears the group down: a rank that
            # destroyed it while rank 0 was still saving aborted at exit ("terminate called
            # without an active exception", seen once in CI). Not after an error: a peer may be gone.
            dist.barrier()
        finally:
            dist.destroy_process_group()

    def _store(self) -> dist.Store:
        """Where the ranks find each other (MASTER_ADDR:MASTER_PORT, as torchrun sets them), under
        a prefix of its own for each restart of the group. torchrun's agent keeps one store
        across restarts, and without the prefix a restarted rank can read the address its dead
        predecessor published and fail to connect (seen with gloo: "Connection refused")."""
        env = os.environ
        hosted_by_torchrun = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # else rank 0 hosts it
        store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), self.size,
                              is_master=self.main and not hosted_by_torchrun, timeout=COLLECTIVE_TIMEOUT)
        return dist.PrefixStore(f"blu/attempt_{self.restarts}", store)

    def wrap(self, forward: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`forward` (the model, compiled or not) under DistributedDataParallel: gradients are
        averaged over the ranks during backward. The rotary tables are constants, so buffers are
        not broadcast at each forward."""
        if not self.distributed:
            return forward
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(forward, device_ids=ids, forward_sync_buffers=False)

    def agree(self, finite: torch.Tensor, loss_sum: torch.Tensor, stop: bool, elapsed_s: float) -> Agreed:
        """The decisions of a step, the same on every rank: one all_reduce of four numbers.
        On one process, just the local values (`finite` read from the device: one host sync)."""
        if not self.distributed:
            return Agreed(bool(finite), loss_sum, stop, elapsed_s)
        values = torch.stack([(~finite).double(), loss_sum.double(), torch.tensor(float(stop), device=loss_sum.device),
                              torch.tensor(elapsed_s if self.main else 0.0, device=loss_sum.device, dtype=torch.float64)])
        dist.all_reduce(values)  # summed: any rank's bad step or stop counts, only rank 0 adds its clock
        not_finite, loss_total, stops, elapsed = values.tolist()
        return Agreed(not_finite == 0, torch.tensor(loss_total / self.size), stops > 0, elapsed)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the ranks (itself on one process)."""
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def error(self, message: str) -> BluError:
        """The error to raise for a failure every rank found together: printed by rank 0 only."""
        return BluError(message) if self.main else ReportedByRankZero(message)

    def prepared_by_main(self, prepare: Callable[[], object], describe: Callable[[object], object],
                         follow: Callable[[object], object]):
        """Rank 0 runs `prepare()` (which may write files) while the others wait; then they run
        `follow(describe(what rank 0 prepared))`. If rank 0 fails with a user error, it raises
        it and the others raise ReportedByRankZero, so every rank exits with code 2 at once."""
        if not self.distributed:
            return prepare()
        message = [("failed", "rank 0 could not prepare the run (its error is above)")]
        if self.main:
            try:
                prepared = prepare()
                message = [("ok", describe(prepared))]
            except BluError as error:
                message = [("failed", str(error))]
                raise
            finally:  # the others are waiting for this, whatever happened
                dist.broadcast_object_list(message, src=0)
            return prepared
        dist.broadcast_object_list(message, src=0)
        outcome, detail = message[0]
        if outcome != "ok":
            raise ReportedByRankZero(detail)
        return follow(detail)


class SkipEvaluation(Exception):
    """A second Ctrl-C during StopRequest.skippable(): the evaluation it guards is given up."""


class StopRequest:
    """The first Ctrl-C (or SIGTERM) asks training to stop after the current step, save and run
    its final evaluation, and `announce(1)` says so at once. On one process a second Ctrl-C skips
    that evaluation (`announce(2)`): it ends the one running inside `skippable()` at once (by
    raising SkipEvaluation there) or marks the coming one skipped; the trainer saves its state
    either way. A third Ctrl-C interrupts at once, as a second does under torchrun (`can_skip`
    False: the ranks share an evaluation, and could not agree to give it up halfway); atomic
    writes keep the folder readable. Under torchrun the request of any rank is shared by World.agree."""

    def __init__(self, announce=lambda count: None, can_skip: bool = True):
        self.requested = False  # stop after the current step
        self.skip_evaluation = False  # and do not evaluate before stopping
        self.announce, self.can_skip = announce, can_skip
        self._skippable = False

    def _handle(self, signum, frame):
        if not self.requested:
            self.requested = True
            self.announce(1)
        elif signum == signal.SIGINT:  # a repeated SIGTERM asks nothing more
            if self.skip_evaluation or not self.can_skip:
                raise KeyboardInterrupt
            self.skip_evaluation = True
            self.announce(2)
            if self._skippable:
                raise SkipEvaluation

    @contextmanager
    def skippable(self):
        """A block (an evaluation) that a second Ctrl-C ends at once, raising SkipEvaluation."""
        self._skippable = True
        try:
            yield
        finally:
            self._skippable = False

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
