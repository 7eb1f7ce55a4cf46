"""Functions that megatron-core and DeepSpeed decorate with torch.compile at import compile when first called.

torch.compile, even used as a plain decorator, imports torch._dynamo and torch._inductor on the spot
(~3 s on this 2-core machine, more under load: bench/RESULTS.md, "Start-up time"). Two libraries
decorate functions with it as they are imported:
- megatron/core/jit.py sets `jit_fuser = torch.compile` (torch >= 2.2), and megatron's fusion modules
  (fused_bias_geglu, fused_bias_swiglu, ...) decorate with it: every megatron-core model import.
- deepspeed/runtime/compiler.py's `compile()` returns torch.compile, which decorates DeepSpeed's Muon
  functions; `deepspeed.initialize` imports that module for every optimizer (is_zero_supported_optimizer).
So every training rank, test run and `mtds generate`/`evaluate`/`export-hf` imported the compiler,
although most never call one of those functions (mtds turns megatron's fusions off on CPU:
mtds/models/common.py; mtds never uses Muon).

`install()` (mtds/__init__.py calls it, so it is in place before any mtds module imports either
library) adds an import hook for those two modules: right after one has run, its decorator becomes
`compile_on_first_call`, which hands the function to torch.compile, with the same options, the first
time it runs. torch.compile compiles at the first call anyway, so what runs and when it compiles are
unchanged; only the compiler's import moves to where it is needed. (torch.optim still imports
torch._dynamo, not torch._inductor, when an optimizer is built.) mtds's own `training.compile` calls
torch.compile directly and is not affected. Nothing here imports torch until one of the two modules is imported.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys


def compile_on_first_call(fn=None, **options):
    """`torch.compile(fn, **options)`, done when `fn` is first called; usable as `@deco` or `@deco(...)`."""
    if fn is None:
        return functools.partial(compile_on_first_call, **options)
    compiled = None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        nonlocal compiled
        if compiled is None:
            import torch

            compiled = torch.compile(fn, **options)
        return compiled(*args, **kwargs)

    # Inside an outer torch.compile (training.compile=layers), dynamo traces `fn` itself into the outer
    # graph instead of this wrapper, as it does for torch.compile's own wrapper (which sets the same attribute).
    run._torchdynamo_inline = fn
    return run


def _megatron_jit(module) -> None:
    import torch

    if module.jit_fuser is torch.compile:  # not torch.jit.script (old torch) nor megatron's no-op
        module.jit_fuser = compile_on_first_call


def _deepspeed_compiler(module) -> None:
    import torch

    original = module.compile
    if hasattr(torch, "compile") and original() is torch.compile:
        module.compile = lambda: compile_on_first_call


# module -> what to change right after its code has run
_AFTER_IMPORT = {"megatron.core.jit": _megatron_jit, "deepspeed.runtime.compiler": _deepspeed_compiler}


class _AfterImportHook(importlib.abc.MetaPathFinder):
    """Finds the modules of _AFTER_IMPORT as Python would, and runs their change right after their code."""

    def find_spec(self, name, path, target=None):
        change = _AFTER_IMPORT.get(name)
        if change is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module  # this spec's own loader instance

        def exec_then_change(module):
            exec_module(module)
            change(module)

        spec.loader.exec_module = exec_then_change
        return spec


def install() -> None:
    """Idempotent. A module already imported is changed now (its earlier decorations stay as they were)."""
    for name, change in _AFTER_IMPORT.items():
        if name in sys.modules:
            change(sys.modules[name])
    if not any(isinstance(f, _AfterImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImportHook())
