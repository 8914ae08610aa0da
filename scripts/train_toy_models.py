"""Train the three small models of cirkit's toy world and write them into cirkit/toy/models/.

cirkit itself is training-free: it only chains pretrained models. This script exists because real
weights cannot be downloaded everywhere (no network, no GPU), and random-weight models retrieve
nothing meaningful. It trains, once, models that really work in the toy world of
cirkit/toy/world.py (coloured shapes on plain backgrounds), so that `cirkit demo` and the test suite
run the whole pipeline offline with meaningful results. The models know nothing outside that world.

What it trains (standard formats, loaded by exactly the code that loads real models):

  clip/       toy-clip.json + toy-clip.safetensors: an open_clip CLIP (ViT 64 px / 8 px patches and a
              text transformer with open_clip's tokenizer), trained contrastively on rendered scenes
              and their grammar captions, with auxiliary attribute heads (dropped after training)
  captioner/  a BLIP captioner (BlipForConditionalGeneration + BlipProcessor): its vision encoder is
              the toy CLIP's, copied weight for weight; its text decoder is trained to write the caption
  llm/        a Qwen2 causal LM with a byte-level BPE tokenizer (trained with `tokenizers`) and a ChatML
              chat template, trained on the `toy-rewrite` prompt: caption + modification ->
              "Edited Description: <caption of the target>"

Held out: no training image is a gallery image (the gallery is rendered with other seeds), and the
rewrite model never sees a (reference scene, target scene) pair of the toy benchmark, in any
phrasing. The benchmark's queries are what tests/test_toy.py evaluates.

Deterministic: fixed seeds, 2 CPU threads, no data-loader workers; a second run writes the same
bytes. About 6 minutes on a 2-core CPU (CLIP about 4, captioner under 1, LLM under 2). At the end it writes models/training.json: the world's fingerprint, the seeds, the training
time of each model, held-out scores, and the sha256 of every file written (the test suite checks
that the shipped files are these).

    python scripts/train_toy_models.py                  # all three, into cirkit/toy/models
    python scripts/train_toy_models.py --out /tmp/toy   # somewhere else

With --world hard it trains the hard world's four models instead (cirkit/toy/hard.py; see the
section "the hard world" below) into cirkit/toy/models/hard, 7 to 15 minutes on a 2-core CPU as
other work shares it; `--world hard --only judge` retrains the judge alone (4 to 6 minutes), keeping
the other three, and writes the same judge as a full run.

    python scripts/train_toy_models.py --world hard
    python scripts/train_toy_models.py --world hard --only judge
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle threads sleep: much faster when other work shares the cores

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from cirkit.toy import benchmark, hard  # noqa: E402
from cirkit.toy.world import ATTRIBUTES, Scene, all_scenes, modify, render, seed_for, values  # noqa: E402

SEED = 0
THREADS = 2
CLIP_NAME = "toy-clip"

# The toy CLIP. open_clip's tokenizer has 49,408 tokens, so the token embedding dominates the size:
# the text tower is narrow and the checkpoint is stored in float16 (open_clip loads it into float32).
CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 64,
        "patch_size": 8,
        "width": 64,
        "layers": 3,
        "head_width": 16,
        "mlp_ratio": 2.0,
        "no_ln_pre": True,  # so that the vision tower is exactly a BLIP vision encoder
    },
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}
CLIP_RENDERS = 12  # training renderings of each scene
CLIP_STEPS = 1200
CLIP_BATCH = 128
CLIP_LR = 3e-3
CLIP_AUX = 1.0  # weight of the auxiliary attribute-classification heads

CAPTIONER_STEPS = 500
CAPTIONER_BATCH = 64
CAPTIONER_LR = 3e-3

LLM_STEPS = 600
LLM_BATCH = 64
LLM_LR = 1e-3
LLM_HIDDEN = 96
LLM_LAYERS = 3

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def log(message: str) -> None:
    print(message, flush=True)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- data


def training_images(renders: int):
    """Each scene rendered `renders` times with training seeds (never the gallery's), as PIL images,
    scene-major within each rendering round: image r * len(scenes) + s is scene s, rendering r."""
    scenes = all_scenes()
    return scenes, [render(scene, seed_for("train", r, scene.slug)) for r in range(renders) for scene in scenes]


def attribute_labels(scenes: list[Scene]) -> torch.Tensor:
    return torch.tensor([[values(a).index(s.get(a)) for a in ATTRIBUTES] for s in scenes])


# ---------------------------------------------------------------- CLIP


def train_clip(out: Path, scenes: list[Scene], images) -> dict:
    import open_clip
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config_path = out / f"{CLIP_NAME}.json"
    config_path.write_text(json.dumps(CLIP_CONFIG, indent=2) + "\n")
    open_clip.add_model_config(config_path)
    set_seed(SEED)
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_NAME)
    tokenizer = open_clip.get_tokenizer(CLIP_NAME)
    pixels = torch.stack([preprocess(im) for im in images])
    init_patch_embedding(model.visual.conv1, pixels[: len(scenes) * 4])
    texts = tokenizer([s.caption for s in scenes])
    labels = attribute_labels(scenes)
    n = len(scenes)
    dim = CLIP_CONFIG["embed_dim"]
    image_heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(values(a))) for a in ATTRIBUTES)
    text_heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(values(a))) for a in ATTRIBUTES)
    params = [*model.parameters(), *image_heads.parameters(), *text_heads.parameters()]
    opt = torch.optim.AdamW(params, lr=CLIP_LR, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=CLIP_LR, total_steps=CLIP_STEPS, pct_start=0.1)
    gen = torch.Generator().manual_seed(SEED)
    ce = torch.nn.functional.cross_entropy
    model.train()
    for step in range(CLIP_STEPS):
        # distinct scenes in a batch, so every caption in it has exactly one matching image
        idx = torch.randperm(n, generator=gen)[:CLIP_BATCH]
        rendering = torch.randint(CLIP_RENDERS, (len(idx),), generator=gen)
        image_features = model.encode_image(pixels[rendering * n + idx], normalize=True)
        text_features = model.encode_text(texts, normalize=True)  # every caption: all are negatives
        scale = model.logit_scale.exp().clamp(max=100)
        loss = ce(scale * image_features @ text_features.T, idx)
        loss = loss + ce(scale * text_features[idx] @ image_features.T, torch.arange(len(idx)))
        for k in range(len(ATTRIBUTES)):
            loss = loss + CLIP_AUX * (
                ce(image_heads[k](image_features * 8), labels[idx, k]) + ce(text_heads[k](text_features * 8), labels[:, k])
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == CLIP_STEPS - 1:
            log(f"  clip step {step:4d}  loss {loss.item():.3f}")
    model.eval()
    # float16 on disk: the 49,408-token embedding would otherwise dominate the package size
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{CLIP_NAME}.safetensors"))
    return {"model": model, "preprocess": preprocess, "tokenizer": tokenizer}


def init_patch_embedding(conv, pixels: torch.Tensor) -> None:
    """Start the patch embedding from the principal components of image patches (a ViT trained from
    scratch on little data learns shapes much faster from there than from random filters)."""
    width, channels, p, _ = conv.weight.shape
    with torch.no_grad():
        patches = pixels.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * p * p)
        patches = patches - patches.mean(0)
        _, _, v = torch.linalg.svd(patches[:: max(1, len(patches) // 20000)], full_matrices=False)
        filters = v[:width]
        scale = 2 * conv.weight.reshape(width, -1).norm(dim=1).mean()
        conv.weight.copy_((filters / filters.norm(dim=1, keepdim=True) * scale).reshape(width, channels, p, p))


def evaluate_clip(clip: dict, scenes: list[Scene]) -> dict:
    """Text-to-image Recall@1 over the gallery renderings (never trained on), per attribute too."""
    model, preprocess, tokenizer = clip["model"], clip["preprocess"], clip["tokenizer"]
    with torch.no_grad():
        text = model.encode_text(tokenizer([s.caption for s in scenes]), normalize=True)
        image = model.encode_image(torch.stack([preprocess(benchmark.gallery_image(s)) for s in scenes]), normalize=True)
    top = (text @ image.T).argmax(1).tolist()
    result = {"gallery_text_to_image_recall@1": sum(i == j for i, j in enumerate(top)) / len(scenes)}
    for a in ATTRIBUTES:
        result[f"top1_same_{a}"] = sum(scenes[i].get(a) == scenes[j].get(a) for i, j in enumerate(top)) / len(scenes)
    return result


# ---------------------------------------------------------------- captioner (BLIP)


def caption_vocab() -> list[str]:
    words = sorted({w for s in all_scenes() for w in s.caption.split()})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    punctuation = list(".,:;!?'\"()-/0123456789")
    return specials + words + [w for w in letters if w not in words] + punctuation + [f"##{c}" for c in letters]


def blip_vision_state(visual) -> dict[str, torch.Tensor]:
    """The open_clip ViT's weights under BLIP vision-encoder names (the two compute the same function:
    no ln_pre, a bias-free patch embedding, fused qkv in the same order, exact GELU, ln_post on every token)."""
    state = {
        "embeddings.class_embedding": visual.class_embedding.reshape(1, 1, -1),
        "embeddings.patch_embedding.weight": visual.conv1.weight,
        "embeddings.patch_embedding.bias": torch.zeros(visual.conv1.weight.shape[0]),
        "embeddings.position_embedding": visual.positional_embedding.unsqueeze(0),
        "post_layernorm.weight": visual.ln_post.weight,
        "post_layernorm.bias": visual.ln_post.bias,
    }
    for i, block in enumerate(visual.transformer.resblocks):
        p = f"encoder.layers.{i}."
        state.update(
            {
                p + "self_attn.qkv.weight": block.attn.in_proj_weight,
                p + "self_attn.qkv.bias": block.attn.in_proj_bias,
                p + "self_attn.projection.weight": block.attn.out_proj.weight,
                p + "self_attn.projection.bias": block.attn.out_proj.bias,
                p + "layer_norm1.weight": block.ln_1.weight,
                p + "layer_norm1.bias": block.ln_1.bias,
                p + "layer_norm2.weight": block.ln_2.weight,
                p + "layer_norm2.bias": block.ln_2.bias,
                p + "mlp.fc1.weight": block.mlp.c_fc.weight,
                p + "mlp.fc1.bias": block.mlp.c_fc.bias,
                p + "mlp.fc2.weight": block.mlp.c_proj.weight,
                p + "mlp.fc2.bias": block.mlp.c_proj.bias,
            }
        )
    return {k: v.detach().float().clone() for k, v in state.items()}


def train_captioner(out: Path, clip: dict, scenes: list[Scene], images) -> None:
    from transformers import (
        AutoProcessor,
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
        GenerationConfig,
    )

    out.mkdir(parents=True, exist_ok=True)
    vocab = caption_vocab()
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, bos_token="[DEC]", model_max_length=32)
    v = CLIP_CONFIG["vision_cfg"]
    image_processor = BlipImageProcessor(
        size={"height": v["image_size"], "width": v["image_size"]},
        resample=3,  # bicubic, as open_clip
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)  # the processor exactly as the engine loads it

    ids = {t: vocab.index(t) for t in ("[PAD]", "[SEP]", "[DEC]")}
    vision = BlipVisionConfig(
        hidden_size=v["width"],
        intermediate_size=int(v["width"] * v["mlp_ratio"]),
        num_hidden_layers=v["layers"],
        num_attention_heads=v["width"] // v["head_width"],
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    text = BlipTextConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        encoder_hidden_size=v["width"],
        max_position_embeddings=32,
        bos_token_id=ids["[DEC]"],
        pad_token_id=ids["[PAD]"],
        sep_token_id=ids["[SEP]"],
        eos_token_id=ids["[SEP]"],
        label_smoothing=0.0,
    )
    set_seed(SEED + 1)
    model = BlipForConditionalGeneration(BlipConfig(vision_config=vision.to_dict(), text_config=text.to_dict()))
    model.vision_model.load_state_dict(blip_vision_state(clip["model"].visual), strict=True)
    model.vision_model.requires_grad_(False)  # the toy CLIP's vision encoder, frozen
    model.eval()

    with torch.no_grad():  # image features once: the vision encoder does not change
        features = []
        for start in range(0, len(images), 256):
            pixel_values = processor(images=images[start : start + 256], return_tensors="pt")["pixel_values"]
            features.append(model.vision_model(pixel_values=pixel_values).last_hidden_state)
        features = torch.cat(features)
    n = len(scenes)
    # decoder input: [DEC] caption [SEP]; BLIP's generate starts from [DEC] and stops at [SEP]
    encoded = [[ids["[DEC]"], *tokenizer(s.caption, add_special_tokens=False)["input_ids"], ids["[SEP]"]] for s in scenes]
    length = max(map(len, encoded))
    input_ids = torch.full((n, length), ids["[PAD]"])
    for i, row in enumerate(encoded):
        input_ids[i, : len(row)] = torch.tensor(row)
    attention = (input_ids != ids["[PAD]"]).long()
    labels = input_ids.masked_fill(attention == 0, -100)

    decoder = model.text_decoder
    decoder.train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=CAPTIONER_LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=CAPTIONER_LR, total_steps=CAPTIONER_STEPS, pct_start=0.1)
    gen = torch.Generator().manual_seed(SEED + 1)
    for step in range(CAPTIONER_STEPS):
        pick = torch.randint(len(images), (CAPTIONER_BATCH,), generator=gen)
        scene_idx = pick % n
        loss = decoder(
            input_ids=input_ids[scene_idx],
            attention_mask=attention[scene_idx],
            encoder_hidden_states=features[pick],
            labels=labels[scene_idx],
            reduction="mean",
        ).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == CAPTIONER_STEPS - 1:
            log(f"  captioner step {step:4d}  loss {loss.item():.4f}")
    model.requires_grad_(True)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["[DEC]"], eos_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"], max_new_tokens=16, do_sample=False
    )
    model.save_pretrained(out)


# ---------------------------------------------------------------- rewrite LLM (Qwen2)


def rewrite_examples(rng: random.Random, held_out: set, count: int):
    """(messages, answer) pairs of the toy-rewrite prompt, never a held-out (reference, target) pair."""
    from cirkit.prompts import load_prompt

    prompt = load_prompt("toy-rewrite")
    scenes = all_scenes()
    out = []
    while len(out) < count:
        reference = rng.choice(scenes)
        mod = modify(reference, rng)
        if (reference, mod.target) in held_out:
            continue
        out.append((prompt.render(caption=reference.caption, modification=mod.text), f"Edited Description: {mod.target.caption}"))
    return out


def train_llm(out: Path, examples=rewrite_examples, held_out: set | None = None, steps: int = LLM_STEPS) -> None:
    """The rewrite LLM, trained on `examples(rng, held_out, count)`: (messages, answer) pairs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    held_out = benchmark.held_out_pairs() if held_out is None else held_out
    rng = random.Random(SEED + 2)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

    # byte-level BPE: any text round-trips, so user-typed modifications never become <unk>
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus_tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    corpus_tokenizer.chat_template = CHATML
    corpus = [
        corpus_tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
        for messages, answer in examples(random.Random(SEED + 3), held_out, 4000)
    ]
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=LLM_HIDDEN,
        intermediate_size=LLM_HIDDEN * 2,
        num_hidden_layers=LLM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=pad,
    )
    set_seed(SEED + 2)
    model = Qwen2ForCausalLM(config)

    def encode(messages, answer):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        return prompt_ids, answer_ids

    opt = torch.optim.AdamW(model.parameters(), lr=LLM_LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LLM_LR, total_steps=steps, pct_start=0.05)
    model.train()
    for step in range(steps):
        batch = [encode(m, a) for m, a in examples(rng, held_out, LLM_BATCH)]
        length = max(len(p) + len(a) for p, a in batch)
        input_ids = torch.full((len(batch), length), pad)
        labels = torch.full((len(batch), length), -100)
        attention = torch.zeros((len(batch), length), dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            input_ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)  # the answer only
            attention[i, : len(p) + len(a)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  llm step {step:4d}  loss {loss.item():.4f}")
    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=im_end, pad_token_id=pad, do_sample=False, max_new_tokens=32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------- checks through cirkit's own loaders


def evaluate_through_cirkit(models_dir: Path) -> dict:
    """Load the written models with cirkit's engines and score them on the benchmark's held-out queries."""
    from cirkit.components.rewrite import parse_answer
    from cirkit.engines.base import GenerationParams, GenerationRequest
    from cirkit.engines.transformers_engine import TransformersEngine
    from cirkit.prompts import load_prompt

    queries = benchmark.queries()
    captioner = TransformersEngine(str(models_dir / "captioner"), vision=True, dtype="float32", device="cpu")
    requests = [GenerationRequest(messages=load_prompt("toy-caption").render(), image=benchmark.gallery_image(q.reference)) for q in queries]
    captions = [g[0].text for g in captioner.generate(requests, GenerationParams(max_new_tokens=16, batch_size=64))]
    llm = TransformersEngine(str(models_dir / "llm"), vision=False, dtype="float32", device="cpu")
    prompt = load_prompt("toy-rewrite")
    requests = [GenerationRequest(messages=prompt.render(caption=q.reference.caption, modification=q.modification.text)) for q in queries]
    rewrites = [parse_answer(g[0].text, "Edited Description:")[0] for g in llm.generate(requests, GenerationParams(max_new_tokens=24, batch_size=64))]
    return {
        "caption_exact": sum(c == q.reference.caption for c, q in zip(captions, queries)) / len(queries),
        "rewrite_exact_given_true_caption": sum(r == q.target.caption for r, q in zip(rewrites, queries)) / len(queries),
    }


# ---------------------------------------------------------------- the hard world (cirkit/toy/hard.py)
#
#   hard/clip/       toy-hard-clip.json + .safetensors: an open_clip CLIP trained on descriptions that
#                    mention any subset of the attributes (a description's positives are all the
#                    images it fits), with auxiliary attribute heads on the image side
#   hard/captioner/  a LLaVA (LlavaForConditionalGeneration + LlavaProcessor, ChatML template): the toy
#                    CLIP's vision tower, copied weight for weight into a CLIPVisionModel, a projector
#                    and a small Qwen2; trained on captions that mention each optional attribute with
#                    the probability in hard.MENTION
#   hard/llm/        a Qwen2 rewrite LLM, trained on partial captions and the hard world's modifications
#   hard/judge/      a LLaVA like the captioner that sees the reference image, then a candidate, and
#                    answers "yes" or "no" to the toy-hard-judge prompt: trained on targets and near
#                    misses (hard_judge_examples), with auxiliary heads on its last state that read
#                    both images' attributes, the target's and where the candidate differs from it

HARD_CLIP_NAME = "toy-hard-clip"
HARD_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 3, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}
HARD_RENDERS = 4
HARD_CLIP_STEPS = 500
HARD_CLIP_BATCH = 96
HARD_CLIP_LR = 3e-3
HARD_CAPTIONER_STEPS = 400
HARD_LLM_STEPS = 600
HARD_JUDGE_STEPS = 1200
HARD_JUDGE_LR = 3e-3
HARD_JUDGE_LAYERS = 3
HARD_JUDGE_AUX = 1.0  # weight of the judge's auxiliary heads
HARD_JUDGE_UNSEEN = 0.3  # of the judge's "no" examples, the share off in the pattern or the mark (besides their share of the rest)
HARD_VLM_BATCH = 64
HARD_VLM_LR = 2e-3
HARD_VLM_HIDDEN = 64
LLAVA_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def hard_mentions(rng: random.Random, probability: float | None = None) -> tuple[str, ...]:
    """Attributes a description mentions: as the captioner's data (hard.MENTION) or each with `probability`."""
    if probability is None:
        return hard.sample_mentions(rng)
    return ("shape", "colour", *(a for a in hard.OPTIONAL if rng.random() < probability))


def hard_labels(scenes) -> torch.Tensor:
    return torch.tensor([[hard.values(a).index(s.get(a)) for a in hard.ATTRIBUTES] for s in scenes])


def train_hard_clip(out: Path, scenes, images) -> dict:
    import open_clip
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config_path = out / f"{HARD_CLIP_NAME}.json"
    config_path.write_text(json.dumps(HARD_CLIP_CONFIG, indent=2) + "\n")
    open_clip.add_model_config(config_path)
    set_seed(SEED + 10)
    model, _, preprocess = open_clip.create_model_and_transforms(HARD_CLIP_NAME)
    tokenizer = open_clip.get_tokenizer(HARD_CLIP_NAME)
    pixels = torch.stack([preprocess(im) for im in images])
    init_patch_embedding(model.visual.conv1, pixels[: len(scenes) * 2])
    labels = hard_labels(scenes)
    n, dim = len(scenes), HARD_CLIP_CONFIG["embed_dim"]
    heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(hard.values(a))) for a in hard.ATTRIBUTES)
    text_heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(hard.values(a))) for a in hard.ATTRIBUTES)
    params = [*model.parameters(), *heads.parameters(), *text_heads.parameters()]
    opt = torch.optim.AdamW(params, lr=HARD_CLIP_LR, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=HARD_CLIP_LR, total_steps=HARD_CLIP_STEPS, pct_start=0.1)
    gen = torch.Generator().manual_seed(SEED + 10)
    rng = random.Random(SEED + 10)
    ce = torch.nn.functional.cross_entropy
    model.train()
    for step in range(HARD_CLIP_STEPS):
        idx = torch.randperm(n, generator=gen)[:HARD_CLIP_BATCH]
        rendering = torch.randint(HARD_RENDERS, (len(idx),), generator=gen)
        mentions = [hard_mentions(rng, 0.5) for _ in idx]
        mask = torch.tensor([[a in m for a in hard.ATTRIBUTES] for m in mentions])
        texts = tokenizer([hard.describe(scenes[i], m) for i, m in zip(idx.tolist(), mentions)])
        lab = labels[idx]
        # text i fits image j when j agrees with every attribute text i mentions
        fits = ((lab[:, None, :] == lab[None, :, :]) | ~mask[:, None, :]).all(-1).float()
        image_features = model.encode_image(pixels[rendering * n + idx], normalize=True)
        text_features = model.encode_text(texts, normalize=True)
        logits = model.logit_scale.exp().clamp(max=100) * text_features @ image_features.T
        loss = -(torch.log_softmax(logits, 1) * fits / fits.sum(1, keepdim=True)).sum(1).mean()
        loss = loss - (torch.log_softmax(logits.T, 1) * fits.T / fits.T.sum(1, keepdim=True)).sum(1).mean()
        for k in range(len(hard.ATTRIBUTES)):
            loss = loss + ce(heads[k](image_features * 8), lab[:, k])
            if mask[:, k].any():
                loss = loss + ce(text_heads[k](text_features[mask[:, k]] * 8), lab[mask[:, k], k])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == HARD_CLIP_STEPS - 1:
            log(f"  clip step {step:4d}  loss {loss.item():.3f}")
    model.eval()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{HARD_CLIP_NAME}.safetensors"))
    return {"model": model, "preprocess": preprocess, "tokenizer": tokenizer}


def evaluate_hard_clip(clip: dict, scenes) -> dict:
    """Gallery renderings (never trained on): full descriptions to images, and each attribute."""
    model, preprocess, tokenizer = clip["model"], clip["preprocess"], clip["tokenizer"]
    with torch.no_grad():
        text = model.encode_text(tokenizer([s.caption for s in scenes]), normalize=True)
        image = model.encode_image(torch.stack([preprocess(hard.gallery_image(s)) for s in scenes]), normalize=True)
    top = (text @ image.T).argmax(1).tolist()
    result = {"gallery_text_to_image_recall@1": sum(i == j for i, j in enumerate(top)) / len(scenes)}
    for a in hard.ATTRIBUTES:
        result[f"top1_same_{a}"] = sum(scenes[i].get(a) == scenes[j].get(a) for i, j in enumerate(top)) / len(scenes)
    return result


def hard_vlm_tokenizer():
    """A byte-level BPE for the captioner and the judge, with "yes" and "no" as tokens of their own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from cirkit.prompts import load_prompt

    rng = random.Random(SEED + 11)
    scenes = hard.all_scenes()
    judge = load_prompt("toy-hard-judge")
    corpus = [hard.describe(rng.choice(scenes), hard_mentions(rng, 0.5)) for _ in range(3000)]
    corpus += [judge.render(modification=hard.modify(rng.choice(scenes), rng).text)[0]["content"] for _ in range(3000)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_max_length=512, clean_up_tokenization_spaces=False)
    tokenizer.add_tokens(["yes", "no"])
    tokenizer.chat_template = LLAVA_CHATML
    return tokenizer


def clip_vision_state(visual) -> dict[str, torch.Tensor]:
    """The open_clip ViT's weights under transformers' CLIPVisionModel names (the same function)."""
    state = {
        "embeddings.class_embedding": visual.class_embedding,
        "embeddings.patch_embedding.weight": visual.conv1.weight,
        "embeddings.position_embedding.weight": visual.positional_embedding,
        "pre_layrnorm.weight": visual.ln_pre.weight,
        "pre_layrnorm.bias": visual.ln_pre.bias,
        "post_layernorm.weight": visual.ln_post.weight,
        "post_layernorm.bias": visual.ln_post.bias,
    }
    for i, block in enumerate(visual.transformer.resblocks):
        p = f"encoder.layers.{i}."
        for name, w, b in zip("qkv", block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)):
            state[p + f"self_attn.{name}_proj.weight"], state[p + f"self_attn.{name}_proj.bias"] = w, b
        state.update({
            p + "self_attn.out_proj.weight": block.attn.out_proj.weight,
            p + "self_attn.out_proj.bias": block.attn.out_proj.bias,
            p + "layer_norm1.weight": block.ln_1.weight, p + "layer_norm1.bias": block.ln_1.bias,
            p + "layer_norm2.weight": block.ln_2.weight, p + "layer_norm2.bias": block.ln_2.bias,
            p + "mlp.fc1.weight": block.mlp.c_fc.weight, p + "mlp.fc1.bias": block.mlp.c_fc.bias,
            p + "mlp.fc2.weight": block.mlp.c_proj.weight, p + "mlp.fc2.bias": block.mlp.c_proj.bias,
        })
    return {k: v.detach().float().clone() for k, v in state.items()}


def build_llava(out: Path, vision_state: dict, tokenizer, seed: int, layers: int):
    """A LLaVA whose vision tower is the toy CLIP's (`vision_state`: clip_vision_state of its ViT);
    returns (model, processor as the engine loads it)."""
    from transformers import (AutoProcessor, CLIPImageProcessor, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config)

    v = HARD_CLIP_CONFIG["vision_cfg"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": v["image_size"]}, crop_size={"height": v["image_size"], "width": v["image_size"]},
        resample=3, image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=v["patch_size"],
                   vision_feature_select_strategy="full", num_additional_image_tokens=1,
                   chat_template=LLAVA_CHATML).save_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    vision = CLIPVisionConfig(hidden_size=v["width"], intermediate_size=int(v["width"] * v["mlp_ratio"]),
                              num_hidden_layers=v["layers"], num_attention_heads=v["width"] // v["head_width"],
                              image_size=v["image_size"], patch_size=v["patch_size"], hidden_act="gelu", layer_norm_eps=1e-5)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=HARD_VLM_HIDDEN, intermediate_size=2 * HARD_VLM_HIDDEN,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True, bos_token_id=None, eos_token_id=im_end, pad_token_id=tokenizer.pad_token_id)
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=tokens, vision_feature_select_strategy="full", vision_feature_layer=-1,
                         tie_word_embeddings=True)
    set_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision_state, strict=True)
    model.model.vision_tower.requires_grad_(False)
    return model, processor


def vision_features(model, processor, images) -> torch.Tensor:
    """The frozen vision tower's features (LLaVA's selected layer), computed once."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            pixels = processor.image_processor(images[start : start + 256], return_tensors="pt")["pixel_values"]
            out.append(model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1])
    return torch.cat(out)


def llava_step(model, prompt_ids: list[list[int]], answer_ids: list[list[int]], features: list[torch.Tensor], image_id: int, pad: int,
               hidden: bool = False):
    """The loss of one batch: prompts with <image> tokens (as the processor expands them), image
    features scattered in their place through the trainable projector, loss on the answers only."""
    length = max(len(p) + len(a) for p, a in zip(prompt_ids, answer_ids))
    ids = torch.full((len(prompt_ids), length), pad)
    labels = torch.full_like(ids, -100)
    attention = torch.zeros_like(ids)
    for i, (p, a) in enumerate(zip(prompt_ids, answer_ids)):
        start = length - len(p) - len(a)  # left padding, as the engine pads
        ids[i, start:] = torch.tensor(p + a)
        labels[i, start + len(p) :] = torch.tensor(a)
        attention[i, start:] = 1
    embeds = model.get_input_embeddings()(ids)
    projected = model.model.multi_modal_projector(torch.cat(features))
    embeds = embeds.masked_scatter((ids == image_id)[..., None], projected.reshape(-1, projected.shape[-1]))
    if not hidden:
        return model(inputs_embeds=embeds, attention_mask=attention, labels=labels).loss
    out = model(inputs_embeds=embeds, attention_mask=attention, labels=labels, output_hidden_states=True)
    # the last layer's state where the first answer token is predicted (every answer here is one token)
    return out.loss, out.hidden_states[-1][:, -2]


def _chat_prompt_ids(processor, text: str, images: int) -> list[int]:
    conversation = [{"role": "user", "content": [*[{"type": "image"}] * images, {"type": "text", "text": text}]}]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    tokens = HARD_CLIP_CONFIG["vision_cfg"]["image_size"] // HARD_CLIP_CONFIG["vision_cfg"]["patch_size"]
    rendered = rendered.replace("<image>", "<image>" * (tokens * tokens + 1))
    return processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]


def _train_llava(model, name: str, steps: int, batch_fn, lr: float = HARD_VLM_LR, extra=()) -> None:
    """`extra`: parameters trained along (auxiliary heads, dropped after training)."""
    trainable = [p for p in model.parameters() if p.requires_grad] + list(extra)
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        loss = batch_fn()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  {name} step {step:4d}  loss {loss.item():.4f}")
    model.eval()


def _save_llava(model, processor, out: Path, max_new_tokens: int) -> None:
    from transformers import GenerationConfig

    tokenizer = processor.tokenizer
    model.requires_grad_(True)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=max_new_tokens)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def train_hard_captioner(out: Path, clip: dict, tokenizer, scenes, images) -> None:
    from cirkit.prompts import load_prompt

    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_llava(out, clip_vision_state(clip["model"].visual), tokenizer, SEED + 12, layers=2)
    features = vision_features(model, processor, images)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    prompt = _chat_prompt_ids(processor, load_prompt("toy-caption").render()[0]["content"], 1)
    gen = torch.Generator().manual_seed(SEED + 12)
    rng = random.Random(SEED + 12)
    n = len(scenes)

    def batch():
        pick = torch.randint(len(images), (HARD_VLM_BATCH,), generator=gen).tolist()
        answers = [tokenizer(hard.describe(scenes[i % n], hard_mentions(rng)) + "<|im_end|>", add_special_tokens=False)["input_ids"] for i in pick]
        return llava_step(model, [prompt] * len(pick), answers, [features[i : i + 1] for i in pick], image_id, tokenizer.pad_token_id)

    _train_llava(model, "captioner", HARD_CAPTIONER_STEPS, batch)
    _save_llava(model, processor, out, 24)


# the phrasings of hard._phrases that ask for a change without naming the new value
_OPEN_PHRASES = {"shape": "a different shape", "colour": "a different colour", "pattern": "change the pattern",
                 "position": "the other side", "background": "a different background"}


def hard_judge_examples(rng: random.Random, held_out: set, count: int, targets: bool = False):
    """(reference, candidate, modification text, answer[, target]), half "yes" and half "no". A "no" candidate
    is the target one attribute away: mostly in the pattern or the mark (what captions leave out, so
    what a text search cannot tell apart), else in any attribute; an attribute the instruction leaves
    open ("a different colour") is only set back to the reference's value (the change not made), so
    a "no" never fits the instruction. No (reference, candidate) pair is one of the benchmark's."""
    scenes = hard.all_scenes()
    out = []
    while len(out) < count:
        reference = rng.choice(scenes)
        mod = hard.modify(reference, rng)
        if (reference, mod.target) in held_out:
            continue
        if rng.random() < 0.5:
            out.append((reference, mod.target, mod.text, "yes", mod.target)[: 4 + targets])
            continue
        attribute = rng.choice(("pattern", "mark")) if rng.random() < HARD_JUDGE_UNSEEN else rng.choice(hard.ATTRIBUTES)
        others = [v for v in hard.values(attribute) if v != mod.target.get(attribute)]
        if attribute in mod.changed and _OPEN_PHRASES.get(attribute, "\n") in mod.text:
            others = [reference.get(attribute)]  # any other value fits "a different colour"
        wrong = replace(mod.target, **{attribute: rng.choice(others)})
        if (reference, wrong) in held_out:
            continue
        out.append((reference, wrong, mod.text, "no", mod.target)[: 4 + targets])
    return out


def train_hard_judge(out: Path, vision_state: dict, tokenizer, scenes, images) -> None:
    """The judge, trained on hard_judge_examples. Besides the answer, auxiliary heads on its last
    state read what the answer rests on: each image's attributes, the target's (the reference
    changed as asked) and where the candidate differs from it (the heads are dropped after training)."""
    from cirkit.prompts import load_prompt

    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_llava(out, vision_state, tokenizer, SEED + 13, layers=HARD_JUDGE_LAYERS)
    features = vision_features(model, processor, images)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    template = load_prompt("toy-hard-judge")
    held_out = hard.held_out_pairs()
    position = {s: i for i, s in enumerate(scenes)}
    labels = hard_labels(scenes)
    rng = random.Random(SEED + 13)
    answer_ids = {w: [tokenizer.convert_tokens_to_ids(w)] for w in ("yes", "no")}
    prompts: dict[str, list[int]] = {}
    width = HARD_VLM_HIDDEN
    heads = torch.nn.ModuleDict({
        "reference": torch.nn.ModuleList(torch.nn.Linear(width, len(hard.values(a))) for a in hard.ATTRIBUTES),
        "candidate": torch.nn.ModuleList(torch.nn.Linear(width, len(hard.values(a))) for a in hard.ATTRIBUTES),
        "target": torch.nn.ModuleList(torch.nn.Linear(width, len(hard.values(a))) for a in hard.ATTRIBUTES),
        "differ": torch.nn.Linear(width, len(hard.ATTRIBUTES)),
    })
    ce, bce = torch.nn.functional.cross_entropy, torch.nn.functional.binary_cross_entropy_with_logits

    def batch():
        prompt_ids, answers, feats, pairs = [], [], [], []
        for reference, candidate, text, answer, target in hard_judge_examples(rng, held_out, HARD_VLM_BATCH, targets=True):
            if text not in prompts:
                prompts[text] = _chat_prompt_ids(processor, template.render(modification=text)[0]["content"], 2)
            prompt_ids.append(prompts[text])
            answers.append(answer_ids[answer])
            a, b = rng.randrange(HARD_RENDERS), rng.randrange(HARD_RENDERS)
            feats.append(features[[a * len(scenes) + position[reference], b * len(scenes) + position[candidate]]])
            pairs.append((position[reference], position[candidate], position[target]))
        loss, state = llava_step(model, prompt_ids, answers, feats, image_id, tokenizer.pad_token_id, hidden=True)
        if not HARD_JUDGE_AUX:
            return loss
        ref, cand, target = (labels[list(column)] for column in zip(*pairs))
        aux = sum(ce(heads[name][k](state), of[:, k]) for name, of in (("reference", ref), ("candidate", cand), ("target", target))
                  for k in range(len(hard.ATTRIBUTES))) / len(hard.ATTRIBUTES)
        aux = aux + bce(heads["differ"](state), (cand != target).float())
        return loss + HARD_JUDGE_AUX * aux

    _train_llava(model, "judge", HARD_JUDGE_STEPS, batch, lr=HARD_JUDGE_LR, extra=heads.parameters())
    _save_llava(model, processor, out, 1)


def hard_rewrite_examples(rng: random.Random, held_out: set, count: int):
    """toy-rewrite prompts on partial captions (mostly as the captioner writes them) and hard.edit's answer."""
    from cirkit.prompts import load_prompt

    prompt = load_prompt("toy-rewrite")
    scenes = hard.all_scenes()
    out = []
    while len(out) < count:
        reference = rng.choice(scenes)
        mod = hard.modify(reference, rng)
        if (reference, mod.target) in held_out:
            continue
        caption = hard.describe(reference, hard_mentions(rng, None if rng.random() < 0.7 else 0.5))
        out.append((prompt.render(caption=caption, modification=mod.text), f"Edited Description: {hard.edit(caption, mod)}"))
    return out


def evaluate_hard_through_cirkit(models_dir: Path) -> dict:
    """The written models through cirkit's engines, on the held-out test queries."""
    from cirkit.components.rerank import verifier_score
    from cirkit.components.rewrite import parse_answer
    from cirkit.engines.base import GenerationParams, GenerationRequest
    from cirkit.engines.transformers_engine import TransformersEngine
    from cirkit.prompts import load_prompt

    queries = hard.queries("test")
    images = [hard.gallery_image(q.reference) for q in queries]
    captioner = TransformersEngine(str(models_dir / "captioner"), vision=True, dtype="float32", device="cpu")
    requests = [GenerationRequest(messages=load_prompt("toy-caption").render(), image=im) for im in images]
    greedy = [g[0].text for g in captioner.generate(requests, GenerationParams(max_new_tokens=24, batch_size=64))]
    sampled = captioner.generate(requests, GenerationParams(max_new_tokens=24, batch_size=64, temperature=1.0, n=8))

    def stated(text, scene):
        parsed = hard.parse_description(text)
        return parsed is not None and all(scene.get(a) == v for a, v in parsed.items()), parsed or {}

    scores = {"caption_true_greedy": sum(stated(c, q.reference)[0] for c, q in zip(greedy, queries)) / len(queries)}
    flat = [(g.text, q.reference) for gens, q in zip(sampled, queries) for g in gens]
    scores["caption_true_sampled"] = sum(stated(c, s)[0] for c, s in flat) / len(flat)
    for a in ("pattern", "mark"):
        scores[f"greedy_mentions_{a}"] = sum(a in stated(c, q.reference)[1] for c, q in zip(greedy, queries)) / len(queries)
        scores[f"sampled_mentions_{a}"] = sum(a in stated(c, s)[1] for c, s in flat) / len(flat)
    llm = TransformersEngine(str(models_dir / "llm"), vision=False, dtype="float32", device="cpu")
    prompt, rng = load_prompt("toy-rewrite"), random.Random(SEED + 14)
    captions = [hard.describe(q.reference, hard.sample_mentions(rng)) for q in queries]
    requests = [GenerationRequest(messages=prompt.render(caption=c, modification=q.modification.text)) for c, q in zip(captions, queries)]
    rewrites = [parse_answer(g[0].text, "Edited Description:")[0] for g in llm.generate(requests, GenerationParams(max_new_tokens=32, batch_size=64))]
    scores["rewrite_exact_given_true_caption"] = sum(r == hard.edit(c, q.modification) for r, c, q in zip(rewrites, captions, queries)) / len(queries)
    judge = TransformersEngine(str(models_dir / "judge"), vision=True, dtype="float32", device="cpu")
    template = load_prompt("toy-hard-judge")
    pairs = [(q, m) for q in queries for m in q.members if m != q.reference]
    requests = [GenerationRequest(messages=template.render(modification=q.modification.text), image=hard.gallery_image(q.reference),
                                  more_images=[hard.gallery_image(m)]) for q, m in pairs]
    answers = judge.generate(requests, GenerationParams(max_new_tokens=1, batch_size=64), logprobs_of=("yes", "no"))
    p_yes = [verifier_score(a[0].text, a[0].logprobs)[0] or 0.0 for a in answers]
    right = [(p > 0.5) == (m == q.target) for p, (q, m) in zip(p_yes, pairs)]
    scores["judge_accuracy_on_img_sets"] = sum(right) / len(right)
    best = {}
    for p, (q, m) in zip(p_yes, pairs):
        if q.pairid not in best or p > best[q.pairid][0]:
            best[q.pairid] = (p, m == q.target)
    scores["judge_top1_in_img_set"] = sum(hit for _, hit in best.values()) / len(best)
    return scores


def train_hard(out: Path, keep: Path | None = None) -> dict:
    """Train the hard world's models into `out`. `keep`: the models written before (a full run's
    output): retrain the judge alone and copy the others from there, with their training times and
    CLIP scores (the judge's vision tower is read from the captioner's, the full run's float32 copy
    of the CLIP's, so the judge starts from the weights a full run gives it)."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    log(f"rendering {HARD_RENDERS} training images of each of the {len(hard.all_scenes())} hard scenes ...")
    scenes = hard.all_scenes()
    images = [hard.render(s, seed_for("hard-train", r, s.slug)) for r in range(HARD_RENDERS) for s in scenes]
    times["render"] = time.perf_counter() - start
    tokenizer = hard_vlm_tokenizer()
    clip, kept_scores = None, {}
    if keep is not None:
        from safetensors.torch import load_file

        record = json.loads((keep / "training.json").read_text())
        for name in ("clip", "captioner", "llm"):
            shutil.copytree(keep / name, out / name)
            times[name] = record["training_seconds"][name]
        kept_scores = {k: v for k, v in record["held_out_scores"].items() if k == "gallery_text_to_image_recall@1" or k.startswith("top1_same_")}
        prefix = "vision_tower."
        vision_state = {k[len(prefix):]: v for k, v in load_file(str(out / "captioner" / "model.safetensors")).items() if k.startswith(prefix)}
        steps = [("judge", lambda: train_hard_judge(out / "judge", vision_state, tokenizer, scenes, images))]
    else:
        steps = [
            ("clip", lambda: train_hard_clip(out / "clip", scenes, images)),
            ("captioner", lambda: train_hard_captioner(out / "captioner", clip, tokenizer, scenes, images)),
            ("llm", lambda: train_llm(out / "llm", hard_rewrite_examples, hard.held_out_pairs(), HARD_LLM_STEPS)),
            ("judge", lambda: train_hard_judge(out / "judge", clip_vision_state(clip["model"].visual), tokenizer, scenes, images)),
        ]
    for name, train in steps:
        start = time.perf_counter()
        log(f"training the hard world's {name} ...")
        result = train()
        if name == "clip":
            clip = result
        times[name] = time.perf_counter() - start
        log(f"  {times[name]:.0f} s")
    log("checking the models through cirkit's loaders on the held-out test queries ...")
    scores = {**(evaluate_hard_clip(clip, scenes) if clip else kept_scores), **evaluate_hard_through_cirkit(out)}
    return {"world_fingerprint": hard.fingerprint(), "times": times, "scores": scores}


def file_hashes(models_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    hashes = {}
    for path in sorted(models_dir.rglob("*")):
        if path.is_file() and path.name != "training.json" and path.relative_to(models_dir).parts[0] not in skip:
            with open(path, "rb") as fh:
                hashes[path.relative_to(models_dir).as_posix()] = hashlib.file_digest(fh, "sha256").hexdigest()
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=("toy", "hard"), default="toy", help="toy: cirkit/toy/world.py; hard: cirkit/toy/hard.py")
    parser.add_argument("--out", type=Path, help="default: cirkit/toy/models (toy), cirkit/toy/models/hard (hard)")
    parser.add_argument("--only", choices=("judge",), help="hard world: retrain the judge alone, keeping the other models in --out")
    args = parser.parse_args()
    if args.only and args.world != "hard":
        parser.error("--only goes with --world hard")
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    out = args.out or REPO / "cirkit" / "toy" / "models" / ("hard" if args.world == "hard" else "")
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if args.world == "hard":
        return finish(out, staging, train_hard(staging, keep=out if args.only else None), skip=())

    times: dict[str, float] = {}
    start = time.perf_counter()
    log(f"rendering {CLIP_RENDERS} training images of each of the {len(all_scenes())} scenes ...")
    scenes, images = training_images(CLIP_RENDERS)
    times["render"] = time.perf_counter() - start

    start = time.perf_counter()
    log("training the toy CLIP ...")
    clip = train_clip(staging / "clip", scenes, images)
    times["clip"] = time.perf_counter() - start
    log(f"  {times['clip']:.0f} s")

    start = time.perf_counter()
    log("training the toy captioner (BLIP; vision encoder copied from the toy CLIP) ...")
    train_captioner(staging / "captioner", clip, scenes, images)
    times["captioner"] = time.perf_counter() - start
    log(f"  {times['captioner']:.0f} s")

    start = time.perf_counter()
    log("training the toy rewrite LLM (Qwen2) ...")
    train_llm(staging / "llm")
    times["llm"] = time.perf_counter() - start
    log(f"  {times['llm']:.0f} s")

    log("checking the models through cirkit's loaders on the held-out benchmark queries ...")
    scores = {**evaluate_clip(clip, scenes), **evaluate_through_cirkit(staging)}
    finish(out, staging, {"world_fingerprint": benchmark.fingerprint(), "times": times, "scores": scores}, skip=("hard",))


def finish(out: Path, staging: Path, trained: dict, skip: tuple[str, ...]) -> None:
    """Write training.json and put the staged models in place (keeping the folders in `skip`)."""
    for key, value in trained["scores"].items():
        log(f"  {key}: {value:.3f}")
    times = trained["times"]
    record = {
        "note": "written by scripts/train_toy_models.py; cirkit is training-free, these models only serve the toy demo and tests",
        "world_fingerprint": trained["world_fingerprint"],
        "seed": SEED,
        "threads": THREADS,
        "torch": torch.__version__,
        "training_seconds": {k: round(v, 1) for k, v in times.items()},
        "held_out_scores": {k: round(v, 4) for k, v in trained["scores"].items()},
        "files": file_hashes(staging, skip),
    }
    (staging / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    for name in skip:
        if (out / name).exists():
            (out / name).rename(staging / name)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] not in skip)
    log(f"wrote {out} ({size / 1e6:.1f} MB); training time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    log(f"total {sum(times.values()):.0f} s")

if __name__ == "__main__":
    main()
