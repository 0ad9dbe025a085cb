"""Tiny Hugging Face tokenizers built in the test (no download): a byte-level BPE like GPT-2's or a
SentencePiece-style (▁) BPE or Unigram like LLaMA's, wrapped in transformers and saved with save_pretrained."""

from __future__ import annotations

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
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
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
    return tok


def save_model_tokenizer(
    directory: Path, texts: list[str] = ENGLISH, chat_template: str | None = CHATML, style: str = "bytelevel"
) -> Path:
    """A model directory's tokenizer files (eos <|endoftext|>, bos <s>, no pad token), as save_pretrained writes them."""
    hf = PreTrainedTokenizerFast(tokenizer_object=build(texts, style), eos_token="<|endoftext|>", bos_token="<s>")
    hf.chat_template = chat_template
    hf.save_pretrained(str(directory))
    return directory
