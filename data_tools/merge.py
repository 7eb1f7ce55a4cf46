"""Merge several `.bin`/`.idx` datasets into one, in the order given.

    python -m data_tools.merge --input PREFIX_A PREFIX_B ... --output-prefix MERGED

Uses megatron-core's `IndexedDatasetBuilder.add_index` (copies each .bin, concatenates the
indices). Every input is verified first and all must share one dtype (uint16 vs int32 come
from tokenizers with different vocab sizes: merging those would mix token ids). Output goes to
temp names, renamed when complete (.bin first, .idx last).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from data_tools.errors import DataToolsError, run_cli
from data_tools.inspect_data import strip_prefix, verify_pair
from data_tools.io_utils import check_output_prefix


def merge(input_prefixes: Sequence[str], output_prefix: str, quiet: bool = False) -> dict:
    """Merge `input_prefixes` into `output_prefix`; returns counts of the result."""
    if not input_prefixes:
        raise DataToolsError("no inputs to merge (--input)")
    infos = [verify_pair(p) for p in input_prefixes]
    output_prefix = strip_prefix(check_output_prefix(output_prefix))
    if output_prefix in {i.prefix for i in infos}:
        raise DataToolsError(f"{output_prefix}: output prefix is also an input; choose another")
    dtypes = {i.dtype for i in infos}
    if len(dtypes) > 1:
        listing = ", ".join(f"{i.prefix} ({i.dtype.name})" for i in infos)
        raise DataToolsError(f"cannot merge datasets with different dtypes: {listing}; "
                             "preprocess them with the same tokenizer")
    from data_tools.indexed_writer import BinIdxWriter

    t0 = time.perf_counter()
    writer = BinIdxWriter(output_prefix, infos[0].dtype)
    try:
        for info in infos:
            writer.builder.add_index(info.prefix)
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    out = verify_pair(output_prefix)
    result = dict(prefix=output_prefix, documents=out.documents, sequences=out.sequences, tokens=out.tokens)
    if not quiet:
        print(f"merge: {len(infos)} inputs -> {output_prefix}: {out.documents} documents, {out.sequences} "
              f"sequences, {out.tokens} tokens; {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="dataset prefixes (PREFIX.bin + PREFIX.idx)")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    merge([strip_prefix(x) for x in a.input], a.output_prefix, a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
