"""Tiny Hugging Face tokenizers built in the test (no download): a byte-level BPE like GPT-2's or a
SentencePiece-style (▁) BPE or Unigram like LLaMA's, wrapped in transformers and saved with save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"]
ENGLISH = [
    f"the {a} {b} number {i} jumps over the lazy dog and asks what the answer is"
    for i, (a, b) in enumerate([("quick", "fox"), ("slow", "cat"), ("brown", "bird"), ("small", "dog")] * 40)
]


def build(texts: list[str], style: str = "bytelevel", vocab_size: int = 400) -> Tokenizer:
    """A tokenizers tokenizer trained on texts: bytelevel (BPE), metaspace (BPE) or unigram (metaspace)."""
    if style == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=[*SPECIALS, "<unk>"], unk_token="<unk>", show_progress=False
        )
    else:
        tok = Tokenizer(models.BPE())
        alphabet = pre_tokenizers.ByteLevel.alphabet() if style == "bytelevel" else []
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False
        )
    if style == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainer=trainer)
    return tok if style == "bytelevel" else _with_byte_fallback(tok)


def _with_byte_fallback(tok: Tokenizer) -> Tokenizer:
    """The tokenizer with <0x00>..<0xFF> byte tokens for characters it lacks, as LLaMA's SentencePiece model has."""
    config = json.loads(tok.to_str())
    model = config["model"]
    model["byte_fallback"] = True
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    if model["type"] == "BPE":
        start = max(model["vocab"].values()) + 1
        model["vocab"].update({token: start + i for i, token in enumerate(bytes_)})
    else:
        model["vocab"].extend([token, 0.0] for token in bytes_)
    config["decoder"] = {
        "type": "Sequence",
        "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}, json.loads(tok.decoder.__getstate__())],
    }
    return Tokenizer.from_str(json.dumps(config))


def save_model_tokenizer(
    directory: Path, texts: list[str] = ENGLISH, chat_template: str | None = CHATML, style: str = "bytelevel"
) -> Path:
    """A model directory's tokenizer files (eos <|endoftext|>, bos <s>, no pad), as save_pretrained writes them."""
    hf = PreTrainedTokenizerFast(tokenizer_object=build(texts, style), eos_token="<|endoftext|>", bos_token="<s>")
    hf.chat_template = chat_template
    hf.save_pretrained(str(directory))
    return directory
