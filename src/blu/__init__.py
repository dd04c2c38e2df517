"""blu: train a small Llama-style language model on one text file and generate from it.

    import blu
    run = blu.load("runs/tinyshakespeare")
    for piece in run.generate("ROMEO:", max_new_tokens=200, seed=0):
        print(piece, end="")
"""

from .version import __version__

__all__ = ["__version__", "load"]


def load(run_dir, device: str = "cpu"):
    """The best model of a run folder, as a `blu.generate.TextGenerator`
    (`.generate(prompt, ...)`, `.model`, `.tokenizer`)."""
    from .generate import TextGenerator
    from .runs import load_run

    meta, model, tokenizer = load_run(run_dir, device)
    return TextGenerator(model, tokenizer, meta)
