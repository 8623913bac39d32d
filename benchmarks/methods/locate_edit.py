"""ROME and MEMIT as the host (EasyEdit) runs them, on GPT-2 and LLaMA-family models, offline.

The host's hyperparameter files each name one model; here the same objects are built from a loaded
model's layout, the second-moment statistics the host would download are computed from a local
corpus into the host's own cache layout, and both get the fixes they need on transformers 5 and on
bf16 models (``dafnet_plugin.host.fix_rome_and_memit``: applied here, not by ``import dafnet_plugin``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from dafnet_plugin.data.dafset import load_records
from dafnet_plugin.host import fix_rome_and_memit, import_easyeditor

# Names the statistics after their corpus. The host looks this name up in a dict of Hugging Face
# datasets only when the statistics file is missing, so a missing file fails (KeyError) instead of
# downloading Wikipedia.
LOCAL_CORPUS = "local_corpus"
DEFAULT_N_SAMPLES = 2000

# The host's own tuning, from hparams/{ROME,MEMIT}/{gpt2-xl,llama-7b}.yaml. Layer positions are the
# YAMLs' layers as fractions of depth (ROME 17/48 and 5/32; MEMIT five layers ending at 17/48 and 8/32),
# so a model of another depth edits at the same relative place.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(v_num_grad_steps=20, v_weight_decay=0.5, rome_clamp=4.0, memit_clamp=0.75, rome_at=17 / 48,
                 memit_last_at=17 / 48, memit_span=5 / 48, mom2_update_weight=20000, mlp_width=6400),
    "llama": dict(v_num_grad_steps=25, v_weight_decay=1e-3, rome_clamp=4.0, memit_clamp=4.0, rome_at=5 / 32,
                  memit_last_at=8 / 32, memit_span=5 / 32, mom2_update_weight=15000, mlp_width=11008),
}


def model_layout(model: torch.nn.Module) -> dict[str, Any]:
    """Module-name templates the host's ROME/MEMIT hparams need, the depth and the MLP width."""
    cfg = model.config
    if hasattr(model, "transformer") and hasattr(model.transformer, "h"):
        family, layer, n_layers = "gpt2", "transformer.h.{}", cfg.n_layer
        names = dict(rewrite_module_tmp=layer + ".mlp.c_proj", attn_module_tmp=layer + ".attn",
                     ln_f_module="transformer.ln_f")
        mlp_width = cfg.n_inner or 4 * cfg.n_embd
    elif hasattr(model, "model") and hasattr(model.model, "layers"):
        family, layer, n_layers = "llama", "model.layers.{}", cfg.num_hidden_layers
        names = dict(rewrite_module_tmp=layer + ".mlp.down_proj", attn_module_tmp=layer + ".self_attn",
                     ln_f_module="model.norm")
        mlp_width = cfg.intermediate_size
    else:
        raise NotImplementedError(f"no ROME/MEMIT layout for {type(model).__name__}")
    # named_parameters() lists a tied weight once, under the input embedding, so the host's lookup
    # of "<lm_head_module>.weight" must use whichever name it is listed under.
    head = model.get_output_embeddings().weight
    lm_head = next(name for name, p in model.named_parameters() if p is head).removesuffix(".weight")
    return dict(family=family, layer_module_tmp=layer, mlp_module_tmp=layer + ".mlp", lm_head_module=lm_head,
                n_layers=n_layers, mlp_width=mlp_width, **names)


def stats_file(model: torch.nn.Module, layer_name: str, stats_dir: str | Path, n_samples: int,
               ds_name: str = LOCAL_CORPUS, dtype: str = "float32") -> Path:
    """Where the host's ``layer_stats`` (models/rome/layer_stats.py) looks for the cached "mom2"
    statistics: the model directory is ``config._name_or_path`` with "/" as "_", because neither ROME's
    ``get_inv_cov`` nor MEMIT's ``get_cov`` passes another name."""
    model_dir = model.config._name_or_path.replace("/", "_")
    return Path(stats_dir) / model_dir / f"{ds_name}_stats" / f"{layer_name}_{dtype}_mom2_{n_samples}.npz"


class _Stop(Exception):
    pass


def compute_second_moments(model: torch.nn.Module, tok, texts: Sequence[str], layer_names: Sequence[str],
                           stats_dir: str | Path, n_samples: int = DEFAULT_N_SAMPLES, ds_name: str = LOCAL_CORPUS,
                           dtype: str = "float32", batch_size: int = 16, max_length: int = 128) -> list[Path]:
    """E[k kᵀ] over all corpus tokens of the input k of each named module, saved as the host saves it
    (``save_cached_state`` of ``CombinedStat(mom2=SecondMoment())`` with its ``sample_size``), so the host
    loads it instead of computing it. ``n_samples`` texts are used and recorded; the host only loads a
    file whose ``sample_size`` equals its ``mom2_n_samples``. Layers whose file exists are skipped."""
    from easyeditor.util.runningstats import CombinedStat, SecondMoment, save_cached_state

    paths = {name: stats_file(model, name, stats_dir, n_samples, ds_name, dtype) for name in layer_names}
    todo = [name for name, path in paths.items() if not path.exists()]
    if not todo:
        return list(paths.values())
    modules = dict(model.named_modules())
    deepest = max(todo, key=list(modules).index)  # modules are listed in the order they run
    inputs: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            inputs[name] = args[0]
            if name == deepest:
                raise _Stop  # the layers above are not needed: on a CPU they are most of the cost
        return hook

    handles = [modules[name].register_forward_pre_hook(record(name)) for name in todo]
    stats = {name: SecondMoment() for name in todo}
    max_length = min(max_length, model.config.max_position_embeddings)
    ids = sorted((tok(t, truncation=True, max_length=max_length)["input_ids"] for t in texts[:n_samples]), key=len)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(ids), batch_size), desc="second moments", unit="batch"):
                batch = ids[start:start + batch_size]
                width = max(map(len, batch))  # right padding; the mask drops the pad positions
                input_ids = torch.tensor([x + [0] * (width - len(x)) for x in batch], device=device)
                mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=device)
                try:
                    model(input_ids=input_ids, attention_mask=mask, use_cache=False)
                except _Stop:
                    pass
                for name in todo:
                    stats[name].add(inputs[name][mask.bool()].double())  # accumulate in double, store as dtype
    finally:
        for handle in handles:
            handle.remove()
    for name in todo:
        stats[name].mom2 = stats[name].mom2.to(getattr(torch, dtype))
        save_cached_state(str(paths[name]), CombinedStat(mom2=stats[name]), {"sample_size": n_samples})
    return list(paths.values())


def rewrite_layers(layout: dict[str, Any]) -> dict[str, list[int]]:
    """The host's layer choices scaled to this model's depth: one layer for ROME, a span for MEMIT.
    Both write at the subject's last token, which reaches the prediction only through the attention of
    a later layer, so no rewrite layer is the last one (this matters only for very shallow models)."""
    d, n = FAMILY_DEFAULTS[layout["family"]], layout["n_layers"]
    below_last = max(0, n - 2)
    span = min(max(1, round(n * d["memit_span"])), below_last + 1)
    last = min(max(round(n * d["memit_last_at"]), span - 1), below_last)
    return {"ROME": [min(round(n * d["rome_at"]), below_last)], "MEMIT": list(range(last - span + 1, last + 1))}


def _common(alg: str, model_path: str, layout: dict[str, Any], stats_dir: str | Path, n_samples: int,
            ds_name: str) -> dict[str, Any]:
    fix_rome_and_memit()  # every ROME or MEMIT of the suite is built here
    d = FAMILY_DEFAULTS[layout["family"]]
    templates = {k: v for k, v in layout.items() if k.endswith(("_tmp", "_module"))}
    return dict(alg_name=alg, model_name=model_path, device=0, layers=rewrite_layers(layout)[alg],
                fact_token="subject_last", v_num_grad_steps=d["v_num_grad_steps"], v_lr=0.5,
                v_loss_layer=layout["n_layers"] - 1, v_weight_decay=d["v_weight_decay"], kl_factor=0.0625,
                mom2_dataset=ds_name, mom2_n_samples=n_samples, mom2_dtype="float32", stats_dir=str(stats_dir),
                **templates)


def rome_hparams(model_path: str, layout: dict[str, Any], stats_dir: str | Path,
                 n_samples: int = DEFAULT_N_SAMPLES, ds_name: str = LOCAL_CORPUS, mom2_adjustment: bool = False,
                 **overrides: Any):
    """The host's ``ROMEHyperParams`` for this model, as its GPT-2 XL / LLaMA-7B YAMLs set them."""
    config = _common("ROME", model_path, layout, stats_dir, n_samples, ds_name)
    config.update(clamp_norm_factor=FAMILY_DEFAULTS[layout["family"]]["rome_clamp"], mom2_adjustment=mom2_adjustment,
                  context_template_length_params=[[5, 10], [10, 10]])
    return import_easyeditor().ROMEHyperParams(**{**config, **overrides})


def memit_hparams(model_path: str, layout: dict[str, Any], stats_dir: str | Path,
                  n_samples: int = DEFAULT_N_SAMPLES, ds_name: str = LOCAL_CORPUS, **overrides: Any):
    """The host's ``MEMITHyperParams`` for this model, ``mom2_update_weight`` λ scaled with the MLP width.
    MEMIT writes ΔW = R Kᵀ(λC + KKᵀ)⁻¹ with C = E[kkᵀ]; for one key k that realises the share s/(1 + s)
    of the residual R, s = kᵀC⁻¹k/λ, and a typical key has E[kᵀC⁻¹k] = tr(I) = width. So λ/width fixes
    how much of each edit lands: the host's 15000 at width 11008 gives 42%, at width 1536 only 9%."""
    d = FAMILY_DEFAULTS[layout["family"]]
    config = _common("MEMIT", model_path, layout, stats_dir, n_samples, ds_name)
    config.update(clamp_norm_factor=d["memit_clamp"], layer_selection="all", mom2_adjustment=True,
                  mom2_update_weight=d["mom2_update_weight"] * layout["mlp_width"] / d["mlp_width"])
    return import_easyeditor().MEMITHyperParams(**{**config, **overrides})


def prepare(alg: str, ctx) -> Any:
    """The suite's ROME or MEMIT for ``ctx``: second moments of the rewrite modules' inputs from the
    training records' text (cached by content), then the host's hparams."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ctx.model_path)
    tok = AutoTokenizer.from_pretrained(ctx.model_path)
    tok.pad_token = tok.pad_token or tok.eos_token
    layout = model_layout(model)
    # CounterFact, DAFSet or MEND's ZsRE form, each read into EasyEdit's records
    records = [r for path in ctx.train_files for r in load_records(path)][:DEFAULT_N_SAMPLES]
    texts = [f"{r['prompt']} {r.get('ground_truth') or r['target_new']}. {r['rephrase_prompt']}" for r in records]
    stats_dir = ctx.cache_dir("stats", DEFAULT_N_SAMPLES)
    layers = rewrite_layers(layout)[alg]
    compute_second_moments(model, tok, texts, [layout["rewrite_module_tmp"].format(i) for i in layers],
                           stats_dir, n_samples=len(texts))
    build = rome_hparams if alg == "ROME" else memit_hparams
    return build(ctx.model_path, layout, stats_dir, n_samples=len(texts))
