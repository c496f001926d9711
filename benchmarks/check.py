"""Speed regression guard (a few seconds, for CI): deitlab's training step against a matmul of the same FLOPs.

The step is the demo student's (``vit_c_micro_distilled_32``, batch 64, fp32, one thread: forward + backward +
AdamW through deitlab's DistillationLoss and optimizer); the matmul is square, sized to the step's FLOPs (counted by
``torch.utils.flop_counter``), and timed in the same rounds, interleaved. Their ratio (step time / matmul time) says
how far the step is from the machine's matmul speed, whatever the machine and whatever else it is running; it
is compared with the ratio recorded in ``benchmarks/results/check.json``, and a ratio twice the recorded one fails.

    PYTHONPATH=src python benchmarks/check.py            # exit 1 on a 2x regression
    PYTHONPATH=src python benchmarks/check.py --record   # measure and record the reference ratio
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402
import deitlab  # noqa: E402
from deitlab.distill import DistillationLoss  # noqa: E402
from deitlab.engine.optim import build_optimizer  # noqa: E402

RECORD = Path(__file__).parent / "results" / "check.json"
MODEL, BATCH = "vit_c_micro_distilled_32", 64
TOLERANCE = 2.0  # fail when the ratio is this many times the recorded one


def measure(rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = deitlab.create_model(MODEL).train()
    x, y = torch.randn(BATCH, 1, 32, 32), torch.randint(0, 10, (BATCH,))
    criterion = DistillationLoss(F.cross_entropy, None, distillation_type="none", alpha=0.5, tau=1.0)
    opt = build_optimizer(model, name="adamw", lr=1e-4, weight_decay=0.05)

    def step() -> None:
        parts = criterion(x, model(x), y)
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        opt.step()

    flops = C.count_flops(lambda: criterion(x, model(x), y).total.backward())
    n = round((flops / 2) ** (1 / 3))
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = C.interleaved({"step": step, "matmul": lambda: a @ b}, torch.device("cpu"), rounds=rounds)
    ratios = [s / m for s, m in zip(times["step"], times["matmul"], strict=True)]
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "gflop": flops / 1e9, "matmul_n": n, "step_ms": 1000 * statistics.median(times["step"])}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="write the measured ratio as the new reference")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--file", type=Path, default=RECORD)
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the least sensitive to other processes on the machine
    try:
        got = measure(args.rounds)
    finally:
        torch.set_num_threads(threads)
    meta = C.metadata(torch.device("cpu"), model=MODEL, batch=BATCH, precision="fp32")
    if args.record or not args.file.exists():
        args.file.parent.mkdir(parents=True, exist_ok=True)
        args.file.write_text(json.dumps({"meta": meta, **got}, indent=1) + "\n")
        print(f"recorded: step / same-FLOP matmul = {got['ratio']:.2f} ({got['gflop']:.2f} GFLOP, {MODEL} b{BATCH})")
        return 0
    ref = json.loads(args.file.read_text())
    limit = TOLERANCE * ref["ratio"]
    verdict = "ok" if got["ratio"] <= limit else "REGRESSION"
    spread = f"rounds {got['ratio_min']:.2f}-{got['ratio_max']:.2f}"
    print(f"{verdict}: step / same-FLOP matmul = {got['ratio']:.2f} ({spread}); recorded {ref['ratio']:.2f} "
          f"on {ref['meta']['machine']}, limit {limit:.2f}")  # fmt: skip
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
