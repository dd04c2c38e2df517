"""Prompt scoring in the engine: the prompts of waiting jobs that asked for it (Job.score: echo with
logprobs) scored together by blu.score, in one batched call per turn of the engine, across jobs
and across requests, before their jobs take rows.

A job that generates at most one token needs no row at all: its token is sampled from the
logits after the prompt that the scoring forward already computed (lm-evaluation-harness asks
for exactly one), with the sampler and the text stream a row would use (engine.Choice)."""

import torch

from ..generate import forbid
from ..sampling import sample
from ..score import score_tokens
from .events import Candidate, Finish, Job, PromptScores, TokenInfo

TOKENS_PER_TURN = 16_384  # prompt tokens scored per turn of the engine: decoding rows wait no longer than that


def to_score(waiting) -> list[Job]:
    """The waiting jobs whose prompts are scored this turn: first come first served, up to
    TOKENS_PER_TURN tokens (at least one job)."""
    jobs, total = [], 0
    for job in waiting:
        if job.score is None or job.scored or job.cancelled:
            continue
        if jobs and total + len(job.prompt_ids) > TOKENS_PER_TURN:
            break
        jobs.append(job)
        total += len(job.prompt_ids)
    return jobs


def score_prompts(model, tokenizer, jobs: list[Job]) -> list[torch.Tensor]:
    """Score the jobs' prompts in one call, send each job its PromptScores, and return the
    logits after each prompt (vocab,)."""
    alternatives = max(job.score for job in jobs)
    scores = score_tokens(model, [job.prompt_ids for job in jobs], alternatives, tokenizer.unk_id)
    for job, scored in zip(jobs, scores):
        job.scored = True
        job.send(PromptScores(prompt_infos(tokenizer, job.prompt_ids, scored, job.score)))
    return [scored.next_logits for scored in scores]


def candidate(tokenizer, token: int, logprob: float | None) -> Candidate:
    raw = tokenizer.token_bytes[token]
    return Candidate(raw.decode("utf-8", errors="replace"), raw, logprob)


def prompt_infos(tokenizer, ids: list[int], scored, alternatives: int) -> list[TokenInfo]:
    """A TokenInfo per prompt token; offsets as text_stream.TextStream gives them (a token that
    ends a character split across tokens begins where that character does)."""
    decoder, shown, infos = tokenizer.stream_decoder(), 0, []
    for token, logprob, top in zip(ids, scored.logprobs, scored.top):
        alts = None if top is None else [candidate(tokenizer, i, v) for i, v in top[:alternatives]]
        infos.append(TokenInfo(candidate(tokenizer, token, logprob), alts, shown))
        shown += len(decoder.feed(token))
    return infos


def first_token(choices, logits: torch.Tensor, width: int, banned: int | None, token_info) -> None:
    """Choices (engine.Choice, all of one job) that generate at most one token: it is drawn from
    `logits` (vocab,) with the job's sampler and each choice's generator, the repetition history
    padded as decode.DecodeBatch pads it, and fed to each choice, which sends its text and
    Finish; never `banned` (the <unk> generation never emits). `token_info(logprobs, token,
    alternatives)` is the engine's."""
    job = choices[0].job
    if job.max_tokens == 0:
        for choice in choices:
            job.send(Finish(choice.index, "length", 0))
        return
    rows = logits.expand(len(choices), -1).clone()
    logprobs = torch.log_softmax(rows.float(), dim=-1) if job.logprobs is not None else None
    recent = torch.tensor(job.prompt_ids[-width:], device=logits.device)
    history = torch.cat((recent[:1].expand(width - len(recent)), recent)).expand(len(choices), -1)
    tokens = sample(forbid(rows, banned), job.options, [choice.generator for choice in choices], history).tolist()
    for row, (choice, token) in enumerate(zip(choices, tokens)):
        choice.advance(token, None if logprobs is None else token_info(logprobs[row], token, job.logprobs))
