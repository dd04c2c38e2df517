"""`blu import` of GGUF files: blu's own exports and files llama.cpp quantized, dequantized by
the gguf package, with llama.cpp's logits as the reference."""

import numpy as np
import pytest
import torch

from blu.runs import load_run

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, shakespeare):
    """A bpe run whose rows (dim and hidden 256) llama.cpp's K-quants can hold."""
    from blu.config import Budget, TextSettings
    from blu.runs import create_run
    from blu.train import train

    folder = tmp_path_factory.mktemp("gguf_import")
    corpus = folder / "small.txt"
    corpus.write_text(shakespeare.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    run = create_run(folder / "run", TextSettings(data=str(corpus), tokenizer="bpe", vocab_size=300), preset="cpu",
                     budget=Budget(iters=20), device="cpu",
                     overrides=dict(dim=256, n_layer=1, n_head=4, n_kv_head=2, hidden_dim=256, context=64, batch_size=4,
                                    eval_every=20, sample_chars=0))
    train(run, torch.device("cpu"))
    return folder / "run"


def imported(cli, tmp_path, gguf_file):
    code, _, err = cli("import", "--from", gguf_file, "--out", tmp_path / "imported")
    assert code == 0, err
    return load_run(tmp_path / "imported")


def test_an_f32_export_comes_back_as_the_same_run(bpe_run, cli, tmp_path):
    """Guards against q/k rows left in llama.cpp's rotary order, a renamed tensor, or other token ids."""
    assert cli("export", "--run", bpe_run, "--format", "gguf", "--out", tmp_path / "f32.gguf")[0] == 0
    _, model, tokenizer = imported(cli, tmp_path, tmp_path / "f32.gguf")
    _, original, original_tokenizer = load_run(bpe_run)
    text = "ROMEO: what light 😀 through yonder <|endoftext|> window breaks?"
    assert tokenizer.encode(text) == original_tokenizer.encode(text) and tokenizer.stop_ids == [original_tokenizer.end_id]
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        assert torch.equal(model(ids), original(ids))
    prompt = ["generate", "--prompt", "KING:", "--max-new-tokens", 30, "--temperature", 0]
    assert cli(*prompt, "--run", tmp_path / "imported")[1] == cli(*prompt, "--run", bpe_run)[1]


@pytest.mark.parametrize("quantization", ["Q8_0", "Q4_0", "Q5_1", "Q4_K_M", "Q6_K"])
def test_quantized_files_give_llama_cpps_logits(bpe_run, cli, tmp_path, quantization):
    """Guards against a quantized type dequantized wrongly (llama.cpp itself quantized the file)."""
    assert cli("export", "--run", bpe_run, "--format", "gguf", "--out", tmp_path / "f32.gguf")[0] == 0
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quantization}")
    quantized = tmp_path / f"{quantization}.gguf"
    assert llama_cpp.llama_model_quantize(str(tmp_path / "f32.gguf").encode(), str(quantized).encode(), params) == 0
    _, model, tokenizer = imported(cli, tmp_path, quantized)
    ids = tokenizer.encode("KING RICHARD: Now is the winter of our discontent made glorious summer")
    llm = llama_cpp.Llama(str(quantized), n_ctx=64, logits_all=True, n_threads=2, verbose=False)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    _, original, _ = load_run(bpe_run)
    with torch.no_grad():
        unquantized = original(torch.tensor([ids]))[0].numpy()
    # llama.cpp multiplies the quantized weights by activations it rounds to 8 bits: measured 0.010 to
    # 0.015 here, against logits up to 3; a block read in the wrong order or scale is off by whole units.
    assert np.abs(ours - theirs).max() < 0.01 * np.abs(ours).max(), quantization
    assert np.abs(ours - unquantized).max() > 1e-3  # the weights blu imported are the quantized ones


def rewritten(source, out, **changes):
    """A copy of the GGUF file `source` with some metadata values changed (names with _ for .)."""
    import gguf

    changes = {name.replace("__", "."): value for name, value in changes.items()}
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, "llama")
    for name, field in reader.fields.items():
        if not name.startswith("GGUF.") and name != "general.architecture":
            writer.add_key_value(name, changes.get(name, field.contents()), field.types[0],
                                 sub_type=field.types[-1] if len(field.types) > 1 else None)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe"])
def test_pre_tokenizers_split_text_as_llama_cpp_does(bpe_run, cli, tmp_path, pre):
    """Guards against a pre-tokenizer rebuilt from its llama.cpp name that splits digits, spaces or newlines otherwise."""
    assert cli("export", "--run", bpe_run, "--format", "gguf", "--out", tmp_path / "f32.gguf")[0] == 0
    path = rewritten(tmp_path / "f32.gguf", tmp_path / f"{pre}.gguf", tokenizer__ggml__pre=pre)
    _, _, tokenizer = imported(cli, tmp_path, path)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in ["In 1599, 12345 men  came\n\n\nhome; they'll SAY 'tis 3.14", "  x\t\ty  \r\n 😀 日本語 ünï",
                 "I'M HERE, you're there: we'd've 100000 ways", "a\n \n  b   "]:
        assert tokenizer.encode(text) == llm.tokenize(text.encode(), add_bos=False, special=False), (pre, text)


def test_what_blu_cannot_import_from_gguf_is_refused(bpe_run, cli, tmp_path):
    """Guards against importing a GGUF whose tokenizer or architecture blu would get wrong, and against a half-written run."""
    assert cli("export", "--run", bpe_run, "--format", "gguf", "--out", tmp_path / "f32.gguf")[0] == 0
    for changes, message in (({"tokenizer__ggml__model": "bert"}, "tokenizer.ggml.model = 'bert' is not supported"),
                             ({"tokenizer__ggml__model": "llama"}, "tokenizer.ggml.scores has 0 values for 300 tokens"),
                             ({"tokenizer__ggml__pre": "qwen2"}, "tokenizer.ggml.pre = 'qwen2' is not supported"),
                             ({"llama__rope__dimension_count": 8}, "llama.rope.dimension_count = 8 is not supported")):
        path = rewritten(tmp_path / "f32.gguf", tmp_path / "changed.gguf", **changes)
        code, _, err = cli("import", "--from", path, "--out", tmp_path / "run")
        assert code == 2 and message in err, err
        assert not (tmp_path / "run").exists()
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    code, _, err = cli("import", "--from", tmp_path / "junk.gguf", "--out", tmp_path / "run")
    assert code == 2 and "not a GGUF file" in err and not (tmp_path / "run").exists()


def assert_llama_cpp_runs_as_blu(llm, cli, run, model, ours, text: str, tokens: int) -> None:
    """llama.cpp's logits on `text` within 1e-3 of blu's model, and its greedy continuation blu generate's text."""
    ids = ours.encode(text)
    llm.eval(ids)
    with torch.no_grad():
        assert np.abs(model(torch.tensor([ids]))[0].numpy() - np.asarray(llm.scores[: len(ids)])).max() < 1e-3
    llm.reset()
    greedy = []
    for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
        if token in ours.stop_ids or len(greedy) == tokens:
            break
        greedy.append(token)
    code, out, _ = cli("generate", "--run", run, "--prompt", ours.decode(ids), "--max-new-tokens", tokens,
                       "--temperature", 0)
    assert code == 0 and out.rstrip("\n") == ours.decode(ids + greedy)


def test_an_imported_model_exports_to_a_gguf_llama_cpp_runs_as_blu_does(tmp_path, cli, shakespeare):
    """Guards against the GGUF export of an imported run naming the wrong pre-tokenizer, losing a special
    token's type, the start token or the chat template, or giving llama.cpp other logits or text."""
    import gguf
    from pretrained_support import smollm_style_tokenizer, write_llama_folder
    from tokenizers import pre_tokenizers

    tokenizer = smollm_style_tokenizer(shakespeare.read_text(encoding="utf-8")[:200_000])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([  # SmolLM2's own: digits one by one, then GPT-2's split
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    write_llama_folder(tmp_path / "hf", tokenizer, "smollm")
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")[0] == 0
    code, _, err = cli("export", "--run", tmp_path / "run", "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert code == 0, err
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    meta = {name: fields[name].contents() for name in ("tokenizer.ggml.pre", "tokenizer.chat_template",
                                                       "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")}
    _, model, ours = load_run(tmp_path / "run")
    assert meta == {"tokenizer.ggml.pre": "smollm", "tokenizer.chat_template": ours.chat_template,
                    "tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.eot_token_id": 2}
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=128, logits_all=True, n_threads=2, verbose=False)
    for text in ["In 1599, 12345 men  came\n\nhome; they'll SAY 'tis 3.14", "<|im_start|>user typed as text 😀 日本語 ünï",
                 "  x\t\ty  \r\n"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ours.encode(text), text
    assert llm.tokenize(b"<|im_start|>", add_bos=False, special=True) == [1]  # a CONTROL token, as in the checkpoint
    assert_llama_cpp_runs_as_blu(llm, cli, tmp_path / "run", model, ours,
                                 "KING RICHARD: Now is the winter of our discontent, 1485", 40)


@pytest.mark.parametrize("apart", [False, True])
def test_a_sentencepiece_style_import_exports_to_a_gguf_llama_cpp_runs_as_blu_does(tmp_path, cli, shakespeare, apart):
    """Guards against the GGUF export of a Llama 2-style run (`▁` for spaces, byte fallback, <s>
    first) scoring its tokens so that llama.cpp joins pieces in another order, typing its byte,
    unknown or start tokens wrongly, or giving llama.cpp other logits or text; and against an
    export that blu's own import of it reads otherwise. `apart`: one of the merges that make a
    token moved to the end, as Llama 2 ranks its runs of spaces (checked by probes, not by rank)."""
    import json

    import gguf
    from pretrained_support import llama_style_tokenizer, write_llama_folder
    from tokenizers import Tokenizer

    data = json.loads(llama_style_tokenizer(shakespeare.read_text(encoding="utf-8")[:100_000]).to_str())
    merges = data["model"]["merges"]
    if apart:
        made = ["".join(m) for m in merges]
        merges.append(merges.pop(next(i for i, t in enumerate(made) if made.count(t) > 2)))
    write_llama_folder(tmp_path / "hf", Tokenizer.from_str(json.dumps(data)), "llama")
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")[0] == 0
    code, _, err = cli("export", "--run", tmp_path / "run", "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert code == 0, err
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    assert {name: fields[f"tokenizer.ggml.{name}"].contents() for name in (
        "model", "add_space_prefix", "add_bos_token", "bos_token_id", "eos_token_id", "unknown_token_id")} == {
        "model": "llama", "add_space_prefix": True, "add_bos_token": True, "bos_token_id": 1, "eos_token_id": 2,
        "unknown_token_id": 0}
    _, model, ours = load_run(tmp_path / "run")
    _, _, reimported = imported(cli, tmp_path, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=128, logits_all=True, n_threads=2, verbose=False)
    texts = ["ROMEO: But soft, what light through yonder window breaks?", "  two spaces, a\ttab\r\nand CRLF",
             "emoji 😀, 日本語, combining e\u0301, a BOM \ufeff", "<s> typed as text </s>", " leading space", "",
             shakespeare.read_text(encoding="utf-8")[200_000:203_000]]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == ours.encode(text) == reimported.encode(text)
    text = "KING RICHARD: Now is the winter of our discontent 😀"
    assert llm.detokenize(ours.encode(text)).decode() == text
    assert_llama_cpp_runs_as_blu(llm, cli, tmp_path / "run", model, ours, text, 30)


@pytest.mark.parametrize("change, message", [("missing", "merges are not every split"),
                                             ("apart", "merges that make 'to▁' are ranked apart")])
def test_a_sentencepiece_style_tokenizer_llama_cpp_would_join_otherwise_is_refused(tmp_path, cli, shakespeare, change,
                                                                                   message):
    """Guards against a GGUF export whose scores cannot give the tokenizer's merges: one merge is
    missing (llama.cpp, which joins every split of a token, would make a token blu cannot), or one
    that makes `to▁` is ranked last, so that blu keeps "to" and "▁" apart in "ato b" where llama.cpp
    would join them."""
    import json

    from pretrained_support import llama_style_tokenizer, write_llama_folder
    from tokenizers import Tokenizer

    data = json.loads(llama_style_tokenizer(shakespeare.read_text(encoding="utf-8")[:100_000]).to_str())
    merges = data["model"]["merges"]
    if change == "apart":
        merges.append(merges.pop(merges.index(["t", "o▁"])))
    else:
        merges.pop()
    write_llama_folder(tmp_path / "hf", Tokenizer.from_str(json.dumps(data)), "llama")
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")[0] == 0
    code, _, err = cli("export", "--run", tmp_path / "run", "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0"])
def test_a_sentencepiece_gguf_gives_llama_cpps_ids_and_logits(tmp_path, cli, shakespeare, qtype):
    """Guards against a Llama 2-style GGUF (SentencePiece scores, byte fallback, a space put before
    the text, <s> first) tokenized otherwise than llama.cpp does, or its weights read wrongly."""
    from pretrained_support import llama_style_tokenizer, write_sentencepiece_gguf

    path = write_sentencepiece_gguf(tmp_path / f"{qtype}.gguf",
                                    llama_style_tokenizer(shakespeare.read_text(encoding="utf-8")[:100_000]), qtype)
    _, model, tokenizer = imported(cli, tmp_path, path)
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, n_threads=2, verbose=False)
    for text in ["ROMEO: But soft, what light through yonder window breaks?", "  two spaces, a\ttab\r\nand CRLF",
                 "emoji 😀, 日本語, combining e\u0301, a BOM \ufeff", "<s> typed as text </s>", " leading space", ""]:
        assert tokenizer.encode(text) == llm.tokenize(text.encode(), add_bos=True, special=False), text
    text = "KING RICHARD: Now is the winter of our discontent 😀"
    ids = tokenizer.encode(text)
    assert ids[0] == 1 and tokenizer.decode(ids) == text and tokenizer.stop_ids == [2]
    llm.eval(ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    # llama.cpp rounds activations to 8 bits against quantized weights (see above); f16 weights it multiplies in f16
    assert np.abs(ours - np.asarray(llm.scores[: len(ids)])).max() < 0.01 * np.abs(ours).max(), qtype
