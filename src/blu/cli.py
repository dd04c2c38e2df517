"""The `blu` command: argument parsing and printing, nothing else.

Problems the user can fix print one line on stderr and exit with code 2.
Generated text is the only thing written to stdout."""

import argparse
import json
import math
import os
import sys

from . import __version__
from .config import DEFAULT_MAX_NEW_TOKENS, PRESETS, ModelConfig, SamplingOptions, TrainConfig, knobs, parse_duration
from .data import MAX_VALIDATION_CHARS, VAL_FRACTION
from .errors import BluError, ReportedByRankZero
from .tokenizer import DEFAULT_BPE_VOCAB_SIZE, KINDS

SEED_PROMPTS = ("ROMEO: ", "HAMLET: To be, or not to be,", "Once upon a time", "The king")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, exit code 2, as for every other bad input; under torchrun every rank parses
        # the same command line, and rank 0 alone says what is wrong with it.
        self.exit(2, f"{self.prog}: error: {message}\n" if os.environ.get("RANK", "0") == "0" else None)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except where there is none or the help already says it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _duration(text):
    try:
        return parse_duration(text)
    except BluError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _long_budget_note(preset, name: str) -> str:
    seconds, values = preset.long_budget or (0, {})
    return f" or {values[name]} from --time {seconds:g}" if name in values else ""


def _add_config_flags(parser, cls, section):
    group = parser.add_argument_group(f"{section} (default: the preset's value)")
    for f in knobs(cls):
        per_preset = ", ".join(f"{name}: {getattr(getattr(p, section), f.name)}{_long_budget_note(p, f.name)}"
                               for name, p in PRESETS.items())
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{f.metadata['help']} ({per_preset})")
        else:
            group.add_argument(flag, type=f.type, default=None, choices=f.metadata["choices"],
                               metavar=None if f.metadata["choices"] else "N", help=f"{f.metadata['help']} ({per_preset})")


def _add_option_flags(parser, cls):
    """A flag for each knob of `cls`, whose default is the dataclass's."""
    for f in knobs(cls):
        parser.add_argument("--" + f.name.replace("_", "-"), type=f.type, default=f.default,
                            choices=f.metadata["choices"], help=f.metadata["help"])


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="blu", description="Train a small Llama-style language model on a text file and generate from it.")
    parser.add_argument("--version", action="version", version=f"blu {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    fmt = HelpFormatter

    train = commands.add_parser("train", help="train a model (tiny Shakespeare by default)", formatter_class=fmt)
    train.add_argument("--data", help="a UTF-8 text file, or a folder, .jsonl, .parquet or .gz of them, to train on "
                                      "(default: tiny Shakespeare, downloaded once)")
    train.add_argument("--val-data", help="validate on this text (file or corpus) instead of a share of --data")
    train.add_argument("--ext", action="append", metavar="SUFFIX",
                       help="in a --data folder, read only files ending in SUFFIX (repeatable; default: every file)")
    train.add_argument("--text-field", help="the JSONL field or Parquet column holding the text (default: text)")
    train.add_argument("--skip-bad-files", action="store_true", default=None,
                       help="leave out files that are not UTF-8 text (or bad JSONL/Parquet), listing them, "
                            "instead of refusing the corpus")
    train.add_argument("--out", help="run folder (default: runs/<name of the data file>)")
    train.add_argument("--preset", choices=sorted(PRESETS), help="configuration (default: gpu on CUDA, cpu otherwise)")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                       help="auto = CUDA (bf16), then MPS, then CPU")
    train.add_argument("--iters", type=int, help="optimizer steps (default: the preset's, when --time is not given)")
    train.add_argument("--time", type=_duration, help="wall-clock budget: seconds or 90s, 10m, 1h")
    train.add_argument("--seed", type=int, help="random seed for initialisation and batches (default 1337)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    train.add_argument("--force", action="store_true", help="replace a run already in --out")
    train.add_argument("--tokenizer", choices=KINDS,
                       help="char: one token per character (default); byte: the 256 UTF-8 bytes; "
                            "bpe: a byte-level BPE trained on the training text")
    train.add_argument("--vocab-size", type=int, help=f"tokens in a bpe vocabulary (default {DEFAULT_BPE_VOCAB_SIZE})")
    train.add_argument("--tokenizer-from", metavar="RUN_OR_FILE", help="reuse the tokenizer of a run folder or a tokenizer.json")
    train.add_argument("--val-fraction", type=float,
                       help=f"final share of the text held out for validation (default {VAL_FRACTION}, at most "
                            f"{MAX_VALIDATION_CHARS:,} characters)")
    _add_config_flags(train, ModelConfig, "model")
    _add_config_flags(train, TrainConfig, "train")

    gen = commands.add_parser("generate", help="generate text from a trained run", formatter_class=fmt)
    gen.add_argument("--run", required=True, help="run folder")
    gen.add_argument("--prompt", help="text to continue (default: the original Blu's four sample prompts)")
    gen.add_argument("-i", "--interactive", action="store_true", help="read prompts line by line from stdin")
    gen.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="how many tokens to generate")
    _add_option_flags(gen, SamplingOptions)
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="stop before this text (repeatable; the stop text is not printed)")
    gen.add_argument("--num-samples", type=int, default=1, help="continuations per prompt, generated as one batch")
    gen.add_argument("--seed", type=int, help="same seed, same text (default: random)")
    gen.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="where to run the model")

    ev = commands.add_parser("eval", help="validation loss and bits per character", formatter_class=fmt)
    ev.add_argument("--run", required=True, help="run folder")
    ev.add_argument("--data", help="score this text file instead of the run's validation split")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--stream", action="store_true",
                    help="loss by position through the generation path, up to 8x the context")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run the model")

    srv = commands.add_parser("serve", help="OpenAI-compatible API, playground page and live training view",
                              formatter_class=fmt)
    srv.add_argument("--run", required=True, help="run folder (may be training: newer weights are picked up)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (anything else than loopback wants --api-key)")
    srv.add_argument("--port", type=int, default=8000, help="port to listen on")
    srv.add_argument("--api-key", default=os.environ.get("BLU_API_KEY"),
                     help="require Authorization: Bearer KEY on /v1 and /api (default: $BLU_API_KEY, or none)")
    srv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="let web pages from ORIGIN call the API (repeatable; default: none)")
    srv.add_argument("--chat-template", metavar="FILE", help="chat template: text with {role} and {content} "
                     "(default: '{role}: {content}\\n' per message, then 'assistant: ')")
    srv.add_argument("--max-batch", type=int, default=64, help="choices decoded together; more requests wait")
    srv.add_argument("--max-queue", type=int, default=256, help="requests waiting; beyond it, 503 with Retry-After")
    srv.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="where to run the model")

    exp = commands.add_parser("export", help="export a run for other tools", formatter_class=fmt)
    exp.add_argument("--run", required=True, help="run folder")
    exp.add_argument("--format", default="hf", choices=["hf", "gguf"],
                     help="hf = Hugging Face transformers (LlamaForCausalLM), a folder; gguf = llama.cpp, one file")
    exp.add_argument("--out", required=True, help="folder (hf) or .gguf file (gguf) to write")
    exp.add_argument("--dtype", choices=["f32", "f16", "bf16", "q8_0"],
                     help="gguf only: how the weight matrices are stored (default: f32; q8_0 needs rows of a multiple of 32)")
    return parser


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    from .device import pick_device
    from .distributed import World
    from .runs import open_run
    from .train import train

    world = World.from_env()  # several processes under torchrun; one otherwise
    try:
        device = world.device(pick_device(args.device))
    except BluError as error:
        raise world.error(str(error)) from None  # the same on every rank
    overrides = {"seed": args.seed, **{f.name: getattr(args, f.name) for f in knobs(ModelConfig) + knobs(TrainConfig)}}
    settings = dict(data=args.data, preset=args.preset, overrides=overrides, force=args.force, tokenizer=args.tokenizer,
                    vocab_size=args.vocab_size, tokenizer_from=args.tokenizer_from, val_fraction=args.val_fraction,
                    val_data=args.val_data, ext=args.ext, text_field=args.text_field, skip_bad_files=args.skip_bad_files)
    with world.process_group(device):
        run = open_run(world, args.resume, args.out, args.iters, args.time, device=device, **settings)
        model_config, train_config = run.model_config, run.train_config
        n_params = model_config.num_parameters()
        budget_text = " and ".join(filter(None, [f"{train_config.iters} steps" if train_config.iters else "",
                                                 f"{train_config.time_s:g} s" if train_config.time_s else ""]))
        where = f"{world.size} processes on {device.type}" if world.distributed else device.type
        if world.main and run.skipped:
            say(f"blu: left out {len(run.skipped)} bad files (--skip-bad-files): {'; '.join(run.skipped)}")
        if world.main:  # under torchrun, rank 0 alone talks
            say(f"blu {__version__}: {run.meta.get('preset', 'custom')} preset, {n_params / 1e6:.2f}M parameters, "
                f"vocabulary {run.tokenizer.vocab_size}, {len(run.train_tokens):,} train / {len(run.val_tokens):,} "
                f"validation tokens, {where}, budget {budget_text}, run folder {run.folder}")
        state, interrupted = train(run, device, world=world)
    if world.main:
        unit = "nats/char" if run.tokenizer.kind == "char" else "nats/token"
        say(f"best val_loss {state.best_val_loss:.4f} {unit} ({state.best_val_loss / math.log(2):.3f} bits) "
            f"after {state.step} steps, {state.elapsed_s:.0f} s; try: blu generate --run {run.folder}")
    return 130 if interrupted else 0


def cmd_generate(args) -> int:
    from . import load
    from .device import pick_device

    run = load(args.run, pick_device(args.device))
    controls = dict(max_new_tokens=args.max_new_tokens, seed=args.seed, stop=args.stop,
                    **{f.name: getattr(args, f.name) for f in knobs(SamplingOptions)})
    run.generate("", **controls)  # checks every value (and generates nothing until iterated)
    if args.num_samples < 1:
        raise BluError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.interactive:
        return interactive(run, controls)
    if args.prompt is not None:
        prompts = [args.prompt]
    else:
        prompts = [p for p in SEED_PROMPTS if not run.unknown_chars(p)] or [""]
    for i, prompt in enumerate(prompts):
        warn_unknown(run, prompt)
        seed = None if args.seed is None else args.seed + i
        if args.num_samples == 1:
            sys.stdout.write(("\n\n" if i else "") + prompt)
            for piece in run.generate(prompt, **{**controls, "seed": seed}):
                sys.stdout.write(piece)
                sys.stdout.flush()
        else:
            texts = run.generate_many(prompt, args.num_samples, **{**controls, "seed": seed})
            sys.stdout.write(("\n\n" if i else "") + "\n\n".join(prompt + text for text in texts))
    sys.stdout.write("\n")
    return 0


def warn_unknown(run, prompt: str) -> None:
    unknown = run.unknown_chars(prompt)
    if unknown:
        say(f"blu: dropping prompt characters the model never saw: {''.join(unknown)!r}")


def interactive(run, controls) -> int:
    """One continuation per line of input until end of input; Ctrl-C ends the current continuation only."""
    tty = sys.stdin.isatty()
    while True:
        try:
            if tty:
                sys.stderr.write("> ")
                sys.stderr.flush()
            line = sys.stdin.readline()
        except KeyboardInterrupt:  # at the prompt: a fresh prompt, as in a shell
            sys.stderr.write("\n")
            continue
        if not line:
            return 0
        prompt = line.rstrip("\n")
        warn_unknown(run, prompt)
        sys.stdout.write(prompt)
        try:
            for piece in run.generate(prompt, **controls):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        sys.stdout.write("\n")
        sys.stdout.flush()


def cmd_eval(args) -> int:
    from .device import pick_device
    from .evaluate import evaluate, stream_eval
    from .runs import file_text, load_run, validation_text

    meta, model, tokenizer = load_run(args.run, pick_device(args.device))
    text = file_text(args.data, tokenizer) if args.data else validation_text(meta, tokenizer, model.config.context)
    if text.unknown:
        say(f"blu: {text.unknown} characters of {args.data or 'the validation text'} are not in the vocabulary; "
            "they are scored as <unk>")
    if args.stream:
        buckets = stream_eval(model, text.tokens)
        if args.json:
            print(json.dumps({"context": model.config.context, "buckets": buckets}))
        else:
            print(f"loss by position through the generation path (context {model.config.context}):")
            for b in buckets:
                print(f"  positions {b['from']:>5}-{b['to'] - 1:<5} {b['loss']:.4f} nats/char  ({b['tokens']:,} tokens)")
        return 0
    scores = evaluate(model, text.tokens, byte_lengths=text.byte_lengths)
    result = {"val_loss": scores.loss, "val_bpb": scores.bpb, **({"val_bpc": scores.bpc} if tokenizer.kind == "char" else {}),
              "tokens": scores.tokens, "bytes": scores.bytes, "window": model.config.context, "unknown_chars": text.unknown,
              "tokenizer": tokenizer.kind}
    if args.json:
        print(json.dumps(result))
    else:
        per_char = f", val_bpc {scores.bpc:.4f}" if tokenizer.kind == "char" else ""
        print(f"val_loss {scores.loss:.4f} nats/token, val_bpb {scores.bpb:.4f}{per_char}; {scores.tokens:,} {tokenizer.kind} "
              f"tokens, {scores.bytes:,} bytes scored in windows of {model.config.context}, {text.unknown} unknown characters")
    return 0


def cmd_export(args) -> int:
    if args.format == "gguf":
        from .export.gguf import export_gguf

        out = export_gguf(args.run, args.out, args.dtype or "f32")
        say(f"exported {args.run} to {out} ({out.stat().st_size:,} bytes; load it with llama.cpp or llama_cpp.Llama)")
        return 0
    from .export import export_hf

    if args.dtype:
        raise BluError("--dtype is for --format gguf; the hf export keeps the weights in float32")
    out = export_hf(args.run, args.out)
    say(f"exported {args.run} to {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_serve(args) -> int:
    from pathlib import Path

    from .device import pick_device
    from .serve.server import serve
    from .serve.settings import ServerSettings

    settings = ServerSettings(run=Path(args.run), host=args.host, port=args.port, device=str(pick_device(args.device)),
                              api_key=args.api_key or None, cors_origins=tuple(args.cors_origin),
                              chat_template=Path(args.chat_template) if args.chat_template else None,
                              max_batch=args.max_batch, max_queue=args.max_queue)
    serve(settings)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "export": cmd_export,
               "serve": cmd_serve}[args.command]
    try:
        return command(args)
    except BluError as error:
        if not isinstance(error, ReportedByRankZero):
            say(f"blu: error: {error}")
        return 2
    except BrokenPipeError:  # e.g. `blu generate ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        say("blu: interrupted")
        return 130
