"""Knowledge distillation (Hinton et al. 2015): the student learns the teacher's temperature-softened outputs."""

from __future__ import annotations

from typing import Any

from edgemodel.convert.errors import ConversionError, Reason


def kd_loss(temperature: float, alpha: float) -> Any:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(labels); alpha 1 without labels."""
    import torch.nn.functional as F

    def loss(out: Any, extras: list[Any], labels: Any) -> Any:
        teacher = extras[0]
        soft = F.kl_div(F.log_softmax(out / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                        reduction="batchmean", log_target=True) * (temperature * temperature)
        if labels is None or alpha >= 1.0:
            return soft
        return alpha * soft + (1.0 - alpha) * F.cross_entropy(out, labels)

    return loss


def check_student(student_out: Any, teacher_out: Any, field: str) -> None:
    """StudentMismatch naming ``field`` when the student's first output is not shaped like the teacher's."""
    if tuple(student_out.shape) != tuple(teacher_out.shape):
        raise ConversionError(
            Reason.STUDENT_MISMATCH,
            f"{field}: the student outputs {list(student_out.shape)} but the teacher outputs "
            f"{list(teacher_out.shape)} for the same inputs; give the student the teacher's inputs and outputs",
        )
