"""Coverage-guided fuzzing of the image decoder (kyb.imageio.read_header and decode_image) with atheris.

Usage::

    pip install -e ".[fuzz]"
    python benchmarks/fuzz_decoder.py [--runs 50000] [--seconds 300] [--work FOLDER]

Seeds are small images made here with Pillow (JPEG baseline/progressive/CMYK/greyscale with an EXIF
orientation, PNG RGBA/palette/16-bit/interlaced, WebP lossy/lossless); libFuzzer mutates them, guided
by the Python code each input reaches (Pillow's plugins and ours are instrumented; its C decoders
are not). Every input goes through ``read_header`` and then ``decode_image`` (as the gateway and
the encoder call them), under small limits so that a big header costs no time. The contract: the only
exceptions are :class:`~kyb.errors.InvalidImage` and :class:`~kyb.errors.ImageTooLarge` with a
one-line message, and a decoded image is a contiguous ``uint8`` H x W x 3 array within the limits.
Anything else is a finding: counted by kind, its input kept in WORK/findings/, and the run goes on.
Prints the cases run, their rate, the outcomes and the findings; exit code 1 with any finding.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["PIL", "kyb.imageio"]):
    from PIL import Image

    from kyb.config import ImageLimits
    from kyb.errors import ImageTooLarge, InvalidImage
    from kyb.imageio import decode_image, read_header

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=4_000_000)
MAX_SIDE = 512
outcomes: Counter[str] = Counter()
findings: Counter[str] = Counter()
#: The fuzzing child's folder (set by _child); its tallies go to WORK/tally.json as it runs, since
#: libFuzzer ends the process without running exit handlers.
WORK = Path(".")


def _seeds() -> list[bytes]:
    """Small valid images of every kind the decoder accepts, and some it refuses."""
    gradient = Image.radial_gradient("L").resize((64, 48))
    rgb = Image.merge("RGB", (gradient, gradient.rotate(90), gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    out: list[bytes] = []

    def save(image: Image.Image, fmt: str, **options: object) -> None:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        out.append(buffer.getvalue())

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    save(rgb, "JPEG", quality=80)
    save(rgb, "JPEG", quality=60, progressive=True, exif=exif.tobytes())
    save(rgb.convert("CMYK"), "JPEG")
    save(gradient, "JPEG")
    save(rgb.convert("RGBA"), "PNG")
    save(rgb.convert("P"), "PNG")
    save(gradient.convert("I;16"), "PNG")
    save(rgb, "PNG", optimize=True)
    save(rgb, "WEBP", quality=70)
    save(rgb.convert("RGBA"), "WEBP", lossless=True)
    save(rgb, "GIF")  # refused: an unsupported type
    return out


def _check_decoded(data: bytes) -> str:
    try:
        header = read_header(data, LIMITS)
    except (InvalidImage, ImageTooLarge) as exc:
        _one_line(exc)
        return f"header: {type(exc).__name__}"
    try:
        image = decode_image(data, LIMITS, max_side=MAX_SIDE)
    except (InvalidImage, ImageTooLarge) as exc:
        _one_line(exc)
        return f"decode: {type(exc).__name__}"
    rgb = image.rgb
    if rgb.dtype.name != "uint8" or rgb.ndim != 3 or rgb.shape[2] != 3 or not rgb.flags.c_contiguous:
        raise AssertionError(f"decoded array {rgb.dtype} {rgb.shape}")
    if max(rgb.shape[:2]) > MAX_SIDE or (header.original_width, header.original_height) != (
        image.original_width,
        image.original_height,
    ):
        raise AssertionError(f"decoded {rgb.shape[:2]} from a {header.original_width}x{header.original_height} header")
    return "decoded"


def _one_line(exc: Exception) -> None:
    message = str(exc)
    if not message or "\n" in message or len(message) > 400:
        raise AssertionError(f"{type(exc).__name__} message not one line: {message!r}")


def test_one_input(data: bytes) -> None:
    try:
        outcomes[_check_decoded(data)] += 1
    except Exception as exc:  # a finding: anything the contract does not allow
        kind = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        if not findings[kind]:
            (WORK / "findings" / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)
        findings[kind] += 1
        outcomes["finding"] += 1
    if outcomes.total() % 250 == 0 or outcomes["finding"]:
        (WORK / "tally.json").write_text(json.dumps({"outcomes": outcomes, "findings": findings}))


def _child(work: Path, runs: int, seconds: int) -> None:
    """Runs libFuzzer in this process (it exits when done)."""
    global WORK
    WORK = work
    warnings.simplefilter("ignore")  # Pillow warns about each corrupt EXIF block it skips
    libfuzzer = [sys.argv[0], str(work / "corpus"), f"-runs={runs}", f"-max_total_time={seconds}",
                 "-max_len=65536", "-rss_limit_mb=4096", "-print_final_stats=1"]  # fmt: skip
    atheris.Setup(libfuzzer, test_one_input)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50_000, help="cases to run (libFuzzer -runs)")
    parser.add_argument("--seconds", type=int, default=300, help="at most this long (libFuzzer -max_total_time)")
    parser.add_argument("--work", type=Path, help="corpus and findings folder (default: a new temp folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kyb-fuzz-decoder-"))
    if args.child:
        _child(work, args.runs, args.seconds)
    for folder in (work / "corpus", work / "findings"):
        folder.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(_seeds()):
        (work / "corpus" / f"seed-{i:02d}").write_bytes(seed)
    print(f"fuzzing the decoder: corpus {work / 'corpus'}, up to {args.runs} cases or {args.seconds} s")
    started = time.perf_counter()
    command = [sys.executable, __file__, "--child", "--work", str(work), "--runs", str(args.runs),
               "--seconds", str(args.seconds)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    spent = time.perf_counter() - started
    ran = re.search(r"Done (\d+) runs in (\d+) second", done.stderr)
    coverage = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", done.stderr)
    tally = json.loads((work / "tally.json").read_text()) if (work / "tally.json").exists() else {}
    cases = int(ran.group(1)) if ran else sum(tally.get("outcomes", {}).values())
    print(f"{cases} cases in {spent:.0f} s ({cases / max(spent, 1e-9):.0f}/s), libFuzzer exit code {done.returncode}")
    if coverage:
        cov, features, kept = coverage[-1]
        print(f"coverage: {cov} edges, {features} features, corpus {kept} inputs")
    print("outcomes (as tallied every 250 cases):")
    for outcome, count in sorted(tally.get("outcomes", {}).items()):
        print(f"  {outcome:<28} {count:>8}")
    found = tally.get("findings", {})
    print(f"findings: {sum(found.values())} ({len(found)} kinds)")
    for kind, count in sorted(found.items(), key=lambda item: -item[1]):
        print(f"  {count:>6}  {kind}")
    if found:
        print(f"inputs kept in {work / 'findings'}")
    if done.returncode and not found:
        print(done.stderr[-3000:])  # libFuzzer itself stopped (a crash in C code, out of memory)
    return 1 if found or done.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
