"""Export a model for deployment runtimes: ONNX (checked with onnxruntime) and ``torch.export`` (``.pt2``).

Both take ``images`` ``(batch, C, H, W)`` -- the preprocessed float batch (:mod:`deitlab.preprocess`) -- with a
dynamic batch axis, and return ``logits`` (a distilled model's heads fused, as :meth:`~deitlab.Predictor.logits`
``head="fused"``), or with ``heads="both"`` ``cls_logits`` and ``dist_logits``. Right after writing, the file is
loaded back and run on real-sized batches (from the model's own preprocessing of random images, two batch sizes
to exercise the dynamic axis); the largest absolute difference to PyTorch must stay within ``tolerance`` (fp32).

ONNX: ``torch.onnx.export(dynamo=True)`` first; the TorchScript exporter (``dynamo=False``) only when the dynamo
exporter fails or cannot produce the requested opset (its version converter cannot down-convert some graphs, e.g.
RegNetY's squeeze-excitation, to opset 17), and the report says why. The file carries the model's architecture,
class names and preprocessing as ``metadata_props["deitlab"]`` (JSON); the ``.pt2`` file as ``deitlab.json``.
onnx/onnxruntime/onnxscript are the optional extra ``deitlab[export]``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deitlab.errors import CheckpointError, ConfigError
from deitlab.models import DistilledLogits
from deitlab.predictor import Predictor
from deitlab.pretrained import model_input_size
from deitlab.version import __version__

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
HEAD_CHOICES = ("fused", "both")
DEFAULT_OPSET = 17
MIN_OPSET = 17  # LayerNormalization is an ONNX op from opset 17 on
TOLERANCE = 1e-4
MAX_BATCH = 4096  # upper bound of the .pt2 dynamic batch dimension
INSTALL_HINT = "pip install 'deitlab[export]'"
QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


class ExportModule(nn.Module):
    """A classifier with plain tensor outputs: ``logits`` (fused heads) or ``(cls_logits, dist_logits)``."""

    def __init__(self, model: nn.Module, heads: str = "fused") -> None:
        super().__init__()
        if heads not in HEAD_CHOICES:
            raise ConfigError(f"heads={heads!r} is not one of {', '.join(HEAD_CHOICES)}")
        if heads == "both" and not getattr(model, "distilled", False):
            raise ConfigError("heads='both' needs a distilled model (class + distillation heads); use 'fused'")
        self.model, self.heads = model, heads
        self.fusion = getattr(model, "fusion", "logits")
        self.eval()  # the wrapper too: exporters restore the wrapper's mode onto everything inside it

    @property
    def output_names(self) -> list[str]:
        return ["cls_logits", "dist_logits"] if self.heads == "both" else ["logits"]

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        if isinstance(out, DistilledLogits):
            return (out.cls_logits, out.dist_logits) if self.heads == "both" else out.fused(self.fusion)
        return out


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how it checked it."""

    path: Path
    format: str
    exporter: str  # "dynamo" / "torchscript" (ONNX), "torch.export" (pt2)
    opset: int | None
    inputs: list[str]
    outputs: list[str]
    input_shape: tuple[int, ...]  # with the batch axis dynamic (the first number is the example's)
    max_abs_diff: float
    checked_batches: list[int]
    tolerance: float
    size_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def require_onnx() -> None:
    """Refuse ONNX export in one line when the optional packages are missing."""
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")


def example_batches(predictor: Predictor, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """Two float batches (``batch_size`` and a different size) as the model gets them: random uint8 images at the
    data's native size through the model's own preprocessing, or standard-normal inputs when it has none."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size} must be >= 1")
    g = torch.Generator().manual_seed(seed)
    sizes = [batch_size, 1 if batch_size > 1 else 2]
    prep = predictor.preprocessing
    out = []
    for b in sizes:
        if prep is not None:
            pixels = torch.randint(0, 256, (b, prep.input_size[0], *prep.native), generator=g, dtype=torch.uint8)
            out.append(prep.pixels_to_input(pixels))
        else:
            out.append(torch.randn(b, *model_input_size(predictor.model), generator=g))
    return out


def metadata(predictor: Predictor, heads: str) -> dict[str, Any]:
    """What the exported file records about its model."""
    m = predictor.model
    return {
        "architecture": getattr(m, "model_name", type(m).__name__),
        "model_args": dict(getattr(m, "model_kwargs", {})),
        "label_names": predictor.labels,
        "preprocessing": predictor.preprocessing.to_dict() if predictor.preprocessing else None,
        "heads": heads,
        "source": predictor.source,
        "deitlab_version": __version__,
    }


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines (the report says what matters)."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def export_model(
    predictor: Predictor,
    output: str | Path,
    *,
    fmt: str = "onnx",
    heads: str = "fused",
    opset: int = DEFAULT_OPSET,
    batch_size: int = 8,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Export ``predictor.model`` to ``output`` as ``fmt`` and check it against PyTorch (see the module doc).

    The file is written under a temporary name and renamed when complete. A check beyond ``tolerance`` leaves
    the file in place and is reported (``report.ok`` is false); the CLI turns that into exit code 1.

    Raises:
        ConfigError: unknown format/heads, opset below 17, ONNX packages missing.
        CheckpointError: the exporter failed (the message has its first line).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
        if opset < MIN_OPSET:
            raise ConfigError(f"--opset {opset}: ViTs need opset >= {MIN_OPSET} (LayerNormalization)")
    output = Path(output)
    module = ExportModule(predictor.model.cpu(), heads)
    batches = example_batches(predictor, batch_size)
    meta = metadata(predictor, heads)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    t0 = time.perf_counter()
    try:
        if fmt == "onnx":
            exporter, got_opset, notes = write_onnx(module, batches[0], tmp, opset=opset, meta=meta)
            diff = check_onnx(tmp, module, batches)
        else:
            exporter, got_opset, notes = "torch.export", None, []
            write_pt2(module, batches[0], tmp, meta=meta)
            diff = check_pt2(tmp, module, batches)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(
        path=output, format=fmt, exporter=exporter, opset=got_opset, inputs=["images"], outputs=module.output_names,
        input_shape=tuple(batches[0].shape), max_abs_diff=diff, checked_batches=[len(b) for b in batches],
        tolerance=tolerance, size_bytes=output.stat().st_size, seconds=time.perf_counter() - t0, notes=notes,
    )  # fmt: skip


def reference_outputs(module: ExportModule, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = module(x)
    return list(out) if isinstance(out, tuple) else [out]


def max_difference(got: list[Any], want: list[torch.Tensor]) -> float:
    if len(got) != len(want):
        raise CheckpointError(f"the exported model returns {len(got)} outputs, PyTorch {len(want)}")
    return max(float((torch.as_tensor(g).float() - w.float()).abs().max()) for g, w in zip(got, want))


def write_pt2(module: ExportModule, example: torch.Tensor, path: Path, *, meta: dict[str, Any]) -> None:
    """``torch.export`` with a dynamic batch axis, saved with ``deitlab.json`` inside."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with quiet_exporters():
            program = torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}})
            torch.export.save(program, str(path), extra_files={"deitlab.json": json.dumps(meta)})
    except Exception as e:  # the exporter raises many types (UserError, Unsupported, RuntimeError, ...)
        raise CheckpointError(f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None


def check_pt2(path: Path, module: ExportModule, batches: list[torch.Tensor]) -> float:
    """Largest |difference| between the reloaded program and PyTorch over ``batches``."""
    with quiet_exporters():
        loaded = torch.export.load(str(path)).module()
    diff = 0.0
    for x in batches:
        with torch.inference_mode():
            got = loaded(x)
        diff = max(
            diff, max_difference(list(got) if isinstance(got, tuple | list) else [got], reference_outputs(module, x))
        )
    return diff


def write_onnx(
    module: ExportModule, example: torch.Tensor, path: Path, *, opset: int, meta: dict[str, Any]
) -> tuple[str, int, list[str]]:
    """ONNX with a dynamic batch axis: the dynamo exporter, else the TorchScript one (saying why).

    Returns the exporter used, the file's opset and notes for the report.
    """
    notes: list[str] = []
    try:
        _onnx_dynamo(module, example, path, opset)
        got = onnx_opset(path)
        if got == opset:
            _add_onnx_metadata(path, meta)
            return "dynamo", got, notes
        reason = f"the dynamo exporter could not convert this graph to opset {opset} (it produced opset {got})"
    except Exception as e:  # the exporter raises many types; the TorchScript one gets its chance
        reason = f"the dynamo exporter failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    notes.append(f"{reason}; used the TorchScript exporter (dynamo=False)")
    try:
        axes = {n: {0: "batch"} for n in ("images", *module.output_names)}
        with quiet_exporters():
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                output_names=module.output_names, dynamic_axes=axes,
            )  # fmt: skip
    except Exception as e:
        raise CheckpointError(
            f"ONNX export failed: {reason}; TorchScript exporter: {str(e).splitlines()[0][:200]}"
        ) from None
    _add_onnx_metadata(path, meta)
    return "torchscript", onnx_opset(path), notes


def _onnx_dynamo(module: ExportModule, example: torch.Tensor, path: Path, opset: int) -> None:
    with quiet_exporters():
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=opset, input_names=["images"],
            output_names=module.output_names, dynamic_shapes={"images": {0: "batch"}},
        )  # fmt: skip
        program.save(str(path), external_data=False)


def onnx_opset(path: Path) -> int:
    """The default-domain opset of an ONNX file."""
    import onnx  # optional extra

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)


def _add_onnx_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx  # optional extra

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"deitlab": json.dumps(meta)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session (``threads``: intra-op threads; ``None``: onnxruntime's default)."""
    import onnxruntime as ort  # optional extra

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(path: Path, module: ExportModule, batches: list[torch.Tensor]) -> float:
    """Largest |difference| between onnxruntime and PyTorch over ``batches``."""
    try:
        session = onnx_session(path)
    except Exception as e:
        raise CheckpointError(f"onnxruntime cannot load the exported file: {str(e).splitlines()[0][:300]}") from None
    diff = 0.0
    for x in batches:
        got = session.run(None, {"images": x.numpy()})
        diff = max(diff, max_difference(got, reference_outputs(module, x)))
    return diff
