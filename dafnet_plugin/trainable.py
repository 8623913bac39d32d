"""DAFNet under EasyEdit's trainer contract (``EditableModel``); imported only when the host is.

``EditTrainer`` builds this class from ``ALG_TRAIN_DICT``; its ``run`` is routed to
``DAFNetTrainer`` (see host.py), which draws whole edit sequences itself. The methods here keep
the rest of the contract: ``edit`` a batch as one sequence, ``forward`` the unedited model, the
outer parameters, and a ``state_dict`` without the base model's weights.
"""
from __future__ import annotations

import torch
from easyeditor.trainer.algs.editable_model import EditableModel
from torch import nn

from .editor import EditBatch, attach


class _Edited(nn.Module):
    """The model with the sequence's ΔW applied (the trainable's own forward switches it off)."""

    def __init__(self, trainable: "DAFNetTrainable") -> None:
        super().__init__()
        self.__dict__["trainable"] = trainable

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.trainable.model(*args, **kwargs).logits


class DAFNetTrainable(EditableModel):
    def __init__(self, model: nn.Module, config, model_constructor) -> None:
        super().__init__(model, config, model_constructor)
        self.editor = attach(model, config, seed=config.seed)

    @property
    def edit_lrs(self) -> nn.Parameter:  # EditTrainer gives these their own optimizer (lr_lr)
        return self.editor.edit_lrs

    def outer_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.editor.named_parameters() if n != "edit_lrs"]

    def forward(self, *args, **kwargs) -> torch.Tensor:
        with self.editor.deltas_off():
            return self.model(*args, **kwargs).logits

    def edit(self, batch: dict, condition=None, detach_history: bool = False):
        """One host batch of k edits is one sequence. The host's labels hold the target tokens
        aligned to the end of the (left-padded) input; DAFNet wants them at full width."""
        labels = torch.full_like(batch["input_ids"], -100)
        width = batch["labels"].shape[1]
        labels[:, -width:] = batch["labels"]
        self.editor.reset()
        self.editor.edit(EditBatch(batch["input_ids"], batch["attention_mask"], labels), detach_past=False)
        return _Edited(self), {}

    def state_dict(self, *args, **kwargs) -> dict:
        return self.editor.state_dict(*args, **kwargs)

    def load_state_dict(self, state: dict, strict: bool = True):
        return self.editor.load_state_dict(state, strict=strict)
