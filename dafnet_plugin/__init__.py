"""DAFNet, the sequential model editor (Zhang et al., 2024), as a plugin for EasyEdit.

``import dafnet_plugin`` registers ``alg_name: DAFNet`` with EasyEdit when EasyEdit is importable;
without it the method works on any transformers causal LM through ``DAFNetEditor``.
"""
from .editor import DAFNetEditor, EditBatch, attach, attached, tokenize_edits
from .hparams import DAFNetHyperParams, DAFNetTrainingHparams
from .network import DAFNetNetwork, NetworkConfig
from . import host

easyeditor = host.register()

__all__ = ["DAFNetEditor", "DAFNetHyperParams", "DAFNetNetwork", "DAFNetTrainingHparams", "EditBatch", "NetworkConfig", "attach",
           "attached", "easyeditor", "tokenize_edits"]
