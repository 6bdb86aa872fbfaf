"""Knowledge distillation from models trained earlier in the zoo (issue 33, item 5).

A teacher is the mean softmax of one or more trained models. Its log-probabilities on every
training image are computed once, before the student trains (``teacher_log_probs``); ``fit``
then adds, with weight ``TrainConfig.distill``, the KL divergence between the teacher's and the
student's distributions, both softened by ``TrainConfig.distill_temperature`` (Hinton et al.,
2015; the T^2 factor keeps the term's gradients on the scale of the hard-label loss):

    loss = (1 - a) * CE(student, label) + a * T^2 * KL(softmax(t / T) || softmax(s / T))

where t is the teacher's log mean probability (softmax(t / T) is p_teacher^(1/T), normalised).
The targets belong to the unaugmented images: with ``augment`` on, a flipped or cropped image
gets its original's target (an approximation the standard preset does not need: it trains
without augmentation).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from zoo.data import DatasetInfo, ImageSet
from zoo.infer import predict_logits


@torch.inference_mode()
def teacher_log_probs(teachers: Sequence[nn.Module], images: ImageSet, info: DatasetInfo, *,
                      batch_size: int = 512, device: str | torch.device = "cpu",
                      progress: bool = True, desc: str = "teacher") -> torch.Tensor:
    """Log of the teachers' mean softmax on every image of ``images``: (N, classes), float32,
    on the CPU, in the images' order (each teacher through ``zoo.infer.predict_logits``)."""
    if not teachers:
        raise ValueError("distillation needs at least one teacher model")
    probs = sum(F.softmax(predict_logits(t.to(device), images, info, batch_size, device,
                                         progress=progress, desc=desc), dim=1)
                for t in teachers) / len(teachers)
    return probs.clamp_min(1e-12).log()


def distillation_loss(student_logits: torch.Tensor, teacher_log_prob: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), averaged over the batch (float32)."""
    t = temperature
    student = F.log_softmax(student_logits.float() / t, dim=1)
    teacher = F.log_softmax(teacher_log_prob.float() / t, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)
