"""Peak resident memory of fine-tuning a 135M-parameter Llama at blu's defaults: SmolLM2-135M's
shape with random weights (pretrained_speed.py's folder), imported with `blu import`, then
`blu train --init-from RUN --data TEXT --iters N` with no other flag, in a fresh process whose
peak resident set (the kernel's ru_maxrss for that process alone) is the figure. The run's
config.json says which context, micro-batch and accumulation the defaults chose.

    python benchmarks/fine_tune_memory.py [--iters 1] [--chars 300000] [--smoke]

The target (issue 20, part 5) is under 4 GB; memory does not depend on what the weights learned."""

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time

from common import SMOKE_HELP, save, shakespeare
from pretrained_speed import SMOKE, SMOLLM2_135M, write_folder


def peak_of(command: list[str]) -> tuple[int, float]:
    """(peak resident bytes, seconds) of one command in a fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command)} failed")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=1, help="optimizer steps (each the default 16 sequences)")
    parser.add_argument("--chars", type=int, default=300_000, help="characters of tiny Shakespeare to fine-tune on")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    settings = SMOKE if args.smoke else SMOLLM2_135M
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_folder(folder / "hf", settings)
        blu = [sys.executable, "-m", "blu"]
        subprocess.run([*blu, "import", "--from", folder / "hf", "--out", folder / "run"], check=True, stdout=subprocess.DEVNULL)
        text = folder / "text.txt"
        text.write_text(shakespeare().read_text(encoding="utf-8")[: args.chars], encoding="utf-8")
        peak, seconds = peak_of([*blu, "train", "--init-from", str(folder / "run"), "--data", str(text),
                                 "--out", str(folder / "tuned"), "--iters", str(args.iters)])
        config = json.loads((folder / "tuned" / "config.json").read_text())
    chosen = {"context": config["model"]["context"], "batch_size": config["train"]["batch_size"],
              "grad_accum": config["train"]["grad_accum"], "optimizer": config["train"]["optimizer"]}
    print(f"peak resident memory {peak / 1e9:.2f} GB in {seconds:.0f} s at the defaults {chosen}, load {os.getloadavg()}")
    print("wrote", save("fine_tune_memory", {"peak_bytes": peak, "seconds": seconds, "defaults": chosen,
                                             "settings": settings, "args": vars(args)}, args.smoke))


if __name__ == "__main__":
    main()
