"""Experiment 1: when does distillation help? DeiT's thesis in miniature (Touvron et al., 2021).

A ResNet-9 teacher (``resnet9_w16``, the demo's) and DeiT-style students are trained on the same stratified subsets
of Fashion-MNIST (2.5k, 10k and all 55k training images; 28 px) and tested on the full 10k test set. Grid:
training-set size × augmentation (none; crop + flip; DeiT's RandAugment + Mixup/CutMix + random erasing) × {no
teacher, hard distillation with a distillation token}, for the patchify student ``deit_micro_distilled_patch4_28``
(4×4 patches) and, at the smallest size, its ViT_C twin ``vit_c_micro_distilled_28``. Three seeds per cell; every
cell trains for about the same number of steps (~400 of 128 images), so the sizes differ in data, not compute.

The no-teacher side is the *same distilled architecture* trained without a teacher (both heads learn the labels):
same parameters, tokens, FLOPs, recipe and steps, so the difference measures the teacher's labels and nothing else.
The plain single-token twin (``deit_micro_patch4_28``) appears in the full DeiT table at the cell where distillation
helps most: none / classic soft KD (τ = 3, λ = 0.1, batchmean) / classic hard KD (plain twin) / hard + token (class
head, distillation head, fused), plus hard + token from a ViT teacher (``vit_c_micro_28``: all mixing by attention
after a small conv patch embedding; the most accurate transformer we can train in the budget, on the same images
for twice the students' epochs) instead of the CNN.

Per cell: fused, class-head and distillation-head test accuracy, agreement with the teacher (each head), and
``train_teacher_disagree``: the share of augmented training views whose teacher label differs from their (mixed)
true label, last epoch. The no-teacher baselines' loss curves are checked for flattening (loss drop and validation
accuracy gain over the last quarter of training) and plotted; ``--long`` adds 3× longer runs at the smallest size
(crop + flip and DeiT augmentation, both arms, one seed) to see what the fixed budget leaves on the table.

    python experiments/exp1_distillation.py [--out experiments/results/exp1] [--quick] [--list] [--long] [--seeds 0,1,2]

Expected wall time on a quiet 2-core machine: about 2 h 40 min (3 teachers, 72 grid runs, 1 ViT teacher, 12 table
runs); ``--long`` adds about 20 minutes. See docs/RESULTS.md.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import _common as c
from deitlab.analysis import RunSpec
from deitlab.analysis.agreement import head_predictions, rate
from deitlab.analysis.maps import eval_mode
from deitlab.analysis.plots import plot_curves, plot_metric_vs
from deitlab.analysis.report import load_subject
from deitlab.distill.teacher import FrozenTeacher, load_teacher
from deitlab.engine import train

NAME = "exp1"
STUDENT, PLAIN, VITC, VIT_TEACHER = (
    "deit_micro_distilled_patch4_28", "deit_micro_patch4_28", "vit_c_micro_distilled_28", "vit_c_micro_28"
)  # fmt: skip
FULL = 55000  # the whole training split: Fashion-MNIST's 60k minus the 5k held out for validation
# Epochs per training-set size: every cell trains for about the same number of steps (50-55k images seen, ~400
# steps of 128), so that the sizes differ in data, not in compute. Three sizes, log-spaced, with three seeds each,
# is what fits the 3-hour budget on 2 cores (one run of 50k images takes about 1.5 minutes).
EPOCHS = {2500: 20, 10000: 5, FULL: 1}
TEACHER_EPOCHS = {2500: 30, 10000: 10, FULL: 3}  # the demo teacher: 3 epochs of the full set
QUICK_EPOCHS = {96: 1}
SEEDS = (0, 1, 2)
AUGS: dict[str, list[str]] = {
    "none": ["aug.crop_scale=null", "aug.hflip=0", "aug.rand_augment=null", "aug.re_prob=0", "aug.mixup=0",
             "aug.cutmix=0"],
    "crop+flip": ["aug.crop_scale=[0.08,1.0]", "aug.hflip=0.5", "aug.rand_augment=null", "aug.re_prob=0",
                  "aug.mixup=0", "aug.cutmix=0"],
    "deit": ["aug.crop_scale=[0.08,1.0]", "aug.hflip=0.5", "aug.rand_augment=rand-m9-mstd0.5-inc1",
             "aug.re_prob=0.25", "aug.mixup=0.8", "aug.cutmix=1.0"],
}  # fmt: skip
VAL_IMAGES = 1000  # the validation images every run is evaluated on (held out of the training split)
NO, HARD = "no teacher", "hard+token"
ARMS = {NO: ["distill.type=none"], HARD: ["distill.type=hard", "distill.alpha=0.5"]}
STUDENT_RECIPE = [  # DeiT's recipe where it fits a 2-core budget: AdamW, cosine, label smoothing, stochastic depth
    "data.batch_size=128", "data.limit_train_mode=stratified", f"data.limit_eval={VAL_IMAGES}",
    "data.test_at_end=false", "optim.name=adamw",
    "optim.lr=2e-3", "optim.scale_lr=false", "optim.weight_decay=0.05", "optim.warmup_epochs=0.5", "optim.min_lr=1e-5",
    "aug.label_smoothing=0.1", "aug.eval_crop_pct=1", "model.drop_path_rate=0.1", "train.precision=bf16",
]  # fmt: skip
TEACHER_RECIPE = [  # the demo teacher's recipe (src/deitlab/configs/demo_teacher.yaml), at 28 px
    "model.name=resnet9_w16", "model.channels_last=true", "model.drop_path_rate=0", "data.batch_size=64",
    "data.limit_train_mode=stratified", "data.limit_eval=2000", "aug.crop_scale=null", "aug.hflip=0.5",
    "aug.rand_augment=null", "aug.re_prob=0", "aug.mixup=0", "aug.cutmix=0", "aug.label_smoothing=0.1",
    "aug.eval_crop_pct=1", "optim.name=sgd", "optim.lr=0.05", "optim.scale_lr=false", "optim.weight_decay=5e-4",
    "optim.warmup_epochs=0.6", "optim.warmup_lr=0.005", "optim.min_lr=0",
]  # fmt: skip
QUICK_STUDENT = ["model.kwargs.depth=1", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2",
                 "train.precision=fp32", "data.batch_size=32", "data.limit_eval=64"]  # fmt: skip
QUICK_TEACHER = ["data.batch_size=32", "data.limit_eval=64"]
TABLE_ROWS: dict[str, tuple[str, str, list[str], str | None]] = {  # label -> (slug, model, overrides, teacher)
    "none, plain twin": ("none_plain", PLAIN, ["distill.type=none"], None),
    "soft KD τ=3 λ=0.1, plain twin": ("soft_plain", PLAIN, ["distill.type=soft", "distill.alpha=0.1", "distill.tau=3",
                                                            "distill.reduction=batchmean"], "cnn"),
    "hard KD, plain twin": ("hard_plain", PLAIN, ["distill.type=hard", "distill.alpha=0.5"], "cnn"),
    "hard+token, ViT teacher": ("hard_token_vit", STUDENT, ["distill.type=hard", "distill.alpha=0.5"], "vit"),
}  # fmt: skip


class Plan:
    """Sizes, epochs and seeds of a real run or of a ``--quick`` smoke run (synthetic data, seconds)."""

    def __init__(self, quick: bool, seeds: Sequence[int] | None = None, sizes: Sequence[int] | None = None) -> None:
        self.quick = quick
        self.epochs = QUICK_EPOCHS if quick else EPOCHS
        self.teacher_epochs = QUICK_EPOCHS if quick else TEACHER_EPOCHS
        unknown = sorted(set(sizes or ()) - set(self.epochs))
        if unknown:
            raise ValueError(f"--sizes {unknown} not among the study's sizes {sorted(self.epochs)}")
        self.sizes = sorted(sizes or self.epochs)
        self.seeds = tuple(seeds) if seeds else (0,) if quick else SEEDS
        self.augs = {k: v for k, v in AUGS.items() if k != "crop+flip"} if quick else AUGS

    def student(self, size: int, epochs: int | None = None) -> list[str]:
        epochs = epochs or self.epochs[size]
        return [f"data.limit_train={size}", f"train.epochs={epochs}", f"train.eval_every={max(1, epochs // 6)}"]


def slug(text: str) -> str:
    return text.replace("+", "_").replace(" ", "_")


def teacher_path(out: Path, kind: str, size: int) -> Path:
    folder = "teachers" if kind == "cnn" else "vit_teacher"
    return out / folder / "runs" / f"{kind},n={size}" / "model.safetensors"


# ---- the run lists -----------------------------------------------------------------------------------------------
def teacher_specs(plan: Plan) -> list[RunSpec]:
    return [
        RunSpec(
            f"cnn,n={n}",
            (
                *TEACHER_RECIPE,
                f"data.limit_train={n}",
                f"train.epochs={plan.teacher_epochs[n]}",
                *(QUICK_TEACHER if plan.quick else []),
            ),
            {"size": n, "teacher": "cnn"},
        )  # fmt: skip
        for n in plan.sizes
    ]


def grid_specs(plan: Plan, out: Path) -> list[RunSpec]:
    """Size × augmentation × arm × seed for the patchify student, and the ViT_C twin at the smallest size."""
    specs = []
    for model, n in [(STUDENT, n) for n in plan.sizes] + [(VITC, plan.sizes[0])]:
        for (aug, aug_ovr), (arm, arm_ovr), seed in itertools.product(plan.augs.items(), ARMS.items(), plan.seeds):
            teacher = [f"teacher.path={teacher_path(out, 'cnn', n)}"] if arm == HARD else []
            overrides = (f"model.name={model}", *plan.student(n), *aug_ovr, *arm_ovr, *teacher, f"train.seed={seed}")
            labels = {"model": model, "size": n, "aug": aug, "arm": arm, "seed": seed, "teacher": "cnn"}
            specs.append(RunSpec(f"{model},n={n},aug={slug(aug)},{slug(arm)},seed={seed}", overrides, labels))
    return specs


def table_specs(plan: Plan, out: Path, size: int, aug: str) -> tuple[list[RunSpec], list[RunSpec]]:
    """The ViT teacher at the chosen cell (crop + flip, twice the students' epochs), then the table's extra rows."""
    vit = RunSpec(f"vit,n={size}", (f"model.name={VIT_TEACHER}", *plan.student(size, 2 * plan.epochs[size]),
                                    *AUGS["crop+flip"]), {"size": size, "teacher": "vit"})  # fmt: skip
    rows = []
    for label, (name, model, ovr, teacher) in TABLE_ROWS.items():
        for seed in plan.seeds:
            path = [f"teacher.path={teacher_path(out, teacher, size)}"] if teacher else []
            overrides = (f"model.name={model}", *plan.student(size), *AUGS[aug], *ovr, *path, f"train.seed={seed}")
            labels = {"model": model, "size": size, "aug": aug, "arm": label, "seed": seed, "teacher": teacher}
            rows.append(RunSpec(f"{name},n={size},aug={slug(aug)},seed={seed}", overrides, labels))
    return [vit], rows


# ---- measurements ------------------------------------------------------------------------------------------------
class Measurer:
    """Test-set accuracy of each head and its agreement with a teacher, one forward pass per model.

    The images are those the engine evaluates with (the full test split, eval transform); each teacher's test
    predictions are computed once.
    """

    def __init__(self, out: Path, batch_size: int = 500, device: str = "cpu") -> None:
        self.out, self.batch_size, self.device = out, batch_size, device
        self.teachers: dict[Path, torch.Tensor] = {}
        self.cache = out / "measure.json"

    def predictions(self, model: Any, images: torch.Tensor) -> dict[str, torch.Tensor]:
        preds: dict[str, list[torch.Tensor]] = {}
        device = next(model.parameters()).device
        with torch.no_grad():
            for x in images.split(self.batch_size):
                for head, p in head_predictions(model(x.to(device))).items():
                    preds.setdefault(head, []).append(p.cpu())
        return {h: torch.cat(p) for h, p in preds.items()}

    def teacher(self, path: Path, images: torch.Tensor, num_classes: int) -> torch.Tensor:
        if path not in self.teachers:
            net = load_teacher(None, path, num_classes=num_classes, in_chans=int(images.shape[1]),
                               img_size=int(images.shape[-1]))  # fmt: skip
            self.teachers[path] = self.predictions(FrozenTeacher(net.to(self.device)), images)["cls"]
        return self.teachers[path]

    def compute(self, run_dir: str | Path, teacher: Path) -> dict[str, Any]:
        """The run's final weights on the full test split: each head's accuracy and agreement with ``teacher``."""
        s = load_subject(run_dir, weights="final", split="test", num_images=None, device=self.device)
        with eval_mode(s.model):
            preds = self.predictions(s.model, s.images)
        t = self.teacher(teacher, s.images, len(s.classes))
        return {
            "acc": {h: rate(p, s.labels) for h, p in preds.items()},
            "teacher_agreement": {h: rate(p, t) for h, p in preds.items()},
            "teacher_acc": rate(t, s.labels), "images": len(s.labels),
        }  # fmt: skip

    def run(self, record: Mapping[str, Any], teacher: Path) -> dict[str, Any]:
        """Measured in the run's own process right after training (``train_and_measure``), else now (cached)."""
        if "measure" in record.get("final", {}):
            return record["final"]["measure"]
        return c.cached(self.cache, record["name"], lambda: self.compute(record["run_dir"], teacher))


def val_measure(record: Mapping[str, Any]) -> dict[str, Any]:
    """The engine's own last evaluation of a run, in :class:`Measurer`'s form: the validation split (VAL_IMAGES
    held-out training images), each head's accuracy, the fused (or only) head's agreement with the run's teacher.

    The report's cells use these for every run, so that runs whose weights stayed on another machine (the GPU share
    of this study) and runs trained here are compared on the same images; a no-teacher run has no agreement.
    """
    f, t = record.get("final", {}), record.get("teacher", {})
    heads = {h: f[f"acc_{h}"] for h in ("fused", "cls", "dist") if f"acc_{h}" in f} or {"cls": f.get("acc")}
    agree = {"fused" if "acc_fused" in f else "cls": f["agreement"]} if "agreement" in f else {}
    return {"acc": heads, "teacher_agreement": agree, "teacher_acc": t.get("teacher_acc"), "images": VAL_IMAGES,
            "split": "val"}  # fmt: skip


def train_and_measure(cfg: Any) -> Any:
    """``train``, then the test-split measurement of :class:`Measurer`, kept in the run's record (``final``): the
    record then carries everything the report needs, so a study run elsewhere (``--jobs`` on a GPU machine) can be
    finished and reported without its weights. The teacher is the run's own, else the CNN of its training-set size.
    """
    result = train(cfg)
    run_dir = Path(cfg.train.output_dir)
    out = run_dir.parents[2]  # <out>/<phase>/runs/<name>
    teacher = Path(cfg.teacher.path) if cfg.teacher.path else teacher_path(out, "cnn", int(cfg.data.limit_train))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result.final["measure"] = Measurer(out, device=device).compute(run_dir, teacher)
    return result


def measured_all(
    out: Path, records: Sequence[Mapping[str, Any]], teachers: Mapping[int, Path], measured: dict[str, Any]
) -> dict[str, Any]:
    """``measured`` plus the records not in it yet."""
    measured.update(measure_all(out, [r for r in records if r["name"] not in measured], teachers))
    return measured


def measure_all(out: Path, records: Sequence[Mapping[str, Any]], teachers: Mapping[int, Path]) -> dict[str, Any]:
    """Every record's validation measurement (:func:`val_measure`); the full-test-split measurement of runs trained
    with ``train_and_measure`` stays in their records (results.json) as a supplement."""
    return {r["name"]: val_measure(r) for r in records}


# ---- statistics --------------------------------------------------------------------------------------------------
def flatness(history: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Loss drop (%) and validation-accuracy gain (points) over the last quarter of training."""
    if len(history) < 2:
        return {"loss_drop": None, "acc_gain": None}
    q = history[int(0.75 * (len(history) - 1))]
    loss_drop = 100.0 * (q["train_loss"] - history[-1]["train_loss"]) / q["train_loss"]
    accs = [h for h in history if h.get("acc") is not None]
    quarter = [h for h in accs if h["epoch"] <= q["epoch"]]
    acc_gain = accs[-1]["acc"] - quarter[-1]["acc"] if quarter and accs else None
    return {"loss_drop": loss_drop, "acc_gain": acc_gain}


def cell_stats(runs: Sequence[Mapping[str, Any]], measured: Mapping[str, Any]) -> dict[str, Any]:
    ms = [measured[r["name"]] for r in runs]
    last = [r["history"][-1] if r["history"] else {} for r in runs]
    flat = [flatness(r["history"]) for r in runs]
    return {
        **{h: c.mean_std(m["acc"].get(h) for m in ms) for h in ("fused", "cls", "dist")},
        "agree": c.mean_std(m["teacher_agreement"].get("fused", m["teacher_agreement"].get("cls")) for m in ms),
        "disagree": c.mean_std(h.get("train_teacher_disagree") for h in last),
        "loss_drop": c.mean_std(f["loss_drop"] for f in flat), "acc_gain": c.mean_std(f["acc_gain"] for f in flat),
        "teacher_acc": ms[0]["teacher_acc"] if ms else None, "seeds": len(runs),
    }  # fmt: skip


def cells(records: Sequence[Mapping[str, Any]], measured: Mapping[str, Any], model: str) -> dict[tuple, dict]:
    """``{(size, aug): {arm: cell_stats}}`` for one student model."""
    groups: dict[tuple, list] = {}
    for r in records:
        lab = r["labels"]
        if lab["model"] == model:
            groups.setdefault((lab["size"], lab["aug"], lab["arm"]), []).append(r)
    out: dict[tuple, dict] = {}
    for (n, aug, arm), runs in groups.items():
        out.setdefault((n, aug), {})[arm] = cell_stats(runs, measured)
    return out


def best_cell(table: Mapping[tuple, Mapping[str, Any]]) -> tuple[int, str]:
    """Where hard + token beats no teacher by the most (fused accuracy, mean over seeds)."""
    gains = {k: v[HARD]["fused"]["mean"] - v[NO]["fused"]["mean"] for k, v in table.items() if HARD in v and NO in v}
    return max(gains, key=gains.get)


# ---- report ------------------------------------------------------------------------------------------------------
def acc_vs_size(out: Path, table: Mapping[tuple, Mapping[str, Any]]) -> Path:
    series: dict[str, list[dict[str, Any]]] = {}
    for (n, aug), arms in sorted(table.items()):
        for arm, s in arms.items():
            if s["fused"]:
                series.setdefault(f"{aug}, {arm}", []).append({"size": n, **s["fused"]})
    return plot_metric_vs(series, "size", out / "acc_vs_size.png", xlabel="training images (stratified subset)",
                          ylabel="val top-1, fused heads (%)", logx=True,
                          title="Fashion-MNIST, deit_micro_distilled_patch4_28")  # fmt: skip


def baseline_curves(out: Path, records: Sequence[Mapping[str, Any]], plan: Plan) -> list[Path]:
    """Per size: the no-teacher baselines' (seed 0) training loss and validation accuracy per epoch, per aug."""
    files = []
    for n in plan.sizes:
        runs = {r["labels"]["aug"]: r["history"] for r in records if r["labels"]["model"] == STUDENT
                and r["labels"]["size"] == n and r["labels"]["arm"] == NO and r["labels"]["seed"] == 0}  # fmt: skip
        if runs:
            files.append(plot_curves(runs, out / f"baseline_curves_n={n}.png", title=f"no teacher, {n} images"))
    return files


def grid_markdown(table: Mapping[tuple, Mapping[str, Any]]) -> str:
    rows = []
    for (n, aug), arms in sorted(table.items()):
        no, hard = arms.get(NO), arms.get(HARD)
        gain = hard["fused"]["mean"] - no["fused"]["mean"] if no and hard else None
        for arm, s in arms.items():
            rows.append([n, aug, arm, c.pm(s["fused"]), c.pm(s["cls"]), c.pm(s["dist"]), c.pm(s["agree"]),
                         c.pm(s["disagree"], 1), c.pm(s["loss_drop"], 1), c.pm(s["acc_gain"], 2),
                         f"{gain:+.2f}" if gain is not None and arm == HARD else ""])  # fmt: skip
    header = ["images", "aug", "arm", "fused %", "cls head %", "dist head %", "agree w/ teacher %",
              "views teacher ≠ label %", "loss drop, last ¼ %", "val acc gain, last ¼", "gain (fused)"]  # fmt: skip
    return c.md_table(header, rows)


def table_markdown(rows: Mapping[str, Mapping[str, Any]], teachers: Mapping[str, float | None]) -> str:
    body = [[label, s["seeds"], c.pm(s["cls"]) if s["dist"] else "", c.pm(s["dist"]) if s["dist"] else "",
             c.pm(s["fused"] or s["cls"]), c.pm(s["agree"])] for label, s in rows.items()]  # fmt: skip
    body += [[f"teacher: {k}", 1, "", "", f"{v:.2f}" if v is not None else "–", ""] for k, v in teachers.items()]
    return c.md_table(["method", "seeds", "class head %", "dist head %", "fused / only head %", "agree w/ teacher %"],
                      body)  # fmt: skip


def markdown(res: Mapping[str, Any], files: Sequence[Path], quick: bool) -> str:
    n, aug = res["best_cell"]
    lines = [
        "## Experiment 1: when does distillation help? (DeiT, in miniature)",
        "",
        "Command: `python experiments/exp1_distillation.py`" + (" (`--quick`: a smoke run)" if quick else ""),
        f"Machine: {c.cpu_model()}; wall time of the runs: {res['wall_minutes']:.0f} min"
        + (
            f"; **partial: {res['finished_runs']} of {res['planned_runs']} runs finished**"
            if res["finished_runs"] < res["planned_runs"]
            else ""
        )
        + ".",
        "",
        f"Accuracies are on the validation split ({VAL_IMAGES} held-out training images), as the engine measured "
        "them at the end of each run (see below for why not the test set).",
        "",
        "CNN teachers (resnet9_w16, val top-1 %): "
        + ", ".join(f"{k} images {v:.2f}" for k, v in res["teachers"].items() if v is not None)
        + ".",
        "",
        "Patchify student (deit_micro_distilled_patch4_28), mean ± std over seeds; no teacher = the same distilled "
        "model with both heads on the labels:",
        "",
        grid_markdown(res["grid_cells"][STUDENT]),
        "",
        f"ViT_C twin ({VITC}) at {res['sizes'][0]} images:",
        "",
        grid_markdown(res["grid_cells"][VITC]),
        "",
        f"Full DeiT table at the cell where distillation helps most ({n} images, {aug} augmentation):",
        "",
        table_markdown(res["table"], res["table_teachers"]),
        "",
        *(
            ["Training-length check (`--long`; seed 0 only, smallest size):", "", res["length"], ""]
            if res.get("length")
            else []
        ),
        "Paper (DeiT-B, ImageNet, Table 3): none 81.8; soft 81.8; hard 83.0; hard + token: class 83.0, dist 83.1, "
        "fused 83.4. Table 2: a convnet teacher helps more than a transformer teacher of similar accuracy.",
        "",
        *[f"![{f.stem}]({f.name})" for f in files],
    ]
    return "\n".join(lines)


def length_specs(plan: Plan, out: Path) -> list[RunSpec]:
    """``--long``: the smallest size with crop + flip and DeiT augmentation, both arms, seed 0, 3× the epochs."""
    n = plan.sizes[0]
    specs = []
    for aug, arm in itertools.product(["crop+flip", "deit"], ARMS):
        if aug not in plan.augs:
            continue
        teacher = [f"teacher.path={teacher_path(out, 'cnn', n)}"] if arm == HARD else []
        overrides = (f"model.name={STUDENT}", *plan.student(n, 3 * plan.epochs[n]), *AUGS[aug], *ARMS[arm], *teacher,
                     "train.seed=0")  # fmt: skip
        labels = {"model": STUDENT, "size": n, "aug": aug, "arm": arm, "seed": 0, "teacher": "cnn", "length": 3}
        specs.append(RunSpec(f"long3x,n={n},aug={slug(aug)},{slug(arm)},seed=0", overrides, labels))
    return specs


def length_markdown(grid: Sequence[Mapping[str, Any]], long: Sequence[Mapping[str, Any]], measured: Mapping) -> str:
    rows = []
    for r in long:
        lab = r["labels"]
        base = next(g for g in grid if g["labels"] | {"length": 3} == lab)
        short, longer = measured[base["name"]]["acc"], measured[r["name"]]["acc"]
        key = "fused" if "fused" in short else "cls"
        rows.append([lab["aug"], lab["arm"], f"{short[key]:.2f}", f"{longer[key]:.2f}",
                     f"{flatness(r['history'])['loss_drop']:.1f}"])  # fmt: skip
    return c.md_table(["aug", "arm", "fused %, 1× epochs", "fused %, 3× epochs", "loss drop last ¼ (3×) %"], rows)


def table_rows(here: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], measured: Mapping) -> dict[str, Any]:
    def row(label: str) -> dict[str, Any]:
        return cell_stats([r for r in rows if r["labels"]["arm"] == label], measured)

    return {
        "none, distilled arch (both heads on labels)": here[NO],
        **{label: row(label) for label in list(TABLE_ROWS)[:3]},
        "hard+token, CNN teacher": here[HARD],
        "hard+token, ViT teacher": row("hard+token, ViT teacher"),
    }


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__, NAME)
    p.add_argument("--seeds", type=c.int_list, default=None, help="training seeds (default 0,1,2; extend later)")
    p.add_argument("--long", action="store_true", help="also train 3x longer runs at the smallest size (+20 min)")
    p.add_argument(
        "--sizes",
        type=c.int_list,
        default=None,
        help=f"training-set sizes, a subset of {','.join(map(str, sorted(EPOCHS)))} (the rest can follow)",
    )
    p.add_argument("--report", action="store_true", help="train nothing: report the runs finished so far")
    args = p.parse_args(argv)
    out = c.setup(args, NAME)
    try:
        plan = Plan(args.quick, args.seeds, args.sizes)
    except ValueError as e:
        p.error(str(e))
    data = c.data_overrides(args)
    students = [*data, *STUDENT_RECIPE, *(QUICK_STUDENT if args.quick else [])]
    teachers = c.run_phase(teacher_specs(plan), out / "teachers", data, listing=args.list, jobs=args.jobs,
                           train=not args.report)  # fmt: skip
    measured_phase = {"metric": "acc", "jobs": args.jobs, "train_fn": train_and_measure, "train": not args.report}
    # The patchify student's grid, then the table at its best cell, then the ViT_C twin (same folder as the grid).
    student_specs = [s for s in grid_specs(plan, out) if s.labels["model"] == STUDENT]
    twin_specs = [s for s in grid_specs(plan, out) if s.labels["model"] != STUDENT]
    grid = c.run_phase(student_specs, out / "grid", students, listing=args.list, **measured_phase)
    long_specs = length_specs(plan, out) if args.long else []
    long = c.run_phase(long_specs, out / "length", students, listing=args.list, **measured_phase)
    if args.list:
        c.run_phase(twin_specs, out / "grid", students, listing=True)
        print(f"table: 1 ViT teacher + {len(TABLE_ROWS) * len(plan.seeds)} runs at the cell chosen after the grid")
        total = len(teacher_specs(plan)) + len(grid_specs(plan, out)) + len(long_specs) + 1
        print(f"total: {total + len(TABLE_ROWS) * len(plan.seeds)} runs")
        return 0
    cnn = {n: teacher_path(out, "cnn", n) for n in plan.sizes}
    measured = measure_all(out, [*grid, *long], cnn)
    grid_cells = {m: cells(grid, measured, m) for m in (STUDENT, VITC)}
    n, aug = best_cell(grid_cells[STUDENT])
    vit_spec, row_specs = table_specs(plan, out, n, aug)
    vit = c.run_phase(vit_spec, out / "vit_teacher", students, metric="acc", jobs=args.jobs, train=not args.report)
    rows = c.run_phase(row_specs, out / "table", students, **measured_phase)
    measured.update(measure_all(out, [r for r in rows if r["labels"]["teacher"] != "vit"], cnn))
    measured.update(measure_all(out, [r for r in rows if r["labels"]["teacher"] == "vit"],
                                {n: teacher_path(out, "vit", n)}))  # fmt: skip
    grid = [*grid, *c.run_phase(twin_specs, out / "grid", students, **measured_phase)]
    grid_cells[VITC] = cells(grid, measured_all(out, grid, cnn, measured), VITC)
    here = grid_cells[STUDENT][(n, aug)]
    table = table_rows(here, rows, measured)
    runs = [*teachers, *grid, *long, *vit, *rows]
    planned = len(teacher_specs(plan)) + len(grid_specs(plan, out)) + len(long_specs) + 1 + len(row_specs)
    teacher_acc = {k: cell[HARD]["teacher_acc"] for (k, _), cell in sorted(grid_cells[STUDENT].items()) if HARD in cell}
    res = {
        "best_cell": [n, aug], "finished_runs": len(runs), "planned_runs": planned, "sizes": plan.sizes,
        "teachers": teacher_acc,
        "table_teachers": {"CNN (resnet9_w16)": here[HARD]["teacher_acc"],
                           f"ViT ({VIT_TEACHER})": table["hard+token, ViT teacher"]["teacher_acc"]},
        "grid_cells": grid_cells, "table": table, "measured": measured, "wall_minutes": c.wall_time(runs) / 60,
        "length": length_markdown(grid, long, measured) if long else None,
    }  # fmt: skip
    files = [acc_vs_size(out, grid_cells[STUDENT]), *baseline_curves(out, grid, plan)]
    json_res = {**res, "grid_cells": {m: {f"{k[0]},{k[1]}": v for k, v in g.items()} for m, g in grid_cells.items()},
                "runs": runs}  # fmt: skip
    c.write_outputs(out, NAME, json_res, markdown(res, files, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
