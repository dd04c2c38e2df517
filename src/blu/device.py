"""Picking the device and its precision, for training, generation and evaluation alike, and
compiling the model for training on it."""

from contextlib import nullcontext

import torch

from .errors import BluError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str) -> torch.device:
    """auto = CUDA, then MPS, then CPU; an explicit device must be available."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise BluError(f"--device {name} was asked for but this machine has no {name.upper()} device")
    return torch.device(name)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, where it is fast and stable; full fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def device_of(model) -> torch.device:
    return model.tok_embeddings.weight.device


def compile_for_training(model, batch_shape, device: torch.device, log):
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
