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


def _llama(vocab: int, seed: int, eos: int, bos: int | None, window: int = 256) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        eos_token_id=eos,
        bos_token_id=bos,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper, more varied logits than the default init
        model.lm_head.weight.normal_(0, 0.2)
    return model.eval()


def _qwen(vocab: int, seed: int, eos: int, window: int = 256) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab + 16,  # padded logit columns, as real Qwen checkpoints have
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        eos_token_id=eos,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.2)
    return model.eval()


def bytelevel_member(name: str = "tiny-bytelevel", seed: int = 0, window: int = 256) -> Member:
    tok = bytelevel_tokenizer()
    return Member(name, _qwen(len(tok), seed, tok.eos_token_id, window), tok)


def bytelevel_member_b(name: str = "tiny-bytelevel-b", seed: int = 1) -> Member:
    """A second member with the byte-level tokenizer (another architecture and seed)."""
    tok = bytelevel_tokenizer()
    return Member(name, _llama(len(tok), seed, tok.eos_token_id, None), tok)


def sentencepiece_member(name: str = "tiny-sentencepiece", seed: int = 2, window: int = 256) -> Member:
    tok = sentencepiece_tokenizer()
    return Member(name, _llama(len(tok), seed, tok.eos_token_id, tok.bos_token_id, window), tok)


TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}# Tools\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n"
    'Call a tool as <tool_call>\n{"name": <name>, "arguments": <object>}\n</tool_call><|im_end|>\n'
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for m in messages %}{% if m['role'] == 'system' %}"
    "{% elif m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}\n</tool_response><|im_end|>\n"
    "{% elif m['role'] == 'assistant' and m['tool_calls'] %}<|im_start|>assistant\n{% for c in m['tool_calls'] %}"
    '<tool_call>\n{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A Qwen2.5-like chat template that renders tools, calls and results (``<tool_call>`` tags)."""


@functools.cache
def bytelevel_tool_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer with ``<tool_call>`` tags as ordinary added tokens (as Qwen2.5 has them) and
    :data:`TOOLS_TEMPLATE`."""
    tok = copy.deepcopy(bytelevel_tokenizer())
    tok.add_tokens(["<tool_call>", "</tool_call>"])
    tok.chat_template = TOOLS_TEMPLATE
    return tok


def tool_member(name: str = "tiny-tools", seed: int = 3, window: int = 2048) -> Member:
    """A byte-level member whose chat template renders tools, with a window that holds them."""
    tok = bytelevel_tool_tokenizer()
    return Member(name, _qwen(len(tok), seed, tok.eos_token_id, window), tok)


def sentencepiece_member_without_bos(name: str = "tiny-sentencepiece-nobos", seed: int = 2) -> Member:
    """The SentencePiece-style member (same weights as :func:`sentencepiece_member`) whose tokenizer adds no BOS."""
    tok = sentencepiece_tokenizer_without_bos()
    return Member(name, _llama(len(tok), seed, tok.eos_token_id, tok.bos_token_id), tok)


def write_gguf(path: Path) -> Path:
    """:func:`bytelevel_member_b` (Llama, byte-level BPE) written as a float32 GGUF file, as llama.cpp names
    tensors (q and k rows permuted), so loading it is what loading a real GGUF does, in a fraction of a second."""
    import gguf
    import numpy as np

    member = bytelevel_member_b()
    tok, cfg = member.tokenizer, member.model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tok))
    writer.add_file_type(0)  # all float32
    data = json.loads(tok.backend_tokenizer.to_str())
    added = {t["content"]: t["id"] for t in data["added_tokens"]}
    ids = {**data["model"]["vocab"], **added}
    tokens = sorted(ids, key=ids.__getitem__)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in added else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]])
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(tok.chat_template)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names["lm_head.weight"] = "output.weight"
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    parts |= {f"self_attn.{a}_proj": f"attn_{a}" for a in "qkv"} | {"self_attn.o_proj": "attn_output"}
    parts |= {f"mlp.{a}_proj": f"ffn_{a}" for a in ("gate", "up", "down")}
    for i in range(cfg.num_hidden_layers):
        names |= {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{gg}.weight" for hf, gg in parts.items()}
    for key, tensor in member.model.state_dict().items():
        value = tensor.numpy().astype(np.float32)
        heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
        for proj, n in heads.items():
            if proj in key:  # llama.cpp's row order for rotary heads
                value = value.reshape(n, 2, value.shape[0] // n // 2, -1).swapaxes(1, 2).reshape(value.shape)
        writer.add_tensor(names[key], np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
