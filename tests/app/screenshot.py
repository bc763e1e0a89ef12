"""Screenshot of the `bagnet serve` page for the README (docs/serve.png).

    python -m tests.app.screenshot [--weights FILE] [--sample chelsea] [--class N] [--out docs/serve.png]
        [--certify 2% [--cleanser-model resnet18@runs/resnet18/model.pt [--hover-mask I]]]

Starts the server in this process on a free port, opens the page in headless chromium,
picks a sample photo, shows its full-resolution evidence and saves the page. With
``--certify`` the certificate's line (and, with ``--cleanser-model``, PatchCleanser's panel,
mask ``--hover-mask`` outlined on the image) is in the picture.
"""

from __future__ import annotations

import argparse
import io
import threading
from pathlib import Path

from PIL import Image

from bagnet.app import Explorer, make_server
from bagnet.cli.demo import _readable_names, resolve_demo_model

from .test_browser import CHROMIUM, CHROMIUM_ARGS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None, help="data set whose classes.tsv names the model's WordNet-id classes")
    p.add_argument("--sample", default="chelsea")
    p.add_argument("--class", dest="cls", type=int, default=None, help="class to show (default: the top one)")
    p.add_argument("--res", choices=("native", "full"), default="full")
    p.add_argument("--out", default="docs/serve.png")
    p.add_argument("--viewport", default="1100x920", help="WIDTHxHEIGHT of the browser window (390x844: a phone)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--certify", default=None, help="sticker size chosen in the certify control (1%%, 2%%, 3%%)")
    p.add_argument("--cleanser-model", default=None, help="PatchCleanser's reference model (a model spec)")
    p.add_argument("--hover-mask", type=int, default=None, help="PatchCleanser mask cell to point at")
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    model = resolve_demo_model(args)
    names = _readable_names(model, Path(args.data)) if args.data else None
    reference = None
    if args.cleanser_model:
        from bagnet.models._spec import load_spec

        reference = load_spec(args.cleanser_model, num_classes=int(model.num_classes))
    server = make_server(Explorer(model, class_names=names, img_size=args.img_size, cleanser_model=reference),
                         "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            width, height = (int(v) for v in args.viewport.split("x"))
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(120_000)
            page.goto(server.url)
            page.wait_for_selector("body[data-ready]")
            page.click(f"#samples button[data-sample='{args.sample}']")
            page.wait_for_selector("#heatmap[data-class]")
            if args.cls is not None:
                page.click(f"#classes button[data-class='{args.cls}']")
                page.wait_for_selector(f"#heatmap[data-class='{args.cls}']")
            if args.res == "full":
                page.check("#res-full")
                page.wait_for_selector("#heatmap[data-res='full']")
            if args.certify:
                page.select_option("#certify-patch", args.certify)
                page.wait_for_selector("#certificate[data-certified]")
                if reference is not None:
                    page.wait_for_selector("#cleanser[data-state='done']", timeout=600_000)
                    if args.hover_mask is not None:
                        page.hover(f"#cleanser-grid button[data-mask='{args.hover_mask}']")
            if args.hover_mask is None:
                page.evaluate("window.scrollTo(0, 0)")
            png = page.screenshot(full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    # A 256-colour palette keeps the README image small; the page has few colours anyway.
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    image.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
