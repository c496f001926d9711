"""Agreement between heads, teacher and labels, against counts made by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deitlab
from deitlab.analysis import agreement, confusion_matrix, per_class_accuracy
from deitlab.models import DistilledLogits

LABELS = [0, 1, 2, 0]
CLS = [0, 1, 1, 0]  # correct: 0, 1, 3 -> 75%
DIST = [0, 2, 2, 1]  # correct: 0, 2 -> 50%
TEACHER = [0, 2, 2, 0]  # correct: 0, 2, 3 -> 75%


def one_hot(preds: list[int], k: int, scale: float) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), k).float() * scale


class Fixed(nn.Module):
    """Returns preset logits for image j (an image is its index j)."""

    def __init__(self, cls: torch.Tensor, dist: torch.Tensor | None = None) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.cls, self.dist = cls, dist

    def forward(self, x: torch.Tensor) -> torch.Tensor | DistilledLogits:
        j = x[:, 0].long()
        return self.cls[j] if self.dist is None else DistilledLogits(self.cls[j], self.dist[j])


def loader(batch: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = torch.arange(4.0)[:, None], torch.tensor(LABELS)
    return list(zip(x.split(batch), y.split(batch)))


def test_distilled_heads_teacher_and_labels_by_hand() -> None:
    # cls logits 2·e_c, dist logits 1·e_d: the fused logit average (2e_c + e_d)/2 follows the class head
    model = Fixed(one_hot(CLS, 3, 2.0), one_hot(DIST, 3, 1.0))
    teacher = Fixed(one_hot(TEACHER, 3, 1.0))
    r = agreement(model, teacher, loader())
    assert r["num_images"] == 4 and r["num_classes"] == 3 and r["heads"] == ["cls", "dist", "fused"]
    assert r["accuracy"] == {"cls": 75.0, "dist": 50.0, "fused": 75.0}
    # cls vs teacher [0,1,1,0]/[0,2,2,0]: 2 of 4; dist [0,2,2,1]/[0,2,2,0]: 3 of 4
    assert r["teacher_agreement"] == {"cls": 50.0, "dist": 75.0, "fused": 50.0}
    assert r["head_agreement"] == {"cls|dist": 25.0, "cls|fused": 100.0, "dist|fused": 25.0}
    assert r["per_class_accuracy"]["cls"] == [100.0, 100.0, 0.0]
    assert r["per_class_accuracy"]["dist"] == [50.0, 0.0, 100.0]
    assert r["confusion"]["cls"] == [[2, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert r["teacher"]["accuracy"] == 75.0
    assert r["teacher"]["confusion"] == [[2, 0, 0], [0, 0, 1], [0, 0, 1]]


def test_plain_model_without_teacher_and_an_empty_class() -> None:
    r = agreement(Fixed(one_hot(CLS, 4, 1.0)), None, loader(batch=3))
    assert r["heads"] == ["cls"] and r["accuracy"] == {"cls": 75.0} and r["head_agreement"] == {}
    assert "teacher" not in r and "teacher_agreement" not in r
    assert r["per_class_accuracy"]["cls"] == [100.0, 100.0, 0.0, None]  # class 3 has no images


def test_softmax_fusion_can_differ_from_logit_fusion() -> None:
    # cls [0, 1, 6], dist [6, 6, 0]: logit mean [3, 3.5, 3] -> class 1; softmax: cls [.0025, .0067, .9909],
    # dist [.4994, .4994, .0012] -> mean [.2509, .2530, .4961] -> class 2 (with two classes the fusions always agree)
    cls, dist = torch.tensor([[0.0, 1.0, 6.0]]), torch.tensor([[6.0, 6.0, 0.0]])
    batches = [(torch.zeros(1, 1), torch.tensor([2]))]
    assert agreement(Fixed(cls, dist), None, batches)["accuracy"]["fused"] == 0.0
    assert agreement(Fixed(cls, dist), None, batches, fusion="softmax")["accuracy"]["fused"] == 100.0


def test_confusion_and_per_class_helpers() -> None:
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]
    assert per_class_accuracy(cm) == [50.0, 100.0]


def test_agreement_on_a_tiny_distilled_model_with_a_transform() -> None:
    model = deitlab.create_model("deit_micro_distilled_patch4_28", depth=1)
    teacher = deitlab.create_model("deit_micro_patch4_28", depth=1)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    batches = list(zip(images.split(4), torch.randint(0, 10, (6,)).split(4)))
    r = agreement(model, teacher, batches, transform=lambda x: x.float() / 255)
    assert r["num_images"] == 6 and r["num_classes"] == 10
    assert all(0 <= v <= 100 for v in [*r["accuracy"].values(), *r["teacher_agreement"].values()])
    assert sum(map(sum, r["confusion"]["fused"])) == 6
    with pytest.raises(ValueError, match="no batches"):
        agreement(model, None, [])
