"""mtds/lazy_compile.py: megatron-core's and DeepSpeed's torch.compile decorators act on first call,
so importing a model and building an engine does not import the compiler (torch._inductor)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from helpers import ROOT

from mtds.lazy_compile import compile_on_first_call

IMPORTS = """
import sys
import mtds
from megatron.core.models.gpt import GPTModel
from megatron.core.fusions import fused_bias_swiglu
from deepspeed.runtime.zero.muon import original_muon
import megatron.core.jit, deepspeed.runtime.compiler
from mtds.lazy_compile import compile_on_first_call
assert megatron.core.jit.jit_fuser is compile_on_first_call
assert deepspeed.runtime.compiler.compile() is compile_on_first_call
assert fused_bias_swiglu.swiglu.__wrapped__.__name__ == "swiglu"
print("torch._inductor.compile_fx" in sys.modules)
"""


def test_megatron_and_deepspeed_import_without_the_compiler():
    """A fresh process: mtds first (as every entry point), then megatron-core's GPT model, its fusions
    and DeepSpeed's Muon module (which deepspeed.initialize imports for any optimizer)."""
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", IMPORTS], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False", proc.stdout + proc.stderr


def test_compile_on_first_call_compiles_once_with_the_decorators_options(monkeypatch):
    calls = []
    real = torch.compile

    def counting_compile(fn, **options):
        calls.append(options)
        return real(fn, **options)

    monkeypatch.setattr(torch, "compile", counting_compile)

    @compile_on_first_call(backend="eager", dynamic=False)
    def gelu_times_two(x):
        return torch.nn.functional.gelu(x) * 2

    assert calls == []  # decorating compiles nothing
    x = torch.randn(4, 8)
    assert torch.equal(gelu_times_two(x), torch.nn.functional.gelu(x) * 2)
    assert torch.equal(gelu_times_two(x + 1), torch.nn.functional.gelu(x + 1) * 2)
    assert calls == [{"backend": "eager", "dynamic": False}]  # once, with the options given
    assert gelu_times_two.__name__ == "gelu_times_two"


def test_inside_an_outer_compile_the_function_is_traced_into_the_outer_graph(monkeypatch):
    """As with torch.compile's own wrapper: dynamo inlines the function into the outer graph (no graph break:
    fullgraph=True would raise) and compiles nothing of its own for it."""
    real, compiled = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compiled.append(fn.__name__) or real(fn, **options))

    @compile_on_first_call
    def doubled(x):
        return x * 2

    outer = real(lambda x: doubled(x) + 1, backend="eager", fullgraph=True)
    x = torch.randn(3)
    assert torch.equal(outer(x), x * 2 + 1)
    assert compiled == []  # without the inlining, tracing called torch.compile(doubled) (and kept the result)
