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


def build_small_qwen2vl(out_dir: Path, vision_layers: int = 2, text_layers: int = 4, hidden: int = 256) -> Path:
    """Qwen2-VL's architecture cut down (random weights) + its processor with the real image settings.

    Vision: a ViT of `vision_layers` blocks, width `hidden`, 4 heads, MLP ratio 4, 14 px patches,
    2 frames per temporal patch, 2x2 patch merge (as Qwen2-VL); text: a Qwen2 decoder of `text_layers`
    layers, hidden `hidden`, 4 heads (2 KV), MLP 4x, M-RoPE. The processor keeps Qwen2-VL-7B-Instruct's
    pixel range (3,136 to 12,845,056 pixels), so an image costs as many tokens as there: a 320x240
    image 99, a 672x672 one 576. The tokenizer is trained on the spot (tests/tiny_models.py), so the
    vocabulary is about 1,000 tokens. Answers run to the step's max_new_tokens unless the random model
    writes <|im_end|>."""
    import shutil

    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    from tiny_models import IM_END, QWEN2VL_SPECIAL_TOKENS, QWEN2VL_TEMPLATE, build_tokenizer

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir / "_tokenizer", chat_template=QWEN2VL_TEMPLATE, extra_special_tokens=QWEN2VL_SPECIAL_TOKENS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    heads = 4
    half = hidden // heads // 2  # M-RoPE sections (temporal, height, width) split half the head dim, as 16/24/24 of 64
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=text_layers,
            num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                             "mrope_section": [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]},
            bos_token_id=tok.bos_token_id, eos_token_id=ids[IM_END], pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            depth=vision_layers, embed_dim=hidden, hidden_size=hidden, mlp_ratio=4, num_heads=heads,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=[ids[IM_END], tok.eos_token_id], pad_token_id=tok.pad_token_id, do_sample=False,
    )
    model.save_pretrained(out_dir)
    common = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
    Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels, **common),
        video_processor=Qwen2VLVideoProcessor(size=pixels, **common),
        tokenizer=tok,
        chat_template=QWEN2VL_TEMPLATE,
    ).save_pretrained(out_dir)
    shutil.rmtree(out_dir / "_tokenizer", ignore_errors=True)
    return out_dir
