"""Tokens and cost: engines report what each call read and wrote, steps store their queries' shares,
runs and experiments add them up (cached outputs apart), and a price table turns them into money."""

from __future__ import annotations

import json

import pytest

from cirkit.engines import GenerationParams, GenerationRequest, load_model
from cirkit.engines.base import metered
from cirkit.pipelines.spec import ModelSpec
from cirkit.toy import benchmark as toy
from test_engines_remote import FakeServer, completion, engine_for


def _no_proxy(monkeypatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_the_transformers_engine_counts_prompt_and_answer_tokens(tiny_models):
    from transformers import AutoTokenizer

    engine = load_model(ModelSpec(type="llm", id=str(tiny_models.llm)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.llm)
    prompts = ["a red dress", "a small blue circle on a white background and many more words than the first"]
    with metered() as usage:
        out = engine.generate([GenerationRequest(_user(p)) for p in prompts], GenerationParams(max_new_tokens=5, temperature=1.0, n=2))
    lengths = [len(tokenizer.apply_chat_template(_user(p), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
               for p in prompts]
    # the prompt is read once per request (padding left out), counted with its first generation
    assert [[g.input_tokens for g in gens] for gens in out] == [[n, 0] for n in lengths]
    assert all(1 <= g.output_tokens <= 5 for gens in out for g in gens)
    assert usage.input == sum(lengths) and usage.output == sum(g.output_tokens for gens in out for g in gens)
    assert usage.calls == 2 and usage.unknown == 0


def test_the_openai_engine_reads_usage(monkeypatch):
    _no_proxy(monkeypatch)

    def behave(number, body):
        n = body.get("n", 1)
        data = {"model": "fake-model", "usage": {"prompt_tokens": 11, "completion_tokens": 7 * n},
                "choices": [{"index": i, "message": {"role": "assistant", "content": f"answer {i}"}, "finish_reason": "stop"}
                            for i in range(n)]}
        return 200, {"Content-Type": "application/json"}, json.dumps(data).encode()

    with FakeServer(behave) as server, metered() as usage:
        engine = engine_for(server.url)
        out = engine.generate([GenerationRequest(_user("a")), GenerationRequest(_user("b"))], GenerationParams(temperature=1.0, n=3))
    assert [[(g.input_tokens, g.output_tokens) for g in gens] for gens in out] == [[(11, 7), (0, 7), (0, 7)]] * 2
    assert (usage.input, usage.output, usage.calls) == (22, 42, 2)


def test_a_server_without_usage_leaves_the_counts_unknown(monkeypatch):
    _no_proxy(monkeypatch)

    with FakeServer(lambda n, body: completion("hi")) as server, metered() as usage:
        out = engine_for(server.url).generate([GenerationRequest(_user("a"))], GenerationParams())
    assert out[0][0].input_tokens is None and usage.shares(1) == [None]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens-world")
    toy.write_benchmark(root)
    return root


def test_runs_and_experiments_show_tokens_and_cost(cli, world, tmp_path):
    args = ["eval", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", "toy", "--index", tmp_path / "idx", "--limit", "6"]
    prices = tmp_path / "prices.yaml"
    prices.write_text("llm: {input: 2.0, output: 10.0}\ncaptioner: {input: 1.0}\n")
    first = json.loads(cli(*args, "--json", "--prices", prices).stdout)
    tokens = first["tokens"]
    caption, rewrite = tokens["by_step"]["caption"], tokens["by_step"]["rewrite"]
    assert caption["spent_input"] > 0 and rewrite["spent_input"] > 0 and rewrite["spent_output"] > 0
    assert tokens["cached_input"] == tokens["cached_output"] == 0
    assert set(tokens["by_step"]) == {"caption", "rewrite"}  # CLIP embedding and search call no generator
    expected = (caption["spent_input"] * 1.0 + rewrite["spent_input"] * 2.0 + rewrite["spent_output"] * 10.0) / 1e6
    assert first["cost"] == {"spent": pytest.approx(expected), "cached": 0.0, "unpriced": []}

    # the same queries again: every output from the cache, its tokens kept and marked as spent before
    again = json.loads(cli(*args, "--json").stdout)["tokens"]
    assert again["spent_input"] == again["spent_output"] == 0
    assert (again["cached_input"], again["cached_output"]) == (tokens["spent_input"], tokens["spent_output"])

    runs = json.loads(cli("runs", "list", "--json", "--limit", "20").stdout)
    old = next(r for r in runs[6:])  # a run of the first eval
    shown = json.loads(cli("runs", "show", old["id"], "--json").stdout)
    step = shown["steps"][1]
    assert step["origin"] == "ran" and step["tokens"]["input"] > 0 and step["tokens"]["output"] > 0
    assert shown["tokens"]["spent_input"] == sum(s["tokens"]["input"] for s in shown["steps"] if s["tokens"])
    text = cli("runs", "show", old["id"], "--prices", prices).stdout
    assert f"{step['tokens']['input']} + {step['tokens']['output']} tokens" in text
    assert f"tokens: {shown['tokens']['spent_input']:,} in + {shown['tokens']['spent_output']:,} out; cost " in text
    table = cli(*args, "--prices", prices).stdout
    assert "from the cache, spent before" in table and "the cached outputs cost" in table


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "expected a mapping {model id:"),
        ("llm: {input: -1}", "model 'llm': 'input' must be a number >= 0, got -1"),
        ("llm: {inputs: 1}", "model 'llm': expected {input: PRICE, output: PRICE} per 1M tokens"),
        ("llm: [", "not valid YAML"),
    ],
)
def test_a_bad_price_table_is_one_line_before_anything_runs(cli, world, tmp_path, engine_calls_counter, content, message):
    prices = tmp_path / "prices.yaml"
    prices.write_text(content)
    res = cli("eval", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", "toy", "--index", tmp_path / "idx",
              "--limit", "2", "--prices", prices)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert engine_calls_counter == [] and not (tmp_path / "idx").exists()


def test_the_vllm_engine_reads_token_ids_of_its_outputs():
    """vLLM's RequestOutput (prompt_token_ids, and token_ids per completion), here without a GPU."""
    from types import SimpleNamespace

    from cirkit.engines.vllm_engine import VllmEngine

    class FakeLLM:
        def chat(self, conversations, sampling, use_tqdm=False):
            return [SimpleNamespace(prompt_token_ids=list(range(4 + i)), outputs=[
                SimpleNamespace(index=j, text=f"answer {j}", finish_reason="stop", token_ids=[7] * (2 + j), logprobs=None)
                for j in range(sampling["n"])]) for i, _ in enumerate(conversations)]

    engine = VllmEngine.__new__(VllmEngine)
    engine.llm, engine._sampling_params, engine.model_id = FakeLLM(), (lambda **kw: kw), "fake"
    with metered() as usage:
        out = engine.generate([GenerationRequest(_user("a")), GenerationRequest(_user("b"))], GenerationParams(temperature=1.0, n=2))
    assert [[(g.input_tokens, g.output_tokens) for g in gens] for gens in out] == [[(4, 2), (0, 3)], [(5, 2), (0, 3)]]
    assert (usage.input, usage.output) == (9, 10)
