"""A LoRA run's checkpoints hold only the adapters (and their optimizer state) and a pointer to the
base checkpoint: `lora_base` = its run dir, tag and manifest hash, in config.json and in every
checkpoint's mtds_config.json. The base is read back through the pointer, its manifest hash checked
first: a resume loads it before the adapters, the tools merge the two (mtds.ckpt.consolidate). A task's
heads (Task.lora_heads, e.g. a classifier's) train whole and are saved with the adapters.
"""

from __future__ import annotations

import os

from mtds.errors import LoadError

KEY = "lora_base"


def is_lora(saved: dict) -> bool:
    return bool(saved.get("run", {}).get("training", {}).get("lora_rank"))


def record(base_ckpt: str, left_out: list[str]) -> dict:
    """The pointer to the base checkpoint a LoRA run starts from (training.init_from's), with the
    base's tensors the run's model has no place for (`left_out`: a pretrained BERT's masked-LM head
    under a classifier), which the tools drop when they put base and adapters together."""
    from mtds.ckpt.manifest import pointer

    return {**pointer(base_ckpt), "left_out": list(left_out)}


def base_checkpoint(saved: dict, where: str) -> tuple[str, dict]:
    """(base checkpoint dir, its saved config) that `saved`'s pointer names, or one line saying
    why it cannot be used (`where`: the checkpoint holding the pointer). The base's manifest must
    hash as recorded: another or a re-saved base would change what the adapters were trained on."""
    from mtds.ckpt import manifest
    from mtds.ckpt.layout import read_config

    pointer = saved.get(KEY)
    if not pointer:
        raise LoadError(f"{where}: a LoRA checkpoint without its {KEY} record (the base checkpoint it needs)")
    base = os.path.join(pointer["run_dir"], "checkpoints", pointer["tag"])
    listed = os.path.join(base, manifest.MANIFEST_FILE)
    if not os.path.isfile(listed):
        raise LoadError(f"{where}: its base checkpoint {base} is gone; restore it (the adapters alone are no model)")
    found = manifest.hash_file(listed)[manifest.HASH]
    if pointer.get("manifest_xxh3_128") and found != pointer["manifest_xxh3_128"]:
        raise LoadError(f"{where}: its base checkpoint {base} changed since the LoRA run started (manifest xxh3-128 "
                        f"{found}, recorded {pointer['manifest_xxh3_128']}); restore that base")
    return base, read_config(base)

