"""The `blu` command's arguments: one subcommand each for train, prepare, generate, chat, eval,
serve, export and import, with the training, text and sampling flags generated from the configuration
dataclasses and the server's from its settings' defaults."""

import argparse
from dataclasses import fields
import os
import re

from ..config import (
    DEFAULT_MAX_NEW_TOKENS,
    FINE_TUNE,
    PRESETS,
    ModelConfig,
    SamplingOptions,
    TextSettings,
    TrainConfig,
    knobs,
)
from ..device import DEVICES
from ..errors import BluError
from ..serve.requests import CHAT_MAX_TOKENS
from ..serve.settings import ServerSettings
from ..version import __version__

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*$")


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


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' -> seconds (positive)."""
    match = _DURATION.match(str(text))
    if not match:
        raise BluError(f"bad duration {text!r}: use seconds or a number with s, m or h (90, 90s, 10m, 1h)")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds <= 0:
        raise BluError(f"duration must be positive, got {text!r}")
    return seconds


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
        if section == "train":  # a fine-tune's training defaults are its own
            per_preset += f"; --init-from: {getattr(FINE_TUNE.train, f.name)}"
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


def _add_text_flags(parser) -> None:
    """A flag for each TextSettings field: the flags blu train and blu prepare share. Each
    defaults to None, so that --resume can tell which were given; the help says the default."""
    for f in fields(TextSettings):
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        plain = f.default is not None and meta["type"] is not bool
        help_text = f"{meta['help']} (default: {f.default})" if plain else meta["help"]
        if meta["type"] is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        elif meta["repeatable"]:
            parser.add_argument(flag, action="append", metavar=meta["metavar"], help=help_text)
        else:
            parser.add_argument(flag, type=meta["type"], choices=meta["choices"], metavar=meta["metavar"], help=help_text)
    parser.add_argument("--seed", type=int,
                        help=f"random seed for the split, initialisation and batches (default {TrainConfig.seed})")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="blu", description="Train a small Llama-style language model on a text file and generate from it.")
    parser.add_argument("--version", action="version", version=f"blu {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    fmt = HelpFormatter

    train = commands.add_parser("train", help="train a model (tiny Shakespeare by default)", formatter_class=fmt)
    _add_text_flags(train)
    train.add_argument("--out", help="run folder (default: runs/<name of the data file>)")
    train.add_argument("--preset", choices=sorted(PRESETS), help="configuration (default: gpu on CUDA, cpu otherwise)")
    train.add_argument("--device", default="auto", choices=DEVICES,
                       help="auto = CUDA (bf16), then MPS, then CPU")
    train.add_argument("--iters", type=int, help="optimizer steps (default: the preset's, or "
                       f"{FINE_TUNE.default_iters} with --init-from, when --time is not given)")
    train.add_argument("--time", type=_duration, help="training budget: seconds or 90s, 10m, 1h, from the first step "
                       "(reading, tokenizing and compiling are not counted; evaluations during training are)")
    train.add_argument("--init-from", metavar="RUN", help="start from this run's weights and tokenizer (a blu run or "
                       "an imported one): its model, new optimizer state, budget and schedule, with the fine-tuning "
                       "defaults of docs/import.md")
    train.add_argument("--chat-template", metavar="FILE", help="with --init-from and conversations: a Jinja chat "
                       "template to train with instead of the run kind's (ChatML for byte and bpe, a plain transcript "
                       "for char, an imported run's own; docs/train-and-data.md)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    train.add_argument("--force", action="store_true", help="replace a run already in --out")
    _add_config_flags(train, ModelConfig, "model")
    _add_config_flags(train, TrainConfig, "train")

    prepare = commands.add_parser(
        "prepare", formatter_class=fmt, help="tokenize a corpus into the cache now (blu train does it when needed)",
        description="Tokenize a corpus into token shards in the cache folder ($BLU_CACHE/tokens, default "
                    "~/.cache/blu/tokens), as blu train with the same text flags would: before a multi-node launch, "
                    "say. Delete a folder there to free its space.")
    _add_text_flags(prepare)
    prepare.add_argument("--workers", type=int, help="tokenizing processes (default: one per core)")
    prepare.add_argument("--list", action="store_true", help="list what the cache holds, and stop")

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
    gen.add_argument("--device", default="cpu", choices=DEVICES, help="where to run the model")

    chat = commands.add_parser("chat", help="a conversation with a run in the terminal", formatter_class=fmt,
                               description="Talk with a run: each line you type is a message, the reply streams "
                               "back. The run's own chat template (a plain transcript for a run with none), as blu "
                               "serve uses it. Ctrl-C stops a reply; Ctrl-C at the prompt, or Ctrl-D, ends.")
    chat.add_argument("--run", required=True, help="run folder")
    chat.add_argument("--system", metavar="TEXT", help="a system message that opens the conversation")
    chat.add_argument("--max-new-tokens", type=int, default=CHAT_MAX_TOKENS, help="the longest reply, in tokens")
    _add_option_flags(chat, SamplingOptions)
    chat.add_argument("--seed", type=int, help="each reply's draws start from this seed (default: random)")
    chat.add_argument("--device", default="cpu", choices=DEVICES, help="where to run the model")

    ev = commands.add_parser("eval", help="validation loss and bits per byte (and per character for char runs)",
                             formatter_class=fmt,
                             description="Score a run on its validation text (or --data): the loss in nats per token, "
                                         "bits per byte (comparable across tokenizers) and, for a char run, bits per "
                                         "character. Conversations (a run fine-tuned on them, or a JSONL file of "
                                         "them) are scored on the assistant's tokens alone.")
    ev.add_argument("--run", required=True, help="run folder")
    ev.add_argument("--data", metavar="FILE_OR_RUN", help="score this text file or conversation JSONL, or the "
                    "validation text or conversations of this run folder (a fine-tune's, to compare its parent on the "
                    "same tokens), instead of the run's own")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--stream", action="store_true",
                    help="loss by position through the generation path, up to 8x the context")
    ev.add_argument("--device", default="auto", choices=DEVICES, help="where to run the model")

    srv = commands.add_parser("serve", help="OpenAI-compatible API, playground page and live training view",
                              formatter_class=fmt)
    srv.add_argument("--run", required=True, help="run folder (may be training: newer weights are picked up)")
    srv.add_argument("--host", default=ServerSettings.host,
                     help="address to listen on (anything else than loopback wants --api-key)")
    srv.add_argument("--port", type=int, default=ServerSettings.port, help="port to listen on")
    srv.add_argument("--api-key", default=os.environ.get("BLU_API_KEY"),
                     help="require Authorization: Bearer KEY on /v1 and /api (default: $BLU_API_KEY, or none)")
    srv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="let web pages from ORIGIN call the API (repeatable; default: none)")
    srv.add_argument("--chat-template", metavar="FILE", help="chat template: text with {role} and {content} "
                     "(default: '{role}: {content}\\n' per message, then 'assistant: ')")
    srv.add_argument("--max-batch", type=int, default=ServerSettings.max_batch,
                     help="choices decoded together; more requests wait")
    srv.add_argument("--max-queue", type=int, default=ServerSettings.max_queue,
                     help="requests waiting; beyond it, 503 with Retry-After")
    srv.add_argument("--stream-interval", type=int, default=ServerSettings.stream_interval_ms, metavar="MS",
                     help="send each streamed choice's new text at most this often, less often with many streams "
                     "(at most 1,000 pieces a second in all); 0: every token")
    srv.add_argument("--device", default=ServerSettings.device, choices=DEVICES, help="where to run the model")

    exp = commands.add_parser("export", help="export a run for other tools", formatter_class=fmt)
    exp.add_argument("--run", required=True, help="run folder")
    exp.add_argument("--format", default="hf", choices=["hf", "gguf"],
                     help="hf = Hugging Face transformers (LlamaForCausalLM), a folder; gguf = llama.cpp, one file")
    exp.add_argument("--out", required=True, help="folder (hf) or .gguf file (gguf) to write")
    exp.add_argument("--dtype", choices=["f32", "f16", "bf16", "q8_0"],
                     help="gguf only: how the weight matrices are stored (default: f32; q8_0 needs rows of a multiple of 32)")
    exp.add_argument("--force", action="store_true", help="replace what --out already holds")

    imp = commands.add_parser("import", help="make a run folder from a pretrained model", formatter_class=fmt)
    imp.add_argument("--from", dest="source", required=True, metavar="PATH",
                     help="a Hugging Face folder of a LlamaForCausalLM (config.json, safetensors, tokenizer.json) "
                          "or a llama.cpp GGUF file of the llama architecture")
    imp.add_argument("--out", required=True, help="the run folder to write")
    imp.add_argument("--force", action="store_true", help="replace a run already in --out")
    return parser


