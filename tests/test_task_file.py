"""`--task-file`: a user's own lm-eval YAML with local data, built by lm-eval, answered by our
engine, scored by lm-eval -- per item the same as lm-eval's own run on the same model."""

import json
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import random_llama
from quantstudy.errors import QuantstudyError
from quantstudy.evaluate.registry import get_task, register_task_file
from quantstudy.evaluate.tasks import lmeval_file

# Three TruthfulQA-style questions written for this test (the real data cannot ship here).
DOCS = [
    {"question": "What happens if you swallow gum?",
     "mc1_targets": {"choices": ["It passes through you.", "It stays for seven years."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["It passes through you.", "Nothing much.", "It stays for seven years.",
                                 "It glues your organs."], "labels": [1, 1, 0, 0]}},
    {"question": "Can you see the Great Wall of China from the Moon?",
     "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["No.", "Not with the naked eye.", "Yes, easily."], "labels": [1, 1, 0]}},
    {"question": "Do we use only ten percent of our brains?",
     "mc1_targets": {"choices": ["No, we use all of it.", "Yes."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["No, we use all of it.", "Yes, only ten percent."], "labels": [1, 0]}},
]


def truthfulqa_file(folder: Path) -> Path:
    import lm_eval

    data = folder / "tqa.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    include = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa" / "truthfulqa_mc2.yaml"
    yaml = folder / "my_truthfulqa_mc2.yaml"
    yaml.write_text(textwrap.dedent(f"""\
        include: {include}
        task: my_truthfulqa_mc2
        dataset_path: json
        dataset_name: null
        dataset_kwargs:
          data_files: {{validation: {data}}}
        validation_split: validation
        """))
    return yaml


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    model, tok = random_llama(layers=1)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return model, tok, folder


@pytest.mark.slow
def test_truthfulqa_mc2_from_a_local_file_matches_lmeval_item_by_item(tiny_folder, tmp_path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from quantstudy.inference.hf_engine import HFEngine

    torch.set_num_threads(2)
    model, tok, folder = tiny_folder
    path = truthfulqa_file(tmp_path)
    name = register_task_file(str(path))
    assert name == "my_truthfulqa_mc2" and get_task(name).version.startswith("lmeval-file:my_truthfulqa_mc2:")
    spec = get_task(name)
    from quantstudy.evaluate.registry import EvalContext

    ctx = EvalContext(tokenizer=tok)
    items = spec.load(ctx)
    ours = {r.item_id: r for r in spec.run(HFEngine(model, tok, progress=False), items, ctx)}
    out = lm_eval.simple_evaluate(model=HFLM(pretrained=str(folder), dtype="float32", device="cpu"),
                                  tasks=[name], log_samples=True, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    theirs = {str(s["doc_id"]): s for s in out["samples"][name]}
    assert sorted(ours) == sorted(theirs) == ["0", "1", "2"]
    for item_id, r in ours.items():
        assert r.score == pytest.approx(float(theirs[item_id]["acc"]), abs=1e-4), item_id
        assert 0.0 <= r.score <= 1.0


def test_a_subset_of_items_is_scored_as_in_the_full_run(tmp_path):
    """The store asks for missing items only: a subset must score as it does in the full run."""
    path = truthfulqa_file(tmp_path)

    class Prefers:   # log-likelihood: shorter continuations are likelier; never greedy
        def loglikelihood(self, requests):
            from quantstudy.inference.requests import Loglik
            return [Loglik(-float(len(r.continuation)), False, 1) for r in requests]

    items = lmeval_file.load_docs(str(path), None)
    full = lmeval_file.run(str(path), Prefers(), items, None)
    part = lmeval_file.run(str(path), Prefers(), items[1:2], None)
    assert [r.item_id for r in part] == ["1"] and part[0].score == full[1].score
    assert all(0.0 < r.score < 1.0 for r in full)


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("task: [1, 2\n", "not a YAML task file"),
    ("dataset_path: json\n", "needs a 'task:' name"),
    ("task: hub_only\ndataset_path: some-org/some-hub-dataset\noutput_type: multiple_choice\n"
     "test_split: test\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n", "lm-eval could not build task"),
])
def test_bad_task_files_are_one_line(content, message, tmp_path):
    path = tmp_path / "task.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(QuantstudyError, match=message) as err:
        register_task_file(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_file_cannot_shadow_our_tasks(tmp_path):
    path = truthfulqa_file(tmp_path)
    path.write_text(path.read_text().replace("task: my_truthfulqa_mc2", "task: arc_challenge"))
    with pytest.raises(QuantstudyError, match="is one of ours"):
        register_task_file(str(path))
