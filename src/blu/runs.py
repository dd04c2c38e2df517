"""Runs: creating one from a text, a preset and overrides; resuming one with a new budget;
loading one to generate or evaluate. This module defines what config.json holds:

    blu_version  the blu that created the run
    format       FORMAT: a run folder of another format is refused
    preset       the preset the configuration started from
    model        the ModelConfig fields
    train        the TrainConfig fields (with the budget it was created with: a resume given a new
                 one uses it without writing it here)
    data         where the text came from and which of it is validation (data/split.py's Corpus.record):
                 path (absolute; null: tiny Shakespeare from the cache), a file's sha256 and chars,
                 or a corpus's files (path, bytes, sha256 each), so that a changed corpus is
                 refused; the split settings and the validation text's size and SHA-256; and
                 tokens: the cache folder of its token shards (data/cache.py) and their counts
    init_from    a run started from another's weights (--init-from): the parent's folder and
                 the SHA-256 of its weights (fine_tune.py)

tokenizer.json beside it holds the tokenizer (see tokenizers/), and chat_template.jinja the chat
template of a byte, bpe or char run fine-tuned on conversations (chat_kinds.py). The files themselves are
read and written by checkpoint.py."""

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .chat_kinds import TEMPLATE_FILE, chat_tokenizer, scratch_tokenizer
from .chat_train import run_conversations
from .checkpoint import clear_run, load_weights
from .config import PRESETS, Budget, ModelConfig, TextSettings, TrainConfig, configs_for, from_dict, to_dict
from .data.batches import TokenShards
from .data.chats import is_conversation_file
from .data.prepare import (
    choose_tokenizer,
    open_corpus,
    read_tokenizer,
    say,
    split_corpus,
    tokens_for,
    tokens_record,
    trained_corpus,
)
from .data.text import SHAKESPEARE_NAME, load_text
from .device import pick_device
from .distributed import World
from .errors import BluError
from .files import atomic_write, read_json, write_json
from .fine_tune import fine_tune_configs, parent_record
from .model import Transformer
from .tokenizers import Tokenizer
from .version import __version__

FORMAT = 1  # bump when a run folder written by this version cannot be read by an older one


@dataclass
class Run:
    """A run folder ready to train: its configuration and the tokens of its text."""

    folder: Path
    meta: dict  # what config.json holds
    model_config: ModelConfig
    train_config: TrainConfig
    tokenizer: Tokenizer
    train_tokens: TokenShards  # on disk, in the cache folder
    val_tokens: np.ndarray
    val_bytes: np.ndarray  # the UTF-8 bytes each validation token stands for (bits per byte)
    resumed: bool = False  # go on from the state saved in last/ (from step 0 if there is none)
    skipped: list[str] = field(default_factory=list)  # bad files left out (--skip-bad-files), with the reason
    chats: tuple | None = None  # a run on conversations: its training and validation ones (chat_train.Conversations)


def holds_run(folder) -> bool:
    return (Path(folder) / "config.json").exists()


def default_folder(text: TextSettings) -> Path:
    """Where a run goes without --out: runs/<name of the data file or folder>."""
    return Path("runs") / Path(text.data or SHAKESPEARE_NAME).stem


def create_run(out=None, text: TextSettings | None = None, preset: str | None = None, overrides: dict | None = None,
               budget: Budget | None = None, force: bool = False, device=None, log=say, init_from=None,
               chat_template=None) -> Run:
    """A new run in `out` (default: default_folder) on the text `text` names: the configuration
    of `preset` (default: gpu on CUDA, cpu otherwise, by `device`, default this machine's) with
    `overrides` (ModelConfig and TrainConfig field names; None keeps the preset's value) and
    `budget` (neither steps nor time: the preset's steps). A folder that holds a run is refused
    unless `force`, which replaces it. The tokenizer is built from the training part of the text
    only, or read from --tokenizer-from; the text is tokenized into the cache folder, or read
    from there (data/); `log` says what takes long. With `init_from`, a run folder, the model and
    tokenizer are that run's and training starts from its weights (fine_tune.py); on conversations
    the tokenizer gets its chat template (`chat_template`: a Jinja file replacing the kind's) and,
    for byte and bpe, the ChatML tokens, and the model the rows for them (chat_kinds.py).
    Writes config.json and tokenizer.json (and chat_template.jinja); nothing is written to the
    run folder if anything is wrong."""
    text, budget, overrides = text or TextSettings(), budget or Budget(), overrides or {}
    budget.validate()
    settable = {f.name for f in fields(ModelConfig) + fields(TrainConfig)} - {"vocab_size", "iters", "time_s"}
    if unknown := sorted(set(overrides) - settable):
        raise BluError(f"unknown settings: {', '.join(unknown)} (the budget is given as a Budget)")
    seed = TrainConfig.seed if overrides.get("seed") is None else overrides["seed"]
    parent = None
    if init_from is not None:  # the shapes are checked before any text is read
        parent, lineage = parent_of(init_from, text, preset)
        model_config, train_config = fine_tune_configs(parent, overrides, budget)
        text = replace(text, tokenizer_from=str(init_from))  # the parent's tokenizer, as --tokenizer-from reads it
    chat = text.data is not None and is_conversation_file(text.data)  # fine-tuning on conversations (chat_train.py)
    if chat_template is not None and not chat:
        raise BluError("--chat-template is for training on conversations (--data chats.jsonl)")
    corpus = None if chat else open_corpus(text, seed)
    folder = Path(out) if out else default_folder(text)
    if holds_run(folder) and not force:
        raise BluError(f"{folder} already holds a run: add --resume to continue it, --force to replace it, "
                       "or choose another --out")
    if parent is not None and folder.resolve() == Path(init_from).resolve():
        raise BluError(f"--out {folder} is the parent run itself: give the new run a folder of its own")
    if parent is None and preset is None:
        preset = "gpu" if (torch.device(device) if device else pick_device("auto")).type == "cuda" else "cpu"
    if parent is None and preset not in PRESETS:
        raise BluError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    if chat:
        text.validate()
        base = read_tokenizer(text.tokenizer_from) if text.tokenizer_from else scratch_tokenizer(text, seed, chat_template)
        tokens_of = chat_tokenizer(base, chat_template)
        if parent is None:  # a model that learns to chat from scratch
            model_config, train_config = configs_for(preset, overrides, tokens_of.vocab_size, budget)
        else:
            model_config = replace(model_config, vocab_size=tokens_of.vocab_size)  # the ChatML tokens' rows, if gained
        train, val, record = run_conversations(tokens_of, text.data, text.val_data, text.val_fraction, seed,
                                               model_config.context, text.skip_bad_files, log)
    else:
        cache, plan = split_corpus(corpus, log)
        tokens_of = choose_tokenizer(corpus, cache, plan, text)
        if parent is None:
            model_config, train_config = configs_for(preset, overrides, tokens_of.vocab_size, budget)
        prepared = tokens_for(corpus, cache, plan, tokens_of, model_config.context)
        record = {**corpus.record(cache.manifests, plan, prepared.index["validation"]), "tokens": tokens_record(prepared)}
    meta = {"blu_version": __version__, "format": FORMAT, "preset": preset, "tokenizer": tokens_of.kind,
            "model": to_dict(model_config), "train": to_dict(train_config), "data": record,
            **({"init_from": lineage} if parent is not None else {})}
    if force:
        clear_run(folder)
    write_json(folder / "config.json", meta)
    atomic_write(folder / "tokenizer.json", tokens_of.to_json().encode())
    if tokens_of.chat_template and tokens_of.kind != "hf":  # an hf tokenizer.json holds its own
        atomic_write(folder / TEMPLATE_FILE, tokens_of.chat_template.encode())
    if chat:
        return Run(folder, meta, model_config, train_config, tokens_of, train.ids, val.ids, np.zeros(0),
                   skipped=record["skipped"], chats=(train, val))
    return Run(folder, meta, model_config, train_config, tokens_of, prepared.train, prepared.val_tokens,
               prepared.val_bytes, skipped=plan.skipped)


def parent_of(folder, text: TextSettings, preset: str | None) -> tuple[ModelConfig, dict]:
    """The model configuration of the run a new one starts from and what config.json records of
    it, once the settings that would choose another model or tokenizer are refused."""
    if preset is not None:
        raise BluError("--init-from takes the parent's model: give it without --preset")
    if text.tokenizer or text.vocab_size or text.tokenizer_from:
        raise BluError("--init-from takes the parent's tokenizer: give it without --tokenizer, --vocab-size "
                       "or --tokenizer-from")
    return load_config(folder)[1], parent_record(folder)


def resume_run(out, budget: Budget | None = None, log=say) -> Run:
    """The run in `out`, to go on from its last saved state with the data and configuration it
    was created with; a `budget` with steps or time replaces its own (a new total, not more on top)."""
    budget = budget or Budget()
    budget.validate()
    if not out:
        raise BluError("--resume needs --out, the run folder to continue")
    folder = Path(out)
    meta, model_config, train_config, tokenizer = load_config(folder)
    if budget.given:
        train_config = replace(train_config, iters=budget.iters or 0, time_s=budget.time_s or 0.0)
    train_config.validate()
    if isinstance(meta.get("data"), dict) and meta["data"].get("kind") == "conversations":
        d = meta["data"]
        train, val, record = run_conversations(tokenizer, d["path"], d["val_data"], d["val_fraction"], train_config.seed,
                                               model_config.context, d["skip_bad_files"], log)
        if record["sha256"] != d["sha256"]:
            raise BluError(f"{d['path']} has changed since the run was created from it (its SHA-256 differs)")
        return Run(folder, meta, model_config, train_config, tokenizer, train.ids, val.ids, np.zeros(0), resumed=True,
                   skipped=record["skipped"], chats=(train, val))
    corpus, cache, plan = trained_corpus(meta, train_config.seed, log)
    prepared = tokens_for(corpus, cache, plan, tokenizer, model_config.context)
    return Run(folder, meta, model_config, train_config, tokenizer, prepared.train, prepared.val_tokens,
               prepared.val_bytes, resumed=True, skipped=plan.skipped)


def open_run(world: World, out, budget: Budget, resume: bool = False, **settings) -> Run:
    """The run to train (`settings`: the rest of what runs.create_run takes): created, or resumed
    with `resume`, by rank 0 while the other ranks wait, then opened by them from the folder it
    wrote, which every node must see. After torchrun restarted the group (a worker died), the
    same command line goes on from the last save: a run already in the folder is resumed."""
    def prepare() -> Run:
        folder = Path(out) if out else default_folder(settings.get("text") or TextSettings())
        if world.restarts and holds_run(folder):
            return resume_run(folder, budget)
        if resume:
            return resume_run(out, budget)
        return create_run(out, budget=budget, **settings)

    return world.prepared_by_main(prepare, lambda run: (str(run.folder), run.resumed),
                                  lambda made: replace(resume_run(made[0], budget), resumed=made[1]))


def load_config(folder) -> tuple[dict, ModelConfig, TrainConfig, Tokenizer]:
    """config.json (as read, and its two configurations) and the tokenizer of a run, checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BluError(f"{folder}: no such run folder")
    meta = read_json(folder / "config.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BluError(
            f"{folder} was written by blu {meta.get('blu_version', '?') if isinstance(meta, dict) else '?'} "
            f"in a format this blu ({__version__}) cannot read"
        )
    if not (folder / "tokenizer.json").exists():
        raise BluError(f"{folder} is not a blu run folder: tokenizer.json is missing")
    tokenizer = read_tokenizer(folder)
    model_config = from_dict(ModelConfig, meta.get("model"))
    model_config.validate()
    if model_config.vocab_size != tokenizer.vocab_size:
        raise BluError(f"{folder}: config.json and tokenizer.json disagree on the vocabulary size")
    return meta, model_config, from_dict(TrainConfig, meta.get("train")), tokenizer


def load_run(folder, device="cpu") -> tuple[dict, Transformer, Tokenizer]:
    """config.json, the best weights (in eval mode, on `device`) and the tokenizer of a run."""
    meta, model_config, _, tokenizer = load_config(folder)
    model = Transformer(model_config)
    load_weights(model, Path(folder) / "model.safetensors")
    return meta, model.to(device).eval(), tokenizer


class ScoredText(NamedTuple):
    """A text to evaluate, encoded: its tokens, the bytes each stands for, and how many of its
    characters the vocabulary lacks (scored as unknown)."""

    tokens: np.ndarray
    byte_lengths: np.ndarray
    unknown: int


def validation_text(meta: dict, tokenizer: Tokenizer, log=say) -> ScoredText:
    """The validation part of the text a run was trained on (`meta`: its config.json)."""
    if meta.get("data") is None and meta.get("imported_from"):
        raise BluError("this run was imported and has no training text of its own: score it on a file with --data FILE")
    if isinstance(meta.get("data"), dict) and meta["data"].get("kind") == "conversations":
        raise BluError("this run was fine-tuned on conversations, which are no text: chat_eval.conversations_to_score "
                       "reads them (blu eval does)")
    corpus, cache, plan = trained_corpus(meta, from_dict(TrainConfig, meta.get("train")).seed, log)
    return ScoredText(*cache.validation(plan, tokenizer))


def file_text(path, tokenizer: Tokenizer) -> ScoredText:
    """Another text file, to score it as it is (no end-of-text is added)."""
    text, _ = load_text(path)
    tokens, n_unknown = tokenizer.encode_array(text)
    if len(tokens) < 2:
        raise BluError(f"{path} is too short to score: it needs at least 2 tokens")
    return ScoredText(tokens, tokenizer.byte_lengths(text, tokens), n_unknown)


def text_to_score(data, meta: dict, tokenizer: Tokenizer, log=say) -> ScoredText:
    """What `blu eval` scores: `data`, a text file as it is, or a run folder's validation text
    (so that a fine-tune and its parent are scored on the same tokens); None: the validation
    text of the run `meta` (its config.json) describes."""
    if data is None:
        return validation_text(meta, tokenizer, log)
    if holds_run(data):
        return validation_text(read_json(Path(data) / "config.json"), tokenizer, log)
    return file_text(data, tokenizer)
