"""Picking the device and its precision, for training, generation and evaluation alike."""

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
