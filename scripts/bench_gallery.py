"""Gallery paging speed: build a store of N small images, then time one page of search results.

    .venv/bin/python scripts/bench_gallery.py [--images 1000] [--page-size 48] [--repeat 20]

Prints the median time to fetch a page (newest first, with and without filters) and to make or reuse
that page's thumbnails. The images are tiny on purpose: this measures the index and the paging, not PNG
decoding of large files (thumbnails are cached next to each image after the first view).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from brandgen.gallery import GalleryStore  # noqa: E402


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--page-size", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = GalleryStore(Path(tmp) / "outputs")
        start = time.perf_counter()
        for i in range(args.images):
            meta = {"user_prompt": f"icon number {i}", "prompt": f"flat vector icon of icon number {i}",
                    "asset_type": ("icons", "logo")[i % 2], "model": ("tiny-sd15", "sdxl")[i % 3 == 0],
                    "loras": [{"name": "acme", "weight": 0.8}] if i % 5 == 0 else [], "seed": i}
            store.add(Image.new("RGB", (64, 64), (i % 256, 80, 160)), meta)
        add_s = time.perf_counter() - start
        middle = max(1, (args.images // args.page_size) // 2)
        size = args.page_size
        cases = {
            "page 1, no filter": lambda: store.search(page=1, page_size=size),
            f"page {middle}, no filter": lambda: store.search(page=middle, page_size=size),
            "page 2, text 'number 1' + asset type": lambda: store.search("number 1", asset_type="logo", page=2,
                                                                         page_size=size),
            "page 1, LoRA filter": lambda: store.search(lora="acme", page=1, page_size=size),
            "page 1 + its thumbnails (cached)": lambda: [store.thumbnail(i) for i in
                                                         store.search(page=1, page_size=size).items],
        }
        print(f"{args.images} images added in {add_s:.2f} s ({add_s / args.images * 1000:.2f} ms each, "
              "PNG + fsync + thumbnail + index row)")
        for name, fn in cases.items():
            print(f"{name:<45} median {median_ms(fn, args.repeat):7.2f} ms over {args.repeat} runs")
        store.close()


if __name__ == "__main__":
    main()
