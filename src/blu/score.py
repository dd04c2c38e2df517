"""Scoring texts given as token ids: the log-probability the model gives each token after the
ones before it, the likeliest alternatives at each position, and the logits after the last
token, for many texts in a few batched forwards of the model itself (model.py).

    scores = score_tokens(model, [[5, 9, 2], [7, 1]], alternatives=2)
    scores[0].logprobs      # [None, log p(9 | 5), log p(2 | 5 9)]: the first token has nothing before it
    scores[0].top[1]        # [(id, logprob), (id, logprob)]: the two likeliest tokens after [5]

A text longer than the model's context is read in windows of one context that end every half
context (`windows`), so that each token is scored after between half a context and a whole one
of the tokens before it: what generation sees past the context (decode.DecodeBatch's refill
rule). A window's last position predicts the token after it, so a text of one context plus one
token is scored exactly as one forward over a context (what lm-evaluation-harness's `hf` model
and `blu eval` compute). The last window ends at the last token, so `next_logits` are what
generation after the whole text samples from.

The texts are padded on the right into batches of similar length (the model is causal: padding
after a token cannot change its logits), so one forward scores many texts; what the server's
prompt scoring costs next to `blu eval`'s forward is in BENCHMARKS.md."""

from typing import NamedTuple

import torch

# Tokens per forward: big batches amortise the per-call cost; the logits of one batch, in float32,
# are at most LOGITS_BYTES whatever the vocabulary.
MAX_BATCH_TOKENS = 8192
LOGITS_BYTES = 256 << 20


class TokenScores(NamedTuple):
    """One text's scores."""

    logprobs: list[float | None]  # per token: log p(token | the tokens before it); None for the first
    top: list[list[tuple[int, float]] | None]  # per token: the likeliest tokens there, (id, logprob); None for the first
    next_logits: torch.Tensor  # (vocab,): the logits after the last token, what comes next is sampled from


def windows(length: int, context: int) -> list[tuple[int, int, int]]:
    """(start, end, first) for the windows that score a text of `length` tokens: tokens
    [start, end) are read, and the predictions of tokens first..end are kept (the last position
    predicts token `end`, where the text has one). The first window is the text's first
    context; each next one ends at most half a context further (at the end of the text for the
    last, which after a first window of a text one token longer than the context predicts
    nothing and gives the logits after the text alone), so every token after the first context
    is predicted from at least context - context // 2 tokens before it."""
    spans = [(0, min(length, context), 1)]
    step = max(1, context // 2)
    while spans[-1][1] < length:
        covered = spans[-1][1] + 1  # the first token the windows so far do not predict
        end = min(covered - 1 + step, length)
        if end == length - 1:  # one step further ends at the text, so no window is read for its logits alone
            end = length
        spans.append((max(0, end - context), end, covered))
    return spans


def batch_tokens(vocab_size: int) -> int:
    """The tokens one forward reads: MAX_BATCH_TOKENS, or fewer where the logits would pass LOGITS_BYTES."""
    return max(1, min(MAX_BATCH_TOKENS, LOGITS_BYTES // (4 * vocab_size)))


@torch.inference_mode()
def score_tokens(model, texts: list[list[int]], alternatives: int = 0, never: int | None = None) -> list[TokenScores]:
    """The scores of each text of `texts` (lists of at least one token id each, in range), with
    `alternatives` likeliest tokens per position (0: none), never `never` among them (a char
    run's <unk>, which generation never emits either). The model is read in the mode it is in:
    call it in eval mode, as generation and evaluation do."""
    context = model.config.context
    device = model.tok_embeddings.weight.device
    pieces = [(i, *span) for i, text in enumerate(texts) for span in windows(len(text), context)]
    pieces.sort(key=lambda p: p[2] - p[1], reverse=True)  # similar lengths together: little padding
    budget = max(batch_tokens(model.config.vocab_size), context)
    logprobs = [[None] * len(text) for text in texts]
    top = [[None] * len(text) for text in texts]
    next_logits: list[torch.Tensor | None] = [None] * len(texts)
    first = 0
    while first < len(pieces):
        width = pieces[first][2] - pieces[first][1]  # the longest of this batch: sorted
        count = max(1, min(len(pieces) - first, budget // width))
        group = pieces[first : first + count]
        first += count
        _score_group(model, texts, group, width, device, alternatives, never, logprobs, top, next_logits)
    return [TokenScores(lp, tp, nl) for lp, tp, nl in zip(logprobs, top, next_logits)]


def _score_group(model, texts, group, width, device, alternatives, never, logprobs, top, next_logits) -> None:
    """One forward over the windows of `group`, (text, start, end, first) each, padded to `width`;
    their scores written into the lists of score_tokens."""
    rows = torch.zeros((len(group), width), dtype=torch.long)
    for row, (i, start, end, _) in enumerate(group):
        rows[row, : end - start] = torch.tensor(texts[i][start:end])
    logits = model(rows.to(device)).float()  # (rows, width, vocab)
    for row, (i, start, end, _) in enumerate(group):
        if end == len(texts[i]):
            next_logits[i] = logits[row, end - start - 1].clone()
    # The kept predictions, window by window: position q of a window predicts the text's token
    # start + q + 1, which for the last position is the token after the window (if the text has one).
    lasts = [min(end, len(texts[i]) - 1) for i, _, end, _ in group]
    counts = [max(0, last - first + 1) for (_, _, _, first), last in zip(group, lasts)]
    if not sum(counts):
        return
    row_index = torch.repeat_interleave(torch.arange(len(group)), torch.tensor(counts))
    position_index = torch.cat([torch.arange(first - start - 1, first - start - 1 + count)
                                for (_, start, _, first), count in zip(group, counts)])
    targets = torch.tensor([t for (i, _, _, first), count in zip(group, counts)
                            for t in texts[i][first : first + count]], dtype=torch.long, device=device)
    picked = torch.log_softmax(logits[row_index.to(device), position_index.to(device)], dim=-1)  # (kept, vocab)
    chosen = picked.gather(1, targets[:, None])[:, 0].tolist()
    if alternatives:
        if never is not None:
            picked[:, never] = float("-inf")
        values, ids = picked.topk(min(alternatives, picked.shape[1]), dim=-1)
        values, ids = values.tolist(), ids.tolist()
    kept = 0
    for (i, _, _, first), count in zip(group, counts):
        logprobs[i][first : first + count] = chosen[kept : kept + count]
        if alternatives:
            top[i][first : first + count] = [list(zip(a, b)) for a, b in
                                             zip(ids[kept : kept + count], values[kept : kept + count])]
        kept += count
