"""Learning to chat, measured as a user would: a task with one checkable answer, trained with
`blu train` on conversations made here, scored by exact match on held-out ones."""

from chat_support import exact_match, fact_chats, reversal_chats, write_jsonl

SMALL = ["--dim", "64", "--n-layer", "2", "--n-head", "4", "--n-kv-head", "4", "--hidden-dim", "192"]


def test_a_char_model_learns_to_reverse_words_from_scratch(tmp_path, cli, blu_cache):
    """A run trained from scratch on conversations (no --init-from: the char vocabulary and its
    plain template built from them) answers held-out words it never saw, reversed: guards the
    whole path from conversation file to greedy reply (template, mask, loss, end of the reply)."""
    train, val = reversal_chats(3000, 40, seed=5)
    code, out, err = cli("train", "--data", write_jsonl(tmp_path / "train.jsonl", train), "--val-data",
                         write_jsonl(tmp_path / "val.jsonl", val), "--tokenizer", "char", *SMALL, "--context", "48",
                         "--batch-size", "32", "--iters", "600", "--eval-every", "600", "--out", tmp_path / "run")
    assert code == 0, err
    assert (tmp_path / "run" / "chat_template.jinja").exists() and "blu chat --run" in err
    assert exact_match(tmp_path / "run", val) >= 0.8  # chance: nil


def test_a_fine_tuned_bpe_run_answers_from_a_fact_table(tmp_path, cli, blu_cache, shakespeare):
    """A bpe run pretrained on text, fine-tuned on a fact table's conversations (gaining ChatML's
    two tokens), answers each fact in the phrasing held out for it far above chance (1 in 6)."""
    code, _, err = cli("train", "--data", shakespeare, "--tokenizer", "bpe", "--vocab-size", "512", *SMALL,
                       "--context", "64", "--batch-size", "16", "--iters", "60", "--out", tmp_path / "parent")
    assert code == 0, err
    train, val = fact_chats()
    code, _, err = cli("train", "--init-from", tmp_path / "parent", "--data", write_jsonl(tmp_path / "t.jsonl", train),
                       "--val-data", write_jsonl(tmp_path / "v.jsonl", val), "--iters", "150", "--eval-every", "150",
                       "--out", tmp_path / "tuned")
    assert code == 0, err
    assert exact_match(tmp_path / "tuned", val) >= 0.7
