"""The data pipeline: from a corpus on disk to the batches a training step reads.

    text.py     reading a file strictly as UTF-8; tiny Shakespeare, the default corpus; the
                split point of a single text
    sources.py  the files of a corpus (a text file, a folder, JSONL, Parquet, gzip) read as a
                stream of documents, and their manifest (path, size, SHA-256 of each)
    split.py    the train/validation split, found in one pass and kept as a Plan, and the
                check that the files have not changed since a run recorded them
    cache.py    the token cache under $BLU_CACHE/tokens/: its key, its lock, its listing
    encode.py   parallel encoding of the split text into shard files
    batches.py  the shard files read through memory maps, and the seeded batch sampler
    prepare.py  a run's text as tokens, the steps in order (what `blu prepare` runs)
    chats.py    conversation JSONL read and checked line by line, and the split of whole
                conversations (chat_train.py encodes them with the run's chat template)

The order is the flow: sources -> split -> tokenizer (../tokenizers/) -> encode -> cache ->
batches. Each file imports only those before it (and the ground: errors, files, config).
"""
