"""Small real architectures with random weights, for benchmarks: the FLOPs of trained models,
without downloading them. Tokenizers come from tests/tiny_models.py (trained on the spot)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build_small_llm(out_dir: Path, new_tokens: int) -> Path:
    """SmolLM-135M-like Llama (30 layers, hidden 576, vocab 49,152); every answer exactly `new_tokens` long."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from tiny_models import CHATML_TEMPLATE, IM_END, IM_START, build_tokenizer

    tok = build_tokenizer(out_dir, chat_template=CHATML_TEMPLATE, extra_special_tokens=[IM_START, IM_END])
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids(IM_END), pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=tok.pad_token_id,
        min_new_tokens=new_tokens, max_new_tokens=new_tokens, do_sample=False,
    )
    model.save_pretrained(out_dir)
    return out_dir


def build_small_blip(out_dir: Path, new_tokens: int) -> Path:
    """BLIP base captioner (ViT-B/16 at 384 px + BERT-base decoder); captions exactly `new_tokens` long."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor, GenerationConfig

    from tiny_models import build_tokenizer

    tok = build_tokenizer(out_dir)
    config = BlipConfig()
    config.text_config.vocab_size = 30524
    config.text_config.pad_token_id = tok.pad_token_id
    config.text_config.bos_token_id = tok.bos_token_id
    config.text_config.eos_token_id = tok.eos_token_id
    config.text_config.sep_token_id = tok.eos_token_id
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        decoder_start_token_id=tok.bos_token_id, min_new_tokens=new_tokens, max_new_tokens=new_tokens,
    )
    model.save_pretrained(out_dir)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tok).save_pretrained(out_dir)
    return out_dir
