"""samples.txt: what the model writes at each evaluation, so that a person (or the training view,
serve/watch.py, which reads the headers) can see it learn.

A run on text: its continuation of a newline, drawn with the run's seed each time. A run on
conversations: its greedy answers to a few held-out conversations beside the reference answers.
The conversations are chosen once by the run's seed (the same ones at every evaluation, so the
answers can be compared step by step) and held as ids and masks (chat_train.Conversations): the
prompt is each one's ids before its first assistant target, exactly what the model is trained
to continue there, and the reference is that reply's targets. An answer is greedy (the same
weights give the same answer) and ends at the template's end-of-turn token, the tokenizer's
stops, or after twice the reference's tokens plus 16 (within --sample-chars): enough to see
whether it stops, not so long that an evaluation of a larger model waits on its samples."""

import torch

from .chat_template import ChatFormat
from .config import SamplingOptions
from .generate import TextGenerator, stream_tokens
from .text_stream import TextStream

SAMPLED_CONVERSATIONS = 3
PROMPT_SHOWN = 300  # characters of a long prompt shown: its end, where the question is


def header(step: int, val_loss: float) -> str:
    """The line that starts each evaluation's sample (serve/watch.py's SAMPLE_HEADER reads it)."""
    return f"--- step {step}, val_loss {val_loss:.4f} ---\n"


def append_sample(folder, step: int, val_loss: float, body: str) -> None:
    with open(folder / "samples.txt", "a", encoding="utf-8") as f:
        f.write(f"{header(step, val_loss)}{body}\n\n")


def text_sample(model, tokenizer, chars: int, seed: int) -> str:
    """The model's continuation of a newline (same seed each time)."""
    return "".join(TextGenerator(model, tokenizer).generate("\n", chars, seed=seed))


def sampled_conversations(count: int, seed: int) -> list[int]:
    """Which held-out conversations are answered: the same ones at every evaluation of a run."""
    chosen = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:SAMPLED_CONVERSATIONS]
    return sorted(chosen.tolist())


def first_reply(conversations, index: int) -> tuple[list[int], list[int]]:
    """(the prompt's ids, the reference reply's ids) of a conversation's first assistant turn."""
    ids, mask = conversations.row(index)
    first = int(mask.argmax())
    end = first
    while end < len(mask) and mask[end]:
        end += 1
    return ids[:first].tolist(), ids[first:end].tolist()  # (a conversation's mask never holds its first id)


def reply_ends(tokenizer) -> tuple[list[int], list[str]]:
    """Where a reply ends: the template's end-of-turn token and the tokenizer's own stops, or,
    for a template that ends a turn with text (a char run's blank line), that text."""
    chat = ChatFormat(tokenizer)
    ids = set(tokenizer.stop_ids) | ({chat.end_of_turn} if chat.end_of_turn is not None else set())
    return sorted(ids), [chat.end_text] if chat.end_of_turn is None and chat.end_text else []


def greedy_reply(model, tokenizer, prompt_ids: list[int], max_tokens: int, ends: tuple[list[int], list[str]]) -> str:
    """The model's greedy reply to `prompt_ids`, up to an end of `ends` (ids, strings) or `max_tokens` tokens."""
    stream = TextStream(tokenizer, ends[1], max_tokens, ends[0])
    text = ""
    tokens = stream_tokens(model, prompt_ids, max_tokens, SamplingOptions(temperature=0.0), banned=tokenizer.unk_id)
    for token in tokens:
        text += stream.feed(token)
        if stream.reason:
            break
    return text + stream.finish()


def one_line(text: str) -> str:
    """A reply on one line, its line breaks written \\n: a model that answers with forty empty
    lines (as an untrained one does) takes one line of the view, not forty."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def chat_samples(model, tokenizer, conversations, seed: int, max_chars: int) -> str:
    """The greedy answers to the sampled held-out conversations, each beside its reference."""
    ends = reply_ends(tokenizer)
    parts = []
    for index in sampled_conversations(len(conversations), seed):
        prompt, reference = first_reply(conversations, index)
        shown = tokenizer.decode(prompt)
        shown = shown if len(shown) <= PROMPT_SHOWN else "..." + shown[-PROMPT_SHOWN:]
        answer = greedy_reply(model, tokenizer, prompt or tokenizer.start_ids(), min(max_chars, 2 * len(reference) + 16), ends)
        wanted = tokenizer.decode([i for i in reference if i not in ends[0]])
        wanted = wanted.removesuffix(ends[1][0]) if ends[1] else wanted
        parts.append(f"## held-out conversation {index + 1} of {len(conversations)}\n{shown.rstrip()}\n"
                     f"  reference: {one_line(wanted)}\n  model:     {one_line(answer)}")
    return "\n".join(parts)
