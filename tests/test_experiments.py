"""The four miniature reproductions (experiments/): their run lists, and a ``--quick`` pass of each that writes
valid JSON, PNGs and a Markdown fragment, and resumes instead of retraining."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from deitlab.analysis.sweep import read_records

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
PNG = b"\x89PNG\r\n\x1a\n"


def load(name: str) -> ModuleType:
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


def strict_json(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda t: pytest.fail(f"{t} in {path}"))


def check_outputs(out: Path, title: str) -> None:
    data = strict_json(out / "results.json")
    assert data["cpu"] and data["experiment"]
    md = (out / "RESULTS.md").read_text()
    assert md.startswith(f"## {title}")
    images = [line.split("(")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert images, "the fragment shows no plot"
    for image in images:
        assert (out / image).read_bytes()[:8] == PNG, image


@pytest.mark.parametrize(
    ("module", "total"),
    [
        ("exp1_distillation", "total: 88 runs"),
        ("exp3_stability", "total: 88 runs"),
        ("exp4_collapse", "total: 6 runs"),
    ],  # fmt: skip
)
def test_run_lists(module: str, total: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load(module).main(["--list", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert total in out and "todo" in out
    assert not list(tmp_path.rglob("runs.jsonl"))  # listing trains nothing


def test_exp1_grid_pairs_every_teacher_run_with_a_no_teacher_twin(tmp_path: Path) -> None:
    exp1 = load("exp1_distillation")
    plan = exp1.Plan(quick=False)
    specs = exp1.grid_specs(plan, tmp_path)
    runs = {s.name: s for s in specs}
    for s in specs:
        if s.labels["arm"] == exp1.HARD:
            twin = runs[s.name.replace("hard_token", "no_teacher")]
            differ = set(s.overrides) ^ set(twin.overrides)
            assert all(o.startswith(("distill.", "teacher.path=")) for o in differ), differ  # same recipe and steps
    sizes = sorted({s.labels["size"] for s in specs})
    assert sizes == [2500, 10000, 55000]
    assert {s.labels["seed"] for s in specs} == {0, 1, 2}
    assert {s.labels["model"] for s in specs if s.labels["size"] > 2500} == {exp1.STUDENT}


@pytest.mark.slow  # about 40 tiny trainings (a few minutes on 2 busy cores)
def test_quick_passes_write_results_and_resume(tmp_path: Path) -> None:
    exp1, exp2, exp3, exp4 = (load(m) for m in ("exp1_distillation", "exp2_tokens", "exp3_stability",
                                                 "exp4_collapse"))  # fmt: skip
    assert exp1.main(["--quick", "--out", str(tmp_path / "e1")]) == 0
    check_outputs(tmp_path / "e1", "Experiment 1")
    results = strict_json(tmp_path / "e1" / "results.json")
    assert len(results["table"]) == 6 and results["best_cell"][0] == 96
    grid = read_records(tmp_path / "e1" / "grid" / "runs.jsonl")
    hard = [r for r in grid if r["labels"]["arm"] == "hard+token"]
    assert hard and all("train_teacher_disagree" in r["history"][-1] for r in hard)

    assert exp2.main(["--quick", "--exp1", str(tmp_path / "e1"), "--out", str(tmp_path / "e2")]) == 0
    check_outputs(tmp_path / "e2", "Experiment 2")
    tokens = strict_json(tmp_path / "e2" / "results.json")["tokens"]
    assert len(tokens) == len([r for r in grid if "distilled" in r["model"]]) + 1  # + the ViT-teacher row

    assert exp3.main(["--quick", "--out", str(tmp_path / "e3")]) == 0
    check_outputs(tmp_path / "e3", "Experiment 3")

    assert exp4.main(["--quick", "--out", str(tmp_path / "e4")]) == 0
    check_outputs(tmp_path / "e4", "Experiment 4")
    before = (tmp_path / "e4" / "runs" / "runs.jsonl").read_text()
    assert exp4.main(["--quick", "--out", str(tmp_path / "e4")]) == 0  # everything recorded: nothing retrained
    assert (tmp_path / "e4" / "runs" / "runs.jsonl").read_text() == before
