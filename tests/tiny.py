"""Tiny real models built in memory for fast unit tests: two tokenizer families.

- ``bytelevel``: a byte-level BPE tokenizer ("Ġ" for a space), no BOS, a ChatML template.
- ``sentencepiece``: a SentencePiece-style BPE ("▁" for a space, byte-fallback tokens
  ``<0x0A>``...), adds ``<bos>``, no chat template.

Both are trained on a few kilobytes of text that every Python ships, so they share many
but not all tokens: alignment is exercised for real.
"""

from __future__ import annotations

import copy
import functools
import json
import pydoc_data.topics
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from packllm_integrations import Member

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def corpus() -> list[str]:
    text = "\n\n".join(list(pydoc_data.topics.topics.values())[:12])
    code = (Path(functools.__file__).read_text())[:20000]
    return [text, code]


@functools.cache
def bytelevel_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    fast.chat_template = CHATML
    return fast


@functools.cache
def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=440, special_tokens=specials, show_progress=False, limit_alphabet=120)
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizers.Replace(" ", "▁")
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    learner.train_from_iterator(corpus(), trainer)
    learned = json.loads(learner.to_str())["model"]
    # Byte-fallback tokens are ordinary vocabulary entries (ids 4..259), as in Gemma's tokenizer.
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@functools.cache
def sentencepiece_tokenizer_without_bos() -> PreTrainedTokenizerFast:
    """The SentencePiece-style tokenizer, with the same vocabulary, adding no BOS."""
    tok = copy.deepcopy(sentencepiece_tokenizer())
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    return tok


def _llama(vocab: int, seed: int, eos: int, bos: int | None) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=eos,
        bos_token_id=bos,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper, more varied logits than the default init
        model.lm_head.weight.normal_(0, 0.2)
    return model.eval()


def _qwen(vocab: int, seed: int, eos: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab + 16,  # padded logit columns, as real Qwen checkpoints have
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=eos,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.2)
    return model.eval()


def bytelevel_member(name: str = "tiny-bytelevel", seed: int = 0) -> Member:
    tok = bytelevel_tokenizer()
    return Member(name, _qwen(len(tok), seed, tok.eos_token_id), tok)


def bytelevel_member_b(name: str = "tiny-bytelevel-b", seed: int = 1) -> Member:
    """A second member with the byte-level tokenizer (another architecture and seed)."""
    tok = bytelevel_tokenizer()
    return Member(name, _llama(len(tok), seed, tok.eos_token_id, None), tok)


def sentencepiece_member(name: str = "tiny-sentencepiece", seed: int = 2) -> Member:
    tok = sentencepiece_tokenizer()
    return Member(name, _llama(len(tok), seed, tok.eos_token_id, tok.bos_token_id), tok)


def sentencepiece_member_without_bos(name: str = "tiny-sentencepiece-nobos", seed: int = 2) -> Member:
    """The SentencePiece-style member (same weights as :func:`sentencepiece_member`) whose tokenizer adds no BOS."""
    tok = sentencepiece_tokenizer_without_bos()
    return Member(name, _llama(len(tok), seed, tok.eos_token_id, tok.bos_token_id), tok)
