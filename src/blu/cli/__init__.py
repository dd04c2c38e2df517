"""The `blu` command: argument parsing (parser.py) and printing, nothing else.

Problems the user can fix print one line on stderr and exit with code 2.
Generated text is the only thing written to stdout."""

from dataclasses import fields
import json
import math
import sys

from ..config import Budget, ModelConfig, SamplingOptions, TextSettings, TrainConfig, knobs, with_overrides
from ..errors import BluError, ReportedByRankZero
from ..version import __version__
from .chat import cmd_chat, eval_conversations, prompt_line
from .parser import build_parser

SEED_PROMPTS = ("ROMEO: ", "HAMLET: To be, or not to be,", "Once upon a time", "The king")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def text_settings(args) -> TextSettings:
    """The text flags of `blu train` or `blu prepare` (a flag not given keeps the default)."""
    return with_overrides(TextSettings(), {f.name: getattr(args, f.name) for f in fields(TextSettings)})


def configured_flags(args, overrides: dict) -> list[str]:
    """The flags given that configure a new run (what --resume may not change), as typed."""
    names = [f.name for f in fields(TextSettings)] + ["preset", "init_from", "chat_template"]
    given = [n for n in names if getattr(args, n) is not None] + [n for n, v in overrides.items() if v is not None]
    return ["--" + name.replace("_", "-") for name in given + (["force"] if args.force else [])]


def cmd_train(args) -> int:
    from ..device import pick_device
    from ..distributed import World
    from ..evaluate import scored_tokens
    from ..runs import open_run
    from ..train import train

    world = World.from_env()  # several processes under torchrun; one otherwise
    try:
        device = world.device(pick_device(args.device))
    except BluError as error:
        raise world.error(str(error)) from None  # the same on every rank
    overrides = {"seed": args.seed, **{f.name: getattr(args, f.name) for f in knobs(ModelConfig) + knobs(TrainConfig)}}
    if args.resume and (flags := configured_flags(args, overrides)):
        raise world.error("--resume continues the run as it was configured; only --iters and --time may change "
                          f"(not {', '.join(flags)})")
    with world.process_group(device):
        run = open_run(world, args.out, Budget(args.iters, args.time), args.resume, text=text_settings(args),
                       preset=args.preset, overrides=overrides, force=args.force, device=device, init_from=args.init_from,
                       chat_template=args.chat_template)
        model_config, train_config = run.model_config, run.train_config
        n_params = model_config.num_parameters()
        budget_text = " and ".join(filter(None, [f"{train_config.iters} steps" if train_config.iters else "",
                                                 f"{train_config.time_s:g} s" if train_config.time_s else ""]))
        where = f"{world.size} processes on {device.type}" if world.distributed else device.type
        if world.main and run.skipped:
            what = "lines" if run.chats else "files"
            say(f"blu: left out {len(run.skipped)} bad {what} (--skip-bad-files): {'; '.join(run.skipped)}")
        if world.main:  # under torchrun, rank 0 alone talks
            start = (f"from {run.meta['init_from']['path']}" if run.meta.get("init_from")
                     else f"{run.meta.get('preset') or 'custom'} preset")
            say(f"blu {__version__}: {start}, {n_params / 1e6:.2f}M parameters, "
                f"vocabulary {run.tokenizer.vocab_size}, {len(run.train_tokens):,} train / {scored_tokens(run.val_tokens):,} "
                f"validation tokens, {where}, budget {budget_text}, run folder {run.folder}")
        state, interrupted = train(run, device, world=world)
    if world.main and state.best_val_loss is None:  # a second Ctrl-C skipped the only evaluation
        say(f"no evaluation yet after {state.step} steps, {state.elapsed_s:.0f} s: resume the run to evaluate it")
    elif world.main:
        per_char = f" nats/char ({state.best_val_loss / math.log(2):.3f} bits)" if run.tokenizer.kind == "char" else " nats/token"
        say(f"best val_loss {state.best_val_loss:.4f}{per_char} after {state.step} steps, {state.elapsed_s:.0f} s; "
            f"try: blu {'chat' if run.chats else 'generate'} --run {run.folder}")
    return 130 if interrupted else 0


def cmd_prepare(args) -> int:
    from ..data.cache import list_cache, tokens_dir
    from ..data.prepare import prepare
    from ..evaluate import scored_tokens

    if args.list:
        entries = list_cache()
        for e in entries:
            print(f"{e['megabytes']:>10,.1f} MB  {e['tokens']:>14,} tokens  {e['tokenizer']:<10} {e['created']}  "
                  f"{e['corpus']}  {e['folder']}")
        say(f"{len(entries)} tokenized corpora in {tokens_dir()} (delete a folder to free its space; "
            "blu train tokenizes again when needed)")
        return 0
    if args.workers is not None and args.workers < 1:
        raise BluError(f"--workers must be at least 1, got {args.workers}")
    prepared = prepare(text_settings(args), TrainConfig.seed if args.seed is None else args.seed, args.workers, say)
    say(f"{len(prepared.train):,} training and {scored_tokens(prepared.val_tokens):,} validation tokens "
        f"({prepared.index['tokenizer']} {prepared.index['vocab_size']}) in {prepared.folder}")
    return 0


def cmd_generate(args) -> int:
    from .. import load
    from ..device import pick_device

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
    while True:
        try:
            line = prompt_line()
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
    from ..chat_eval import conversations_to_score
    from ..device import pick_device
    from ..evaluate import evaluate, stream_eval
    from ..runs import load_run, text_to_score

    meta, model, tokenizer = load_run(args.run, pick_device(args.device))
    if (chats := conversations_to_score(args.data, meta, tokenizer, model.config.context, say)) is not None:
        return eval_conversations(args, model, tokenizer, *chats)
    text = text_to_score(args.data, meta, tokenizer, log=say)
    if text.unknown:
        say(f"blu: {text.unknown} characters of {args.data or 'the validation text'} are not in the vocabulary; "
            "they are scored as <unk>")
    if args.stream:
        buckets = stream_eval(model, text.tokens)
        if args.json:
            print(json.dumps({"context": model.config.context, "buckets": buckets}))
        else:
            print(f"loss by position through the generation path (context {model.config.context}):")
            unit = "nats/char" if tokenizer.kind == "char" else "nats/token"
            for b in buckets:
                print(f"  positions {b['from']:>5}-{b['to'] - 1:<5} {b['loss']:.4f} {unit}  ({b['tokens']:,} tokens)")
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
        from ..export.gguf import export_gguf

        out = export_gguf(args.run, args.out, args.dtype or "f32", args.force)
        say(f"exported {args.run} to {out} ({out.stat().st_size:,} bytes; load it with llama.cpp or llama_cpp.Llama)")
        return 0
    from ..export import export_hf

    if args.dtype:
        raise BluError("--dtype is for --format gguf; the hf export keeps the weights in float32")
    out = export_hf(args.run, args.out, args.force)
    say(f"exported {args.run} to {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_serve(args) -> int:
    from pathlib import Path

    from ..device import pick_device
    from ..serve.server import serve
    from ..serve.settings import ServerSettings

    settings = ServerSettings(run=Path(args.run), host=args.host, port=args.port, device=str(pick_device(args.device)),
                              api_key=args.api_key or None, cors_origins=tuple(args.cors_origin),
                              chat_template=Path(args.chat_template) if args.chat_template else None,
                              max_batch=args.max_batch, max_queue=args.max_queue, stream_interval_ms=args.stream_interval)
    serve(settings)
    return 0


def cmd_import(args) -> int:
    from ..pretrained import import_checkpoint

    out = import_checkpoint(args.source, args.out, args.force, log=say)
    say(f"imported into {out}; try: blu generate --run {out}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = {"train": cmd_train, "prepare": cmd_prepare, "generate": cmd_generate, "eval": cmd_eval, "export": cmd_export,
               "serve": cmd_serve, "import": cmd_import, "chat": cmd_chat}[args.command]
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
