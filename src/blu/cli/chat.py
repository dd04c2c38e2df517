"""The conversation commands: `blu chat`, a conversation in the terminal, and what `blu eval`
prints for a run's conversations.

`blu chat` builds each prompt exactly as `blu serve`'s /v1/chat/completions does (serve/chat.py:
the run's own chat template, or the plain transcript for a run that has none), so that the same
run, history and seed give the same reply in both. Each reply's draws start from --seed, as a
request with that seed does. Ctrl-C during a reply ends the reply (what was shown stays in the
history, as the playground's Stop keeps it); Ctrl-C at the prompt, or the end of input, ends the
conversation with exit code 0."""

import json
import sys

import torch

from ..config import SamplingOptions, TrainConfig, knobs
from ..device import device_of
from ..errors import BluError


def prompt_line() -> str:
    """One line of input, after a "> " prompt on a terminal ("" at the end of input)."""
    if sys.stdin.isatty():
        sys.stderr.write("> ")
        sys.stderr.flush()
    return sys.stdin.readline()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_chat(args) -> int:
    from .. import load
    from ..device import pick_device
    from ..generate import stream_tokens
    from ..serve.chat import ChatTemplate, chat_template_for
    from ..text_stream import TextStream

    options = SamplingOptions(**{f.name: getattr(args, f.name) for f in knobs(SamplingOptions)})
    options.validate()
    if args.max_new_tokens < 1:
        raise BluError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    run = load(args.run, pick_device(args.device))
    tokenizer = run.tokenizer
    template = chat_template_for(tokenizer)
    if isinstance(template, ChatTemplate):
        say(f"blu: {args.run} has no chat template: replies continue a plain transcript ('role: content' lines), "
            "as blu serve's do")
    messages = [("system", args.system)] if args.system else []
    while True:
        try:
            line = prompt_line()
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            return 0
        if not line:
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        try:
            ids = prompt_ids(template, tokenizer, [*messages, ("user", text)])
        except BluError as error:  # the message is not taken: the user may say it otherwise
            say(f"blu: {error}")
            continue
        messages.append(("user", text))
        generator = None if args.seed is None else torch.Generator(device_of(run.model)).manual_seed(args.seed)
        stream = TextStream(tokenizer, template.stops(role for role, _ in messages), args.max_new_tokens,
                            template.stop_ids)
        reply = ""
        try:
            for token in stream_tokens(run.decoder(), ids, args.max_new_tokens, options, generator, tokenizer.unk_id):
                piece = stream.feed(token)
                sys.stdout.write(piece)
                sys.stdout.flush()
                reply += piece
                if stream.reason:
                    break
            rest = stream.finish()
            sys.stdout.write(rest)
            reply += rest
        except KeyboardInterrupt:  # this reply ends here; the conversation goes on
            pass
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append(("assistant", reply))


def prompt_ids(template, tokenizer, messages: list[tuple[str, str]]) -> list[int]:
    """The ids of the conversation's prompt, as blu serve makes them (serve/requests.py's chat_call)."""
    from ..serve.errors import ApiError

    try:
        prompt = template.render(messages)
    except ApiError as error:  # the run's template refused the conversation
        raise BluError(error.message) from None
    if unknown := tokenizer.unknown_chars(prompt):
        raise BluError(f"that message has characters the model never saw: {''.join(unknown)!r}; say it without them")
    return template.encode(prompt, tokenizer) or tokenizer.start_ids()


def eval_conversations(args, model, tokenizer, conversations, dropped: int) -> int:
    """blu eval of conversations: the loss on the assistant's tokens, and bits per byte of the replies."""
    from ..chat_eval import score_conversations
    from ..distributed import World

    if args.stream:
        raise BluError("--stream scores a text by position; these are conversations, scored on their replies")
    scores = score_conversations(model, tokenizer, conversations, TrainConfig.eval_batch_size, World())
    result = {**scores, "left_out": dropped, "window": model.config.context, "tokenizer": tokenizer.kind}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"val_loss {scores['val_loss']:.4f} nats per assistant token, val_bpb {scores['val_bpb']:.4f}; "
              f"{scores['assistant_tokens']:,} assistant tokens ({scores['bytes']:,} bytes) of "
              f"{scores['conversations']:,} conversations scored, {dropped} left out (no reply within the context)")
    return 0
