"""The knowledge-distillation term: the student matches the teacher's answer distribution.

At every answer position the teacher and the student each give two label logits
(yes, no; read in fp32 from two rows of the head, as everywhere in rankbrew). The KD term
is the KL divergence from the teacher's tempered distribution over those two tokens to the
student's, times ``T^2`` (Hinton et al. 2015: keeps the gradient's scale independent of
the temperature)::

    KL(softmax(t / T) || softmax(s / T)) * T^2

Why only the label tokens: the score is ``P(yes) / (P(yes) + P(no))``, so that is the
distribution the served model must reproduce; the full vocabulary at the answer position
carries nothing the ranking uses. Why a soft target at all: the teacher's margin says *how
much* a member matches a candidate, where the label says only yes or no; 360Brew's
distillation step (and LinkedIn's "Scaling Down, Serving Fast") keeps quality this way
where fine-tuning the small model on labels alone loses it.

No Ray, no training loop: ``components.train.losses`` adds this as the ``kd`` term of the
``distill`` stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_kd_sum(student_pair: torch.Tensor, teacher_pair: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """Summed ``KL(teacher || student) * T^2`` over answer positions.

    ``student_pair`` / ``teacher_pair``: ``[n, 2]`` (yes, no) logits; the teacher's carry
    no gradient (computed under ``no_grad``). A zero that still depends on the student
    when ``n == 0`` (every FSDP rank must backpropagate through the same parameters)."""
    if temperature <= 0:
        raise ValueError(f"kd temperature={temperature}: must be > 0")
    if student_pair.shape != teacher_pair.shape:
        raise ValueError(f"student logits {tuple(student_pair.shape)} and teacher logits "
                         f"{tuple(teacher_pair.shape)} differ: score the same batch with both")
    if student_pair.shape[0] == 0:
        return student_pair.sum() * 0.0
    t = float(temperature)
    log_p_s = F.log_softmax(student_pair.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_pair.detach().float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum") * (t * t)
