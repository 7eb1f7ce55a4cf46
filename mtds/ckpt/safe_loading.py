"""No file mtds reads can run code: weights-only unpickling everywhere, index caches checked.

A `.pt` file is a pickle, and unpickling can call any function the file names (`os.system`):
whoever can write into a checkpoint directory or a shared cache could run code in every rank of
the next job. So:

- `enable()` sets TORCH_FORCE_WEIGHTS_ONLY_LOAD=1, which makes every `torch.load` in the process
  weights-only, including the calls inside DeepSpeed (its checkpoint engine, `zero_to_fp32`) that
  pass `weights_only=False` and that mtds cannot change. Child processes (loader workers)
  inherit it. torch's weights-only unpickler builds tensors, containers and numbers only, plus
  the few classes allowlisted here that DeepSpeed's and our own files hold (found by loading
  every checkpoint file the test suite writes: ZeRO 0-3, bf16 and fp32, universal).
- `check_checkpoint(dir)` unpickles every `.pt` of a checkpoint that way (memory-mapped, so
  tensors are not read) before DeepSpeed or a tool loads it, so a planted file is refused with
  one line naming it rather than an UnpicklingError from deep inside DeepSpeed.
- `check_index_cache(dir)`: megatron-core loads its cached sample indices with
  `numpy.load(allow_pickle=True)`; a `.npy` whose header declares Python objects would unpickle.
  Ours are integer arrays, so any object array there is refused before megatron-core opens it.
"""

from __future__ import annotations

import glob
import os
import pickle
import re

from mtds.errors import LoadError

FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def _allowed_globals() -> list:
    import numpy as np
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct

    # numpy: the RNG state (rng_rank*.pt) holds numpy's Mersenne Twister key, a uint32 array.
    return [LossScaler, ZeroStageEnum, fragment_address, np.ndarray, np.dtype, _reconstruct, type(np.dtype(np.uint32))]


def enable() -> None:
    """Make every torch.load of this process (and its children) weights-only."""
    import torch

    os.environ[FORCE_ENV] = "1"
    torch.serialization.add_safe_globals(_allowed_globals())


def check_checkpoint(ckpt_dir: str) -> None:
    """Refuse, with one line naming the file, a checkpoint `.pt` that would run code when loaded."""
    import torch

    enable()
    for path in sorted(glob.glob(os.path.join(ckpt_dir, "**", "*.pt"), recursive=True)):
        try:
            torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except pickle.UnpicklingError as e:
            # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module ...".
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f"it names {found.group(1)}" if found else "not a plain weights file"
            raise LoadError(f"{path}: refused, loading it would run code ({what}); this file was not written by "
                            "mtds/DeepSpeed: restore the checkpoint from a trusted copy") from None
        except (RuntimeError, EOFError, OSError) as e:  # truncated / not a torch file
            raise LoadError(f"{path}: damaged, cannot be read ({str(e).splitlines()[0][:120]}); resume from an "
                            "earlier checkpoint (--tag) or a trusted copy") from None


def check_index_cache(cache_dir: str) -> None:
    """Refuse an index-cache `.npy` that holds Python objects (numpy would unpickle them)."""
    import numpy as np

    for path in sorted(glob.glob(os.path.join(cache_dir, "**", "*.npy"), recursive=True)):
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                dtype = read_header(f)[2]
        except (ValueError, OSError) as e:
            raise LoadError(f"{path}: not a numpy index file ({e}); delete the index cache directory "
                            f"{cache_dir} (it is rebuilt)") from None
        if dtype.hasobject:
            raise LoadError(f"{path}: refused, this index-cache file holds Python objects (loading them would run "
                            f"code); mtds writes integer indices only: delete {cache_dir} (it is rebuilt)")
