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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle threads sleep: much faster when other work shares the cores

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from cirkit.toy import benchmark  # noqa: E402
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


def train_llm(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    held_out = benchmark.held_out_pairs()
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
        for messages, answer in rewrite_examples(random.Random(SEED + 3), held_out, 4000)
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
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LLM_LR, total_steps=LLM_STEPS, pct_start=0.05)
    model.train()
    for step in range(LLM_STEPS):
        batch = [encode(m, a) for m, a in rewrite_examples(rng, held_out, LLM_BATCH)]
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
        if step % 100 == 0 or step == LLM_STEPS - 1:
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


def file_hashes(models_dir: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted(models_dir.rglob("*")):
        if path.is_file() and path.name != "training.json":
            with open(path, "rb") as fh:
                hashes[path.relative_to(models_dir).as_posix()] = hashlib.file_digest(fh, "sha256").hexdigest()
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "cirkit" / "toy" / "models")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    out = args.out
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

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
    for key, value in scores.items():
        log(f"  {key}: {value:.3f}")

    record = {
        "note": "written by scripts/train_toy_models.py; cirkit is training-free, these models only serve the toy demo and tests",
        "world_fingerprint": benchmark.fingerprint(),
        "seed": SEED,
        "threads": THREADS,
        "torch": torch.__version__,
        "training_seconds": {k: round(v, 1) for k, v in times.items()},
        "held_out_scores": {k: round(v, 4) for k, v in scores.items()},
        "files": file_hashes(staging),
    }
    (staging / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"wrote {out} ({size / 1e6:.1f} MB); training time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    log(f"total {sum(times.values()):.0f} s")


if __name__ == "__main__":
    main()
