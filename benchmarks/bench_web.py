"""The web page on the sample catalog: time from upload to rendered answer, and page weight.

Usage::

    kyb demo                                   # once: draws and ingests the sample catalog in .kyb/demo
    python benchmarks/bench_web.py [.kyb/demo] [--runs 5] [--phone-size 4032] [--chromium /usr/bin/chromium]

It starts the whole topology in this process (:func:`kyb_services._local.start_local` with the web
front) over the demo set's index and catalog, then identifies every photo of ``DIR/photos`` ``--runs``
times three ways, each timed by its caller:

1. ``gateway (gRPC)``: :meth:`kyb.client.GatewayClient.identify`: the baseline;
2. ``web API (HTTP)``: ``POST /api/v1/identify`` with httpx: what the front adds;
3. ``page (browser)``: headless Chromium, the photo chosen in the page, then "Identify" pressed; the
   page's own performance marks, from just before it sends the photo to after the answer is painted
   (outlines and cards in the DOM and one frame drawn).

``--phone-size W`` first enlarges every photo to W pixels wide (JPEG 90, as a phone camera's
12-megapixel photo for W=4032), written to a temporary folder: the page then shrinks it to 1600 px
before sending, while the gRPC and HTTP callers send it whole. The descriptor cache is off, so
every pass encodes again.

Page weight is every static file the page loads (HTML, CSS, JS), as stored and as sent gzipped, plus
what the browser itself reports transferring for them (``transferSize``).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
from playwright.sync_api import expect, sync_playwright

from kyb.client import GatewayClient
from kyb.config import load_config
from kyb.index import has_index
from kyb.rpc import GatewayConfig, RpcConfig, ServiceConfig, WebConfig, wait_until_serving
from kyb_services._local import start_local
from kyb_services.web.servicer import STATIC_DIR


def _row(name: str, values: list[float], baseline: float) -> str:
    median = statistics.median(values)
    p90 = sorted(values)[max(0, round(0.9 * len(values)) - 1)]
    return f"{name:<18} {len(values):>5} {median:>10.1f} {p90:>10.1f} {median / baseline:>8.2f}x"


def _enlarge(photo: Path, width: int, out: Path) -> Path:
    image = cv2.imread(str(photo))
    height = round(image.shape[0] * width / image.shape[1])
    path = out / photo.name
    cv2.imwrite(
        str(path), cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", nargs="?", default=".kyb/demo", help="a demo set made by `kyb demo` (default .kyb/demo)")
    parser.add_argument("--runs", type=int, default=5, help="passes over the photos (default 5)")
    parser.add_argument("--phone-size", type=int, default=0, help="enlarge photos to this width first (0 = as drawn)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if not has_index(folder / "index"):
        print(f"error: {folder}/index has no index: run `kyb demo --dir {folder}` first", file=sys.stderr)
        return 2
    photos = sorted((folder / "photos").glob("*.jpg"))
    scratch = tempfile.TemporaryDirectory(prefix="kyb-bench-web-")
    if args.phone_size:
        photos = [_enlarge(photo, args.phone_size, Path(scratch.name)) for photo in photos]
    # No descriptor cache: every pass encodes again, as a new photo would be.
    where = {"index_dir": str(folder / "index"), "catalog_url": str(folder / "catalog.db"), "cache.url": "none"}
    engine = load_config(overrides=where)
    config = ServiceConfig(
        rpc=RpcConfig(host="127.0.0.1", grace_s=0.0),
        gateway=GatewayConfig(port=0),
        web=WebConfig(port=0),
        engine=engine,
    )
    stack = start_local(config, shards=1, web=True)
    timings: dict[str, list[float]] = {"gateway (gRPC)": [], "web API (HTTP)": [], "page (browser)": []}
    try:
        for server in [stack.encoder, *stack.matchers]:
            wait_until_serving(f"127.0.0.1:{server.port}", config.rpc, timeout_s=120)
        url = f"http://127.0.0.1:{stack.web.port}"
        client = GatewayClient(f"127.0.0.1:{stack.gateway_port}", timeout=60)
        http = httpx.Client(timeout=60)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(url)
            weights = page.evaluate(
                "[performance.getEntriesByType('navigation')[0], ...performance.getEntriesByType('resource')]"
                ".map(e => [e.name, e.transferSize, e.decodedBodySize])"
            )
            for run in range(args.runs + 1):  # pass 0 warms caches and connections; not counted
                for photo in photos:
                    data = photo.read_bytes()
                    started = time.perf_counter()
                    client.identify(data)
                    grpc_ms = (time.perf_counter() - started) * 1000
                    started = time.perf_counter()
                    http.post(f"{url}/api/v1/identify", content=data).raise_for_status()
                    http_ms = (time.perf_counter() - started) * 1000
                    done = page.evaluate("window.kybTimings.length")
                    page.set_input_files("#file", str(photo))
                    expect(page.locator("#search")).to_be_visible()
                    page.click("#search")
                    page.wait_for_function(f"window.kybTimings.length > {done}", timeout=60_000)
                    if run:
                        timings["gateway (gRPC)"].append(grpc_ms)
                        timings["web API (HTTP)"].append(http_ms)
                        timings["page (browser)"].append(page.evaluate("window.kybTimings.at(-1)"))
            browser.close()
        client.close()
        http.close()
    finally:
        stack.stop()
        scratch.cleanup()

    baseline = statistics.median(timings["gateway (gRPC)"])
    size = f"enlarged to {args.phone_size} px wide" if args.phone_size else "as drawn"
    print(f"\nupload -> answer on {len(photos)} sample photos ({size}) x {args.runs} runs ({folder})")
    print(f"{'path':<18} {'calls':>5} {'median ms':>10} {'p90 ms':>10} {'vs gRPC':>9}")
    for name, values in timings.items():
        print(_row(name, values, baseline))
    print("\npage weight (every static file the page loads)")
    print(f"{'file':<28} {'bytes':>8} {'gzip':>8} {'browser transfer':>17}")
    total = [0, 0, 0]
    served = {name.rsplit("/", 1)[-1] or "index.html": (size, decoded) for name, size, decoded in weights}
    for path in sorted(STATIC_DIR.iterdir()):
        raw = path.read_bytes()
        packed = len(gzip.compress(raw, 9)) if len(raw) >= 1024 else len(raw)  # the server gzips from 1 KiB
        transfer = served.get(path.name, (0, 0))[0]
        total = [total[0] + len(raw), total[1] + packed, total[2] + transfer]
        print(f"{path.name:<28} {len(raw):>8} {packed:>8} {transfer:>17}")
    print(f"{'total':<28} {total[0]:>8} {total[1]:>8} {total[2]:>17}")
    print(f"= {total[0] / 1024:.1f} KB as stored, {total[1] / 1024:.1f} KB gzipped "
          "(transfer includes HTTP headers)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
