"""Everything about checkpoints: save with one layout, resume at the same or (once converted) any other, export to
Hugging Face, and start from Hugging Face weights.

    save(engine, run_dir, step, client_state, metadata, keep)   # every rank; checksummed (MANIFEST.json), then
                                                                # committed atomically (COMPLETE, latest)
    load(engine, run_dir, layout, seed) -> (tag, client state)  # the latest complete tag that verifies, any layout
                                                                # once converted
    check_resume(resolved, resume)                     # before any rank starts: overwrite, shape, layout refusals
    Tag.of(run_dir, tag) / latest_tag(run_dir)         # a tag's metadata: saved recipe, ds_config, layout, MoE path,
                                                       # converted state
    tag_metadata(resolved, code_version())             # what rank 0 writes into every tag
    convert(run_dir, tag)                              # python -m moe.reshard: layout-free (native) or universal
                                                       # (AutoEP) state, loadable at any layout
    layout_free.consolidated_fp32(tag_dir)             # one fp32 state dict of a native run (all experts)
    export(run_dir, out_dir, tag, fp32)                # python -m moe.export: a stock HF model folder
    hf_import.load_init_from(model, folder, ...)       # model.init_from / model.upcycle into our GPT
    hf_import.load_family_checkpoint(recipe)           # model.init_from of an AutoEP family

Modules: metadata (tags and their metadata), store (save / load / RNG), manifest (checksums), resume, conversion
(per MoE path), layout_free and universal (the two converted forms), pipeline_files, hf_export and
hf_export_autoep, hf_import. The names above load on first use: the preflight reads metadata and resume only,
without torch or transformers.
"""

import importlib

_EXPORTS = {
    "Tag": "metadata",
    "checkpoint_dir": "metadata",
    "checkpoint_layout": "metadata",
    "checkpoint_layout_of": "metadata",
    "latest_tag": "metadata",
    "reshard_command": "metadata",
    "tag_metadata": "metadata",
    "check_resume": "resume",
    "code_version": "store",
    "load": "store",
    "save": "store",
    "convert": "conversion",
    "export": "hf_export",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"moe.checkpoint.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'moe.checkpoint' has no attribute {name!r}")
