"""GSM8K (lm-eval gsm8k_cot conventions), RULER-style retrieval, windows for ppl/KL, and the results store."""

import math

import pytest

from quantstudy.items import ItemResult
from quantstudy.inference.requests import Generation
from quantstudy.evaluate.tasks import gsm8k, ruler
from quantstudy.store import ResultStore, content_key


class ScriptedBackend:
    """Answers each generation request with a function of its prompt."""

    def __init__(self, answer):
        self.answer, self.seen = answer, []

    def generate(self, requests):
        self.seen.extend(requests)
        return [Generation(self.answer(r.prompt), 5) for r in requests]


def test_gsm8k_prompt_is_lm_eval_gsm8k_cot():
    docs = gsm8k.load_docs(3)
    assert len(gsm8k.load_docs()) == 1319 and [d["id"] for d in docs] == [0, 1, 2]
    p = gsm8k.prompt(docs[0])
    assert p.startswith("Q: There are 15 trees in the grove.") and p.endswith(f"Q: {docs[0]['question']}\nA:")
    assert p.count("\n\nQ: ") == 8 and "The answer is 6.\n\nQ: If there are 3 cars" in p
    req = gsm8k.requests(docs)[0]
    assert req.stop == ("Q:", "</s>", "<|im_end|>") and req.max_new_tokens == 256


def test_gsm8k_strict_match_scores_only_the_stated_answer():
    docs = gsm8k.load_docs(4)
    gold = {gsm8k.prompt(d): gsm8k.target(d) for d in docs}
    outputs = {0: "Some steps. The answer is {}.", 1: "Steps. The answer is {},000.", 2: "It is {}", 3: "The answer is 1{}."}
    texts = [outputs[i].format(gold[gsm8k.prompt(d)]) for i, d in enumerate(docs)]
    results = gsm8k.score(docs, [Generation(t, 3) for t in texts])
    assert [r.correct for r in results] == [True, False, False, False]
    assert results[2].prediction == "[invalid]" and results[2].extra["flexible_correct"] is True
    # lm-eval strips commas and a trailing period: "1,234." matches 1234
    doc = dict(docs[0], answer="#### 1234")
    assert gsm8k.score([doc], [Generation("The answer is 1,234.", 1)])[0].correct


def test_ruler_places_the_needle_at_its_depth_and_scores_recall(smollm2):
    _, tokenizer, _ = smollm2
    items = ruler.build_items(tokenizer, max_context=2048, per_cell=1, lengths=(256, 1024, 4096), depths=(0.0, 0.5, 1.0))
    assert {i["length"] for i in items} == {256, 1024}          # 4096 does not fit a 2048 context
    for item in items:
        n = len(tokenizer(item["context"], add_special_tokens=False)["input_ids"])
        assert abs(n - item["length"]) <= 8, (n, item["length"])
        where = item["context"].find(item["value"]) / len(item["context"])
        assert abs(where - item["depth"]) < 0.1
    again = ruler.build_items(tokenizer, max_context=2048, per_cell=1, lengths=(256, 1024), depths=(0.0, 0.5, 1.0))
    assert [i["context"] for i in again] == [i["context"] for i in items]   # seeded: same prompts every run
    backend = ScriptedBackend(lambda p: " 1234567.")
    results = ruler.score(items, backend.generate(ruler.requests(items)))
    values = {i["id"]: i["value"] for i in items}
    assert all(r.correct == (values[r.item_id] == "1234567") for r in results)
    right = ruler.score(items, [Generation(f" {i['value']}.", 3) for i in items])
    assert all(r.correct for r in right)


def test_perplexity_and_kl_items(smollm2):
    from quantstudy.evaluate.perplexity import kl_items, perplexity_items, perplexity_of, token_windows
    from quantstudy.data.text import heldout_texts

    model, tokenizer, _ = smollm2
    windows = token_windows(tokenizer, heldout_texts("wikitext"), seq_len=128, max_windows=4)
    items = perplexity_items(model, windows, batch_size=3)
    assert [r.item_id for r in items] == ["0", "1", "2", "3"] and all(r.tokens == 127 for r in items)
    whole = model(windows).logits[:, :-1].float().log_softmax(-1).gather(-1, windows[:, 1:, None]).sum()
    assert perplexity_of(items) == pytest.approx(math.exp(-whole.item() / (4 * 127)), rel=1e-5)
    same = kl_items(model, model, windows, batch_size=3)
    assert all(r.score == 1.0 and r.extra["kl"] < 1e-6 for r in same)
    shifted = kl_items(model, lambda ids: type("O", (), {"logits": model(ids).logits * 0.5})(), windows)
    assert all(r.extra["kl"] > 0.01 and r.score == 1.0 for r in shifted)   # flatter, same argmax


def test_store_keeps_items_and_results_across_connections(tmp_path):
    path = tmp_path / "study.sqlite"
    items = [ItemResult("arc", str(i), "1", i % 2 == 0, float(i % 2 == 0), -1.5, 3, {"x": i}) for i in range(5)]
    with ResultStore(path) as store:
        store.put_items("m1", "v1", items)
        store.put("k", "bench", {"a": 1}, {"latency": 2.5})
    with ResultStore(path) as store:
        assert store.done_items("m1", "arc", "v1") == {"0", "1", "2", "3", "4"}
        assert store.done_items("m1", "arc", "v2") == set()
        assert store.get_items("m1", "arc", "v1", ["4", "0"]) == [items[4], items[0]]
        assert store.get("k") == {"latency": 2.5} and store.get("missing") is None
    assert content_key(a=1, b=[1, 2]) == content_key(b=[1, 2], a=1) != content_key(a=2, b=[1, 2])


def test_fingerprint_follows_file_bytes(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"12345678")
    (folder / "README.md").write_text("not identity")
    with ResultStore(tmp_path / "s.sqlite") as store:
        first = store.fingerprint(folder)
        (folder / "README.md").write_text("changed")
        assert store.fingerprint(folder) == first
        (folder / "model.safetensors").write_bytes(b"12345679")
        assert store.fingerprint(folder) != first
