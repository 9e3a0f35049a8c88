"""Build a tiny random sequence classifier (BERT, word-level vocab) in a folder, in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (
    "i love hate this that movie film great terrible awful good bad service the a is was "
    "it not very really best worst ever happy sad day night food flight phone battery"
).split()


def build_tiny_model(
    path: Path,
    *,
    labels: tuple[str, ...] = ("negative", "neutral", "positive"),
    problem_type: str | None = "single_label_classification",
    max_length: int = 64,
    seed: int = 0,
) -> Path:
    """A save_pretrained folder that AutoTokenizer/AutoModelForSequenceClassification load."""
    path.mkdir(parents=True, exist_ok=True)
    tokens = dict.fromkeys(_SPECIALS + _WORDS + list("abcdefghijklmnopqrstuvwxyz"))
    vocab = {token: i for i, token in enumerate(tokens)}
    core = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    options: dict[str, Any] = {"problem_type": problem_type, "num_labels": len(labels)}
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_length,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **options,
    )
    BertForSequenceClassification(config).eval().save_pretrained(path)
    return path
