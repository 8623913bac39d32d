"""DAFNet under EasyEdit's trainer contract (``EditableModel``); imported only when the host is.

``EditTrainer`` builds this class from ``ALG_TRAIN_DICT``. The plugin routes its ``run`` to
``DAFNetTrainer`` (see host.py), which draws whole edit sequences itself; the host's own loop
(what the upstream export uses) works too: ``edit`` a batch as one sequence, ``forward`` the
unedited model, the outer parameters, and a ``state_dict`` without the base model's weights.
"""
from __future__ import annotations

import functools

import torch
from easyeditor.trainer.algs.editable_model import EditableModel
from easyeditor.trainer.losses import masked_log_probs
from torch import nn

from .editor import SUBJECT_ROWS, EditBatch, attach


class _Edited(nn.Module):
    """The model with the sequence's ΔW applied (the trainable's own forward switches it off)."""

    def __init__(self, trainable: "DAFNetTrainable") -> None:
        super().__init__()
        self.__dict__["trainable"] = trainable

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **batch) -> torch.Tensor:
        # the host's trainer passes its whole batch; its labels hold only the target's width
        return self.trainable.model(input_ids=input_ids, attention_mask=attention_mask).logits


class DAFNetTrainable(EditableModel):
    def __init__(self, model: nn.Module, config, model_constructor) -> None:
        super().__init__(model, config, model_constructor)
        self.editor = attach(model, config, seed=config.seed)
        # DAFNet edits causal LMs; the host shifts predictions only for some model class names
        self.edit_loss_fn = functools.partial(masked_log_probs, shift=True)

    @property
    def edit_lrs(self) -> nn.Parameter:  # EditTrainer gives these their own optimizer (lr_lr)
        return self.editor.edit_lrs

    def outer_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.editor.named_parameters() if n != "edit_lrs"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **batch) -> torch.Tensor:
        with self.editor.deltas_off():
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def edit(self, batch: dict, condition=None, detach_history: bool = False):
        """One host batch of k edits is one sequence. The host's labels hold the target tokens
        aligned to the end of the (left-padded) input; DAFNet wants them at full width."""
        if self.editor.rows in SUBJECT_ROWS:
            raise ValueError(f"rows: {self.editor.rows} needs each edit's subject, which the host's batches do "
                             f"not carry: train with the plugin's DAFNetTrainer (EditTrainer.run does)")
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
