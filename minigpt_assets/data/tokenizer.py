"""Train a byte-level BPE tokenizer (HF `tokenizers`) on sampled documents, or copy a pretrained one; HF format."""

from __future__ import annotations

import shutil
from pathlib import Path

from minigpt_assets.data.documents import sample_documents
from minigpt_assets.recipes import TokenizerRecipe, expand_location


def train_tokenizer(doc_paths: list[Path], recipe: TokenizerRecipe, out_dir: Path) -> dict[str, float]:
    """Write an HF tokenizer folder (tokenizer.json, tokenizer_config.json, ...) that AutoTokenizer loads."""
    out_dir = Path(out_dir)
    if recipe.kind == "pretrained":
        src = Path(expand_location(recipe.path))
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, out_dir / f.name)
        fast = load_tokenizer(out_dir)
        return {"vocab_size": fast.get_vocab_size(), "sample_documents": 0, "bytes_per_token": 0.0}

    docs = sample_documents(doc_paths, recipe.sample_documents, recipe.seed)
    if not docs:
        raise ValueError("no documents to train the tokenizer on (are its sources empty?)")
    return train_bpe([d["text"][: recipe.max_chars_per_document] for d in docs], recipe, out_dir)


def train_bpe(texts: list[str], recipe: TokenizerRecipe, out_dir: Path) -> dict[str, float]:
    """A byte-level BPE of the recipe's settings trained on `texts`, saved as an HF folder in `out_dir`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if recipe.pre_tokenizer == "qwen2":  # exactly what transformers' Qwen2Tokenizer builds around vocab + merges
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=recipe.vocab_size, min_frequency=recipe.min_frequency,
                                  special_tokens=list(recipe.special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=recipe.bos_token, eos_token=recipe.eos_token,
                                   pad_token=recipe.pad_token, unk_token=recipe.pad_token,
                                   model_max_length=1 << 30)
    fast.chat_template = recipe.chat_template
    fast.save_pretrained(str(out_dir))
    held = texts[: min(len(texts), 500)]
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(held))
    return {"vocab_size": tok.get_vocab_size(), "sample_documents": len(texts),
            "bytes_per_token": sum(len(t.encode()) for t in held) / max(1, n_tokens)}


def load_tokenizer(folder: Path):
    """The fast `tokenizers.Tokenizer` of an HF tokenizer folder."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def eos_id(folder: Path) -> int:
    """Id of the end-of-document token from tokenizer_config.json (appended after every document)."""
    import json

    cfg = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    eos = cfg.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    tid = load_tokenizer(folder).token_to_id(eos) if eos else None
    if tid is None:
        raise ValueError(f"tokenizer in {folder} has no eos_token")
    return tid
