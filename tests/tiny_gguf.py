"""A tiny llama-architecture GGUF model, written with the ``gguf`` package, for llama.cpp's server.

Random weights, except for one planted answer: every token embeds to the same vector and the
output matrix favours one word, so greedy decoding repeats that word whatever the prompt. That
makes the guardrail testable on a real server: plant "pneumonia" (a finding the structured result
has) and the answer is used; plant "left" (a side it does not have) and the answer is dropped.
The tokenizer is a SentencePiece-style vocabulary of byte tokens plus a few words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ["\u2581pneumonia", "\u2581left", "\u2581the"]


def write_tiny_gguf(path: Path, answer: str, n_embd: int = 32, n_ff: int = 64, n_layer: int = 1,
                    n_head: int = 4, seed: int = 0) -> Path:
    """Write the model to ``path``; greedy decoding always produces `` answer`` (one of WORDS)."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + WORDS
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
             + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(WORDS))
    scores = [0.0] * (3 + 256) + [-1.0] * len(WORDS)
    target = tokens.index("\u2581" + answer)
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def small(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("secondread-tiny-test")
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    writer.add_tensor("token_embd.weight", np.ones((n_vocab, n_embd), np.float32) + small(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", small(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", small(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", small(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", small(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    output = small(n_vocab, n_embd)
    output[target] += 1.0  # aligned with the shared embedding direction: the greedy choice
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
