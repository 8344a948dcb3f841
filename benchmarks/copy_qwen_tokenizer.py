"""Copy the Qwen2.5 tokenizer files (no weights, ~12 MB) into a folder the GPU machine receives.

The 7B-shaped main-job benchmarks (`bench_main_job.py --model 7b-text | 7b-vl`) build random
weights on the GPU but need the real Qwen2.5 tokenizer and chat template, and the GPU machine has
no internet.  The files come from the Qwen2.5-Coder-0.5B-Instruct folder steerpeft converted from
GGUF (`<cache>/gguf-qwen2.5-coder-0.5b-instruct-*/`, `steerpeft.models.cache.cache_dir()`), or from
any Qwen2 / Qwen2.5 Hugging Face folder given with `--source`.

    python benchmarks/copy_qwen_tokenizer.py                 # -> benchmarks/.assets/qwen-tokenizer
    python benchmarks/copy_qwen_tokenizer.py --source DIR --dest DIR

`benchmarks/.assets/` is git-ignored: carry it to the device explicitly.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B

from steerpeft.models.cache import cache_dir

SOURCE_PATTERN = "gguf-qwen2.5-coder-0.5b-instruct-*"


def find_source() -> Path:
    """The newest converted Qwen2.5-Coder-0.5B-Instruct folder holding every tokenizer file."""
    candidates = [folder for folder in cache_dir().glob(SOURCE_PATTERN)
                  if all((folder / name).is_file() for name in B.QWEN_TOKENIZER_FILES)]
    if not candidates:
        raise SystemExit(f"No {SOURCE_PATTERN} folder with {', '.join(B.QWEN_TOKENIZER_FILES)} under "
                         f"{cache_dir()}. Load the model once (steerpeft converts the GGUF), or pass "
                         "--source DIR.")
    return max(candidates, key=lambda folder: folder.stat().st_mtime)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=None, help="folder with the tokenizer files (default: found)"
    )
    parser.add_argument("--dest", type=Path, default=B.QWEN_TOKENIZER_DIR, help="where to copy them")
    args = parser.parse_args(argv)
    source = args.source or find_source()
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in B.QWEN_TOKENIZER_FILES:
        shutil.copy2(source / name, args.dest / name)
    size = sum((args.dest / name).stat().st_size for name in B.QWEN_TOKENIZER_FILES)
    print(f"copied {', '.join(B.QWEN_TOKENIZER_FILES)} ({size / 2**20:.1f} MiB) from {source} to {args.dest}")
    return args.dest


if __name__ == "__main__":
    main()
