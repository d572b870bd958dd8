"""Next-token prediction (pretrain, sft, lora) and distillation from a teacher (distill)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from minigpt_assets.training.objectives.base import Objective


class LanguageModeling(Objective):
    """Mean cross-entropy over the trained tokens: all of them in pretraining, the answers in SFT (labels -100
    elsewhere). With `document_masking`, packed documents attend only within themselves."""

    def __init__(self, trainer):
        super().__init__(trainer)
        fused = self.stage.fused_loss
        self.fused = trainer.device.type == "cuda" if fused == "auto" else bool(fused)

    def inputs(self, batch: dict, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(input ids, labels, the model's other keyword arguments) of rows lo:hi, on the device."""
        ids = self.to_device(batch["input_ids"][lo:hi])
        labels = self.to_device(batch["labels"][lo:hi])
        kw = {}
        if self.stage.document_masking:
            kw = {"doc_ids": self.to_device(batch["doc_ids"][lo:hi]),
                  "position_ids": self.to_device(batch["position_ids"][lo:hi])}
        return ids, labels, kw

    def loss(self, batch: dict, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, float]]:
        ids, labels, kw = self.inputs(batch, lo, hi)
        with self.autocast():
            if self.fused:  # the model's head computes the summed loss a chunk at a time
                total = self.trainer.train_model(ids, labels=labels, **kw)
                return self.with_aux(total / (labels != -100).sum().clamp(min=1)), {}
            logits = self.trainer.train_model(ids, **kw)
        return self.with_aux(token_cross_entropy(logits, labels)), {}

    def with_aux(self, loss: torch.Tensor) -> torch.Tensor:
        """Plus the model's auxiliary loss (MoE load balancing), if it has one."""
        aux = self.trainer.model.aux_loss()
        return loss + aux if aux is not None else loss


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100 (fp32)."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss / (labels != -100).sum().clamp(min=1)


class Distillation(LanguageModeling):
    """alpha x KL(teacher_T || student_T) x T^2 + (1 - alpha) x cross-entropy, on the student's vocabulary."""

    def __init__(self, trainer, teacher: Path | None):
        super().__init__(trainer)
        self.teacher = self._load_teacher(teacher)

    def _load_teacher(self, path: Path | None) -> torch.nn.Module:
        from minigpt_assets.models.interop import from_pretrained
        from minigpt_assets.training.trainer import TrainingError

        if path is None:
            raise TrainingError("a distill stage needs its teacher's folder")
        teacher = from_pretrained(path).to(self.trainer.device).eval().requires_grad_(False)
        student_vocab = self.trainer.model_cfg.vocab_size
        if teacher.config.vocab_size < student_vocab:
            raise TrainingError(f"{path}: the teacher's vocabulary ({teacher.config.vocab_size}) is smaller than "
                                f"the student's ({student_vocab}); they must share a tokenizer")
        return teacher

    def loss(self, batch: dict, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, float]]:
        ids, labels, kw = self.inputs(batch, lo, hi)
        with self.autocast():
            logits = self.trainer.train_model(ids, **kw)  # the KL needs the student's logits
        with self.autocast(), torch.no_grad():
            teacher_logits = self.teacher(ids, **kw)
        ce = token_cross_entropy(logits, labels)
        d = self.stage.distill
        kl = distill_kl(logits, teacher_logits, labels, d.temperature)
        return self.with_aux(d.alpha * kl + (1 - d.alpha) * ce), {"kl": float(kl.detach())}


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over trained positions (labels != -100) of KL(teacher_T || student_T) x T^2, on the shared
    vocabulary (the first V ids of both, V the student's size)."""
    v = student.shape[-1]
    t = temperature
    s_logp = torch.log_softmax(student.float() / t, dim=-1)
    t_logp = torch.log_softmax(teacher[..., :v].float() / t, dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    keep = labels != -100
    return (kl * keep).sum() / keep.sum().clamp(min=1) * t * t
