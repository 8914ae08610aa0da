"""The tiny random-weight test models build offline and load/generate through the public APIs.

Each test is also the reference recipe for using that kind of model with transformers 5.x / open_clip 3.x.
"""

from __future__ import annotations

import hashlib
import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from PIL import Image

from tiny_models import (
    BOS,
    CHATML_TEMPLATE,
    EOS,
    IM_END,
    IM_START,
    PAD,
    UNK,
    build_tiny_blip2,
    build_tiny_clip,
    build_tiny_llm,
    build_tiny_qwen2vl,
    build_tokenizer,
)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _images():
    # Different sizes/aspect ratios: Qwen2-VL turns them into different numbers of image tokens.
    return [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (30, 30), (20, 40, 220))]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tokenizer_roundtrip(tmp_path, no_network):
    from transformers import AutoTokenizer

    build_tokenizer(tmp_path, chat_template=CHATML_TEMPLATE, extra_special_tokens=[IM_START, IM_END])
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert [tok.convert_tokens_to_ids(t) for t in (PAD, BOS, EOS, UNK, IM_START, IM_END)] == [0, 1, 2, 3, 4, 5]
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == (PAD, BOS, EOS)
    for text in ["Edited Description: a red dress with long sleeves.", "hello\n  world 42 café"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    assert len(tok("a red dress")["input_ids"]) <= 4  # real merges were learned
    # deterministic: a second build gives the same files
    build_tokenizer(tmp_path / "again", chat_template=CHATML_TEMPLATE, extra_special_tokens=[IM_START, IM_END])
    assert _sha(tmp_path / "tokenizer.json") == _sha(tmp_path / "again" / "tokenizer.json")


def test_tiny_llm_chat_generate(tmp_path, no_network):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = build_tiny_llm(tmp_path)
    tok = AutoTokenizer.from_pretrained(d)
    tok.padding_side = "left"  # saved default is "right", like most hub checkpoints
    model = AutoModelForCausalLM.from_pretrained(d)
    convs = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "longer text here"}]]
    enc = tok.apply_chat_template(
        convs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][1].all()  # left padded
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    new = out[:, enc["input_ids"].shape[1] :]
    assert new.shape == (2, 8)
    texts = tok.batch_decode(new, skip_special_tokens=True)
    assert all(isinstance(t, str) for t in texts)
    # Left-padded batch == each item alone (greedy).
    for i, conv in enumerate(convs):
        one = tok.apply_chat_template(
            [conv], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        alone = model.generate(**one, max_new_tokens=8, do_sample=False)[:, one["input_ids"].shape[1] :]
        assert alone.tolist() == new[i : i + 1].tolist()
    # deterministic weights
    d2 = build_tiny_llm(tmp_path / "again")
    assert _sha(d / "model.safetensors") == _sha(d2 / "model.safetensors")


def test_tiny_blip2_caption(tmp_path, no_network):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = build_tiny_blip2(tmp_path)
    proc = AutoProcessor.from_pretrained(d)
    model = AutoModelForImageTextToText.from_pretrained(d)
    assert type(model).__name__ == "Blip2ForConditionalGeneration"
    nq = model.config.num_query_tokens
    images = _images()

    inputs = proc(images=images, text=["Describe the image."] * 2, return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert (inputs["input_ids"][:, :nq] == model.config.image_token_id).all()  # <image> x num_query_tokens first
    out = model.generate(**inputs, num_beams=5, max_new_tokens=30)
    # Decoder-only (OPT): the output starts with the whole prompt (image tokens + BOS + text); strip it.
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    new = out[:, inputs["input_ids"].shape[1] :]
    captions = proc.batch_decode(new, skip_special_tokens=True)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)

    # Different prompt lengths: left padding (per call) keeps each item identical to running it alone.
    prompts = ["Describe the image.", "A photo of"]
    batch = proc(images=images, text=prompts, return_tensors="pt", padding=True, padding_side="left")
    new = model.generate(**batch, max_new_tokens=6)[:, batch["input_ids"].shape[1] :]
    for i in range(2):
        one = proc(images=images[i : i + 1], text=prompts[i : i + 1], return_tensors="pt")
        alone = model.generate(**one, max_new_tokens=6)[:, one["input_ids"].shape[1] :]
        assert alone.tolist() == new[i : i + 1].tolist()

    # No prompt at all: generate() builds <image> x nq + BOS itself and returns them too.
    out = model.generate(**proc(images=images, return_tensors="pt"), max_new_tokens=5)
    assert out.shape == (2, nq + 1 + 5)
    assert all(isinstance(c, str) for c in proc.batch_decode(out[:, nq + 1 :], skip_special_tokens=True))


def test_tiny_qwen2vl_chat_generate(tmp_path, no_network):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = build_tiny_qwen2vl(tmp_path)
    proc = AutoProcessor.from_pretrained(d)
    model = AutoModelForImageTextToText.from_pretrained(d)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    images = _images()
    msgs = [
        [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": "Describe the image."}]}]
        for im in images
    ]
    # Processor kwargs go in `processor_kwargs` (passing padding=True directly works but logs a warning).
    inputs = proc.apply_chat_template(
        msgs,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 4]]  # 6 and 4 <|image_pad|> tokens
    assert inputs["attention_mask"][1, 0] == 0  # left padded
    out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    assert new.shape == (2, 10)
    texts = proc.batch_decode(new, skip_special_tokens=True)
    assert all(isinstance(t, str) for t in texts)
    for i in range(2):
        one = proc.apply_chat_template(
            msgs[i : i + 1], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        alone = model.generate(**one, max_new_tokens=10, do_sample=False)[:, one["input_ids"].shape[1] :]
        assert alone.tolist() == new[i : i + 1].tolist()

    # Equivalent two-step path: render text, then call the processor with the images.
    prompts = [proc.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    assert prompts[0].count("<|image_pad|>") == 1  # expanded by the processor, not the template
    two_step = proc(text=prompts, images=images, return_tensors="pt", padding=True, padding_side="left")
    assert torch.equal(two_step["input_ids"], inputs["input_ids"])


def test_tiny_clip_open_clip(tmp_path, no_network):
    import open_clip
    from safetensors.torch import load_file

    config_path, ckpt = build_tiny_clip(tmp_path)
    assert config_path.name == "cirkit-tiny-clip.json" and ckpt.suffix == ".safetensors"
    open_clip.add_model_config(config_path)
    model, _, preprocess = open_clip.create_model_and_transforms("cirkit-tiny-clip", pretrained=str(ckpt))
    tokenizer = open_clip.get_tokenizer("cirkit-tiny-clip")
    saved = load_file(ckpt)
    state = model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in saved)  # the checkpoint really was loaded
    model.eval()
    pixels = torch.stack([preprocess(im) for im in _images()])
    tokens = tokenizer(["a red dress", "a blue shirt with long sleeves"])
    assert pixels.shape == (2, 3, 32, 32) and tokens.shape == (2, 77)
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
    assert img.shape == txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
