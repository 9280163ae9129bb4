"""report on the synthetic study (`synthetic_study`): the HTML page, its tables, results.json."""

import copy
import csv
import html
import io
import json
import re

import numpy as np
import pytest

from quantstudy.compare.verdict import paper_observation
from quantstudy.evaluate import summary
from quantstudy.recommend import BASELINE, recommend
from quantstudy.report import build_report
from synthetic_study import VARIANTS, make_study
from synthetic_study import items as _items


@pytest.fixture(scope="module")
def study():
    return make_study()


# ---- report -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(study, tmp_path_factory):
    return build_report(study, tmp_path_factory.mktemp("report"))


def _section(page, key):
    m = re.search(rf'<section id="{key}"><h2>[^<]*</h2>(.*?)</section>', page, re.S)
    assert m, key
    return m.group(1)


def test_html_has_every_section_and_one_png_per_plot(built, study):
    page = built["report.html"].read_text()
    for key in ("answer", "model", "variants", "accuracy", "similarity", "performance", "recommendation", "preflight"):
        body = _section(page, key)
        assert re.sub(r"<[^>]+>", "", body).strip() and "Not run in this study" not in body, key
    # recovery, similarity, latency-throughput (measured), its predicted curve on the deployment, Pareto
    assert page.count('src="data:image/png;base64,') == 5
    assert "predicted requests/s against latency" in _section(page, "performance")
    assert not re.search(r'(?:src|href)\s*=\s*"(?!data:|#)', page)
    assert "http" not in " ".join(re.findall(r'(?:src|href)="([^"]*)"', page))
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "fp8-block on a6000" in _section(page, "preflight")
    # the similarity section answers the paper's "wording changes, meaning kept", per variant
    sim = re.sub(r"<[^>]+>", " ", _section(page, "similarity"))
    assert "small models change wording but keep meaning" in sim
    for name in VARIANTS:
        verdict = paper_observation(next(v for v in study["compare"]["variants"]
                                         if v["name"] == name)["aggregates"])
        assert html.escape(verdict.text.split(" — ")[0]) in sim, name


def test_the_report_opens_with_the_answer_in_rows_a_laptop_shows_whole(built, study):
    page = built["report.html"].read_text()
    assert page.index('<section id="answer">') < page.index("<section id=")+1   # the first section
    rec = recommend(study)
    answer = _section(page, "answer")
    assert html.escape(rec.explanation) in answer
    rows = list(csv.DictReader(io.StringIO(built["tables/answer.csv"].read_text())))
    assert [r["candidate"] for r in rows] == list(rec.ranking) and rows[0]["chosen"] == "True"
    text_rows = re.findall(r"<tr>(.*?)</tr>", answer)
    cells = [re.sub(r"<[^>]+>", "", c) for r in text_rows for c in re.findall(r"<td>(.*?)</td>", r)]
    header = re.findall(r"<th>(.*?)</th>", answer)
    assert len(header) <= 9 and all(len(html.unescape(c)) <= 28 for c in cells)   # ~110 characters a row


def test_notes_are_grouped_by_kind_not_one_line_per_task_and_variant(study):
    from quantstudy.report.answer import grouped_notes
    from quantstudy.report.tables import accuracy_notes
    from quantstudy.results import StudyResults

    small = copy.deepcopy(study)   # 30 items a task: every comparison gets its "wide" / "few items" notes
    rng = np.random.default_rng(1)
    results = {BASELINE: {}, "a": {}, "b": {}}
    for task in ("arc_challenge", "hellaswag"):
        base = rng.random(30) < 0.5
        results[BASELINE][task] = _items(task, base)
        for name in ("a", "b"):
            results[name][task] = _items(task, np.where(base, rng.random(30) < 0.9, rng.random(30) < 0.1))
    small["evaluate"] = summary.compare(results, ["a", "b"], seed=0)
    notes = accuracy_notes(StudyResults.from_json(small))
    grouped = grouped_notes(notes)
    assert len(grouped) < len(notes)
    kinds = [g.split(" — ")[0] for g in grouped]
    assert len(set(kinds)) == len(kinds)
    for line in notes:   # every task / variant a note named is still named
        where = line.split(": ")[0]
        assert any(where in g for g in grouped)


def test_tables_have_one_row_per_task_and_variant(built, study):
    # the leaderboard aggregates follow the average; the fixture lacks two v1 tasks, and says so
    tasks = list(study["evaluate"]["tasks"]) + ["average", "Open LLM v1 avg (no hellaswag, winogrande)",
                                                 "v2 normalised avg"]
    acc_csv = list(csv.DictReader(io.StringIO(built["tables/accuracy.csv"].read_text())))
    assert [r["task"] for r in acc_csv] == tasks
    acc_md = [line for line in built["tables/accuracy.md"].read_text().splitlines() if line.startswith("| ")]
    assert len(acc_md) == 1 + len(tasks)
    sim = list(csv.DictReader(io.StringIO(built["tables/similarity.csv"].read_text())))
    assert [r["variant"] for r in sim] == list(VARIANTS)
    rec = list(csv.DictReader(io.StringIO(built["tables/recommendation.csv"].read_text())))
    assert [r["candidate"] for r in rec] == [BASELINE, *VARIANTS] and sum(r["chosen"] == "True" for r in rec) == 1
    pred = list(csv.DictReader(io.StringIO(built["tables/performance_predicted.csv"].read_text())))
    assert len(pred) == len(study["predicted"])
    meas = built["tables/performance_measured.md"].read_text().splitlines()
    assert sum(line.startswith("| ") for line in meas) == 1 + len(study["bench"]["measured"])
    mmlu = next(r for r in acc_csv if r["task"] == "mmlu")
    want = study["evaluate"]["tasks"]["mmlu"]["variants"]["w4a16"]["recovery"]
    assert float(mmlu["w4a16_recovery"]) == pytest.approx(want, rel=1e-5)


def test_results_json_is_the_input_plus_the_recommendation(built, study):
    data = json.loads(built["results.json"].read_text())
    assert data["recommendation"]["chosen"] == recommend(study).chosen
    assert data["evaluate"]["average"].keys() == study["evaluate"]["average"].keys()


def test_same_input_gives_identical_bytes(study, built, tmp_path):
    again = build_report(copy.deepcopy(study), tmp_path)
    for name, path in built.items():
        assert again[name].read_bytes() == path.read_bytes(), name


def test_missing_stages_say_not_run(study, tmp_path):
    bare = {k: v for k, v in study.items() if k not in ("compare", "bench", "evaluate")}
    bare.update(compare=None, bench=None)
    page = build_report(bare, tmp_path)["report.html"].read_text()
    for key in ("accuracy", "similarity"):
        assert "Not run in this study" in _section(page, key)
    assert "Not run in this study" in _section(page, "performance")          # nothing measured
    assert "no average recovery measured" in _section(page, "recommendation")


# ---- results.json, typed and versioned ------------------------------------------------------------

def test_results_round_trip_through_the_typed_record(built, study):
    from quantstudy.results import SCHEMA_VERSION, StudyResults, load_results

    typed = StudyResults.from_json(study)            # the unversioned (schema 1) shape of the fixture
    assert StudyResults.from_json(typed.to_json()) == typed
    written = json.loads(built["results.json"].read_text())
    assert written["schema_version"] == SCHEMA_VERSION
    assert load_results(built["results.json"]) == typed
    # every measurement is read under one spelling of each field
    assert {p.fmt for p in typed.measured_points()} == {"bf16", "w4a16"}


@pytest.mark.parametrize("content, message", [
    ({"schema_version": 99, "model": {"ref": "m", "name": "m"}}, "schema version 99, written by a newer quantstudy"),
    ([1, 2, 3], "not a results object"),
    ({"variants": []}, "does not fit StudyResults: model"),
    ("{not json", "is not valid JSON"),
])
def test_report_refuses_what_it_cannot_read_in_one_line(content, message, tmp_path):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    path = tmp_path / "results.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "report")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "report").exists()


def test_report_reads_an_older_unversioned_results_file(built, study, tmp_path):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    old = json.loads(built["results.json"].read_text())
    del old["schema_version"]     # as results.json was written before the schema had a version
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    result = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.html").read_text() == built["report.html"].read_text()
