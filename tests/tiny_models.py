"""Tiny random-weight models for tests (no GPU, no model hub).

Every builder writes a model in its standard on-disk format into ``out_dir`` so that it loads through the
normal public APIs (``AutoTokenizer`` / ``AutoProcessor`` / ``AutoModel*`` ``from_pretrained``, or
``open_clip.create_model_and_transforms``), exactly like a downloaded checkpoint would.  Weights are random
but deterministic (``torch.manual_seed``); the tokenizers are trained with the ``tokenizers`` library on a
small built-in English corpus.  Nothing here touches the network.

Builders (each takes an output directory and returns what was written):

* :func:`build_tokenizer` -- byte-level BPE tokenizer wrapped as ``PreTrainedTokenizerFast``.
* :func:`build_tiny_llm` -- tiny Qwen2 causal LM + tokenizer with a ChatML chat template.
* :func:`build_tiny_blip2` -- tiny BLIP-2 (ViT + Q-Former + OPT) + ``Blip2Processor``.
* :func:`build_tiny_qwen2vl` -- tiny Qwen2-VL + ``Qwen2VLProcessor`` (chat template with image parts).
* :func:`build_tiny_clip` -- open_clip JSON model config + ``.safetensors`` checkpoint.

Recipes that work with transformers 5.x / open_clip 3.x are in ``tests/test_tiny_models.py``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEED = 0

# Special tokens shared by all tokenizers.
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# ChatML template (system/user/assistant), string or list-of-parts content, add_generation_prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2-VL style template: image parts become <|vision_start|><|image_pad|><|vision_end|>; the processor
# then repeats <|image_pad|> once per merged image patch.
QWEN2VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN2VL_SPECIAL_TOKENS = [
    IM_START,
    IM_END,
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

_COLOURS = (
    "red blue green yellow black white grey gray pink purple orange brown beige navy teal maroon "
    "gold silver cream khaki olive turquoise lavender"
).split()
_GARMENTS = (
    "dress shirt top blouse skirt jacket coat sweater hoodie jeans trousers shorts gown tee tank "
    "cardigan vest scarf hat shoe boot sneaker bag"
).split()
_OBJECTS = (
    "dog cat bird car bus bicycle tree house table chair cup bottle ball boat flower person man woman "
    "child horse street beach mountain sky water field building window door"
).split()
_SHAPES = "circle square triangle rectangle star heart stripe dot pattern logo print".split()
_ADJ = (
    "long short sleeveless floral striped plain bright dark light small large tiny big shiny matte "
    "casual formal elegant loose tight wide narrow modern vintage"
).split()
_EDITS = (
    "make it change to is replace with remove add has more less same but instead shows without "
    "different style colour color sleeves collar neckline"
).split()
_CAPTIONS = [
    "a photo of a {adj} {colour} {garment}",
    "an image of a {colour} {obj} next to a {adj} {obj2}",
    "the {garment} is {colour} with a {shape} {pattern}",
    "a {adj} {obj} on a {colour} background",
    "a {colour} {shape} and a {colour2} {shape2}",
    "two {obj}s in a {adj} {obj2}",
]
_EDITS_TEMPLATES = [
    "{edit} the {garment} {colour}",
    "is {colour2} and has {adj} sleeves",
    "Original Caption: a {colour} {garment}. Modification: make it {colour2}. Edited Description: a {colour2} {garment}.",
    "Image Content: a {adj} {obj}. Instruction: {edit} a {shape}. Edited Description: a {adj} {obj} with a {shape}.",
    "Describe the image. The image shows a {adj} {colour} {garment}.",
    "Please rewrite the caption. Answer only with the new description.",
    "You are a helpful assistant. What is in this picture?",
]
_FIXED_TEXT = """
Describe the image. Describe the image in one sentence. Edited Description: Original Caption:
Modification: Instruction: Image Content: Answer: Question: The target image shows
a woman wearing a red dress. a man wearing a blue shirt. a dog running on the beach.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 , . ; : ! ? ' " ( ) - /
"""


def _corpus() -> list[str]:
    """A deterministic little English corpus (a few thousand words, a few hundred distinct)."""
    rng = random.Random(SEED)
    lines = [ln.strip() for ln in _FIXED_TEXT.strip().splitlines()]
    lines.append(" ".join(_COLOURS + _GARMENTS + _OBJECTS + _SHAPES + _ADJ + _EDITS))
    for _ in range(400):
        tmpl = rng.choice(_CAPTIONS + _EDITS_TEMPLATES)
        text = tmpl.format(
            adj=rng.choice(_ADJ),
            colour=rng.choice(_COLOURS),
            colour2=rng.choice(_COLOURS),
            garment=rng.choice(_GARMENTS),
            obj=rng.choice(_OBJECTS),
            obj2=rng.choice(_OBJECTS),
            shape=rng.choice(_SHAPES),
            shape2=rng.choice(_SHAPES),
            pattern=rng.choice(["pattern", "print", "logo"]),
            edit=rng.choice(["make", "change", "replace", "add", "remove"]),
        )
        lines.append(text[0].upper() + text[1:] if rng.random() < 0.5 else text)
    return lines


def build_tokenizer(
    out_dir,
    chat_template: str | None = None,
    extra_special_tokens=(),
    *,
    add_bos: bool = False,
    padding_side: str = "right",
    vocab_size: int = 1000,
):
    """Train a small byte-level BPE tokenizer, wrap it as ``PreTrainedTokenizerFast`` and save it to ``out_dir``.

    Special tokens: ``<pad>`` (id 0), ``<s>`` (1), ``</s>`` (2), ``<unk>`` (3), then ``extra_special_tokens`` in
    order (ids 4, 5, ...). Byte-level, so any text round-trips through encode/decode (a random model can
    still emit partial UTF-8 byte tokens, which decode to U+FFFD). ``add_bos`` prepends ``<s>`` when encoding
    with ``add_special_tokens=True`` (like OPT / BLIP-2); otherwise nothing is added (like Qwen).
    ``padding_side`` is saved in ``tokenizer_config.json``; the default "right" is what most hub checkpoints
    ship, so code that batches prompts for generation must switch to left padding itself.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = [PAD, BOS, EOS, UNK, *extra_special_tokens]

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    post = [processors.ByteLevel(trim_offsets=False)]
    if add_bos:
        post.append(
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, specials.index(BOS))]
            )
        )
    tok.post_processor = processors.Sequence(post)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=list(extra_special_tokens),
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
        padding_side=padding_side,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(out_dir)
    return fast


def _speak_words_only(model, tok) -> None:
    """Zero the output-layer rows of every token that is not a plain lower-case word.

    Their logits are then 0 while some word's logit is almost surely positive, so the random
    model writes readable words and never stops early: every generation is non-empty and ends
    at max_new_tokens. (The output layer is untied from the input embeddings for this.)
    """
    import torch

    with torch.no_grad():
        head = model.get_output_embeddings() or model.text_decoder.get_output_embeddings()  # BLIP: in its decoder
        head.weight[_non_word_tokens(tok)] = 0.0


def _non_word_tokens(tok) -> list[int]:
    """Every token that is not a plain lower-case word (special tokens, bytes, punctuation)."""
    words = []
    for token_id in range(len(tok)):
        text = tok.decode([token_id])
        if not (text.strip().isalpha() and text.strip().isascii() and text.strip().islower()):
            words.append(token_id)
    return words


def build_tiny_llm(out_dir) -> Path:
    """Tiny Qwen2 causal LM (hidden 32, 2 layers) + ChatML tokenizer; ``AutoModelForCausalLM`` loads it.

    The generation config stops on ``<|im_end|>`` or ``</s>`` and pads with ``<pad>``.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir, chat_template=CHATML_TEMPLATE, extra_special_tokens=[IM_START, IM_END])
    im_end = tok.convert_tokens_to_ids(IM_END)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=im_end,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic, leaves the global RNG alone
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config).eval()
        _speak_words_only(model, tok)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[im_end, tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir)
    return out_dir


def build_tiny_blip2(out_dir, num_query_tokens: int = 4, image_size: int = 32) -> Path:
    """Tiny BLIP-2 (ViT 32px/8px patches, 2-layer Q-Former with 4 queries, 2-layer OPT) + ``Blip2Processor``.

    The processor prepends ``num_query_tokens`` ``<image>`` tokens to every prompt (they are replaced by the
    Q-Former outputs inside the model). ``AutoModelForImageTextToText`` loads the model.
    """
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        GenerationConfig,
        OPTConfig,
    )

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir / "_tokenizer", extra_special_tokens=["<image>"], add_bos=True)
    image_token_id = tok.convert_tokens_to_ids("<image>")

    vision = Blip2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        encoder_hidden_size=32,
        max_position_embeddings=64,
    )
    text = OPTConfig(
        tie_word_embeddings=False,
        vocab_size=len(tok),
        hidden_size=32,
        word_embed_proj_dim=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        init_std=0.2,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic, leaves the global RNG alone
        torch.manual_seed(SEED)
        model = Blip2ForConditionalGeneration(config).eval()
        _speak_words_only(model, tok)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out_dir)

    image_processor = BlipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=num_query_tokens)
    processor.save_pretrained(out_dir)
    _rmtree(out_dir / "_tokenizer")
    return out_dir


def build_tiny_blip(out_dir) -> Path:
    """Tiny BLIP (v1) captioner: ViT 32 px + 2-layer BERT decoder, with BlipProcessor."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor, GenerationConfig

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir)
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "encoder_hidden_size": 32, "max_position_embeddings": 128,
                     "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "sep_token_id": tok.eos_token_id, "tie_word_embeddings": False},
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = BlipForConditionalGeneration(config).eval()
        _speak_words_only(model, tok)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        decoder_start_token_id=tok.bos_token_id,
    )
    model.save_pretrained(out_dir)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(out_dir)
    return out_dir


def build_tiny_qwen2vl(out_dir, patch_size: int = 8, min_pixels: int = 16 * 16, max_pixels: int = 48 * 48) -> Path:
    """Tiny Qwen2-VL (2-layer ViT with 8px patches, 2-layer text model) + ``Qwen2VLProcessor``.

    Images are resized so that ``min_pixels <= h*w <= max_pixels`` with sides multiple of ``2*patch_size``, so an
    image becomes at most 9 ``<|image_pad|>`` tokens. ``AutoModelForImageTextToText`` loads the model.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out_dir = Path(out_dir)
    tok = build_tokenizer(
        out_dir / "_tokenizer", chat_template=QWEN2VL_TEMPLATE, extra_special_tokens=QWEN2VL_SPECIAL_TOKENS
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    hidden = 32
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=tok.bos_token_id,
            eos_token_id=ids[IM_END],
            pad_token_id=tok.pad_token_id,
            initializer_range=0.2,
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=hidden,
            mlp_ratio=2,
            num_heads=2,
            patch_size=patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic, leaves the global RNG alone
        torch.manual_seed(SEED)
        model = Qwen2VLForConditionalGeneration(config).eval()
        _speak_words_only(model, tok)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[ids[IM_END], tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir)

    common = dict(patch_size=patch_size, merge_size=2, temporal_patch_size=2)
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, **common
    )
    video_processor = Qwen2VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, **common)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=QWEN2VL_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    _rmtree(out_dir / "_tokenizer")
    return out_dir


CLIP_MODEL_NAME = "cirkit-tiny-clip"

CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_clip(out_dir, name: str = CLIP_MODEL_NAME) -> tuple[Path, Path]:
    """open_clip config ``<name>.json`` (tiny ViT 32px/8px, 2-layer text tower, default open_clip BPE tokenizer)
    and a ``<name>.safetensors`` state dict of the created model. Returns ``(config_json, checkpoint)``.

    Load with ``open_clip.add_model_config(config_json)`` then
    ``open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))``.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / f"{name}.json"
    config_path.write_text(json.dumps(CLIP_CONFIG, indent=2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = open_clip.CLIP(**CLIP_CONFIG)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    ckpt_path = out_dir / f"{name}.safetensors"
    save_file(state, str(ckpt_path))
    return config_path, ckpt_path


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def build_tiny_judge(qwen2vl_dir, out_dir) -> Path:
    """The tiny Qwen2-VL made to answer only "yes" or "no", for the rerank tests.

    "yes" and "no" become tokens of their own and the output layer keeps only their rows, opposite
    (w, -w). w is orthogonal to the model's mean last hidden state over a few image pairs, so the
    first answer token is "yes" for some pairs and "no" for others, and P(yes) varies.
    """
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out_dir = Path(out_dir)
    processor = AutoProcessor.from_pretrained(qwen2vl_dir)
    processor.tokenizer.add_tokens(["yes", "no"])
    model = AutoModelForImageTextToText.from_pretrained(qwen2vl_dir).eval()
    model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    yes, no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    images = [Image.new("RGB", (40, 32), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)) for i in range(16)]
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Does the candidate match? Answer yes or no."}]}]
        for _ in range(8)
    ]
    text = processor.apply_chat_template(conversations, add_generation_prompt=True)
    inputs = processor(text=text, images=[[images[i], images[i + 8]] for i in range(8)], return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][:, -1]
        mean = hidden.mean(dim=0)
        w = torch.randn(hidden.shape[1])
        w -= (w @ mean) / (mean @ mean) * mean
        w *= 3.0 / (hidden - mean).matmul(w).std().clamp_min(1e-6)
        head = model.get_output_embeddings().weight
        head.zero_()
        head[yes], head[no] = w, -w
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
