"""What a certificate costs: the BagNet mask defence (PatchGuard's robust masking) against
PatchCleanser's double masking on a plain DNN, in one process, in model passes and seconds
per image.

    python benchmarks/cleanser.py [--bagnet bagnet33_w25@imagenette] [--dnn resnet18@random]
                                  [--img-size 192] [--patch 2%] [--masks 6] [--images 2]
                                  [--batch-size 32] [--threads N]

The BagNet's defences are arithmetic on one pass of patch logits: 1 pass per image for the
prediction and for the certificate. PatchCleanser classifies the image under every mask
(k^2 passes for the first round, plus k^2 - 1 per disagreeing mask tried in the second
round) to predict, and under every pair of masks (k^2 + k^2 (k^2 - 1) / 2 passes, 666 at
k = 6) to certify. Timings are medians of ``--repeats`` rounds after a warm-up (PatchCleanser's
of ``--cleanser-repeats`` rounds on ``--images`` images), on random normalized images; the DNN's random weights cost the same per pass as trained ones (the
passes of inference depend on the weights: how often the first round disagrees).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _median_seconds(f, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bagnet", default="bagnet33_w25@imagenette", help="the BagNet (default: bagnet33_w25@imagenette)")
    p.add_argument("--dnn", default="resnet18@random", help="the classifier PatchCleanser defends (default: "
                                                            "resnet18@random)")
    p.add_argument("--img-size", type=int, default=192, help="square images of this side (default: 192)")
    p.add_argument("--patch", default="2%", help="sticker: pixels or share of the image (default: 2%%)")
    p.add_argument("--masks", type=int, default=6, help="PatchCleanser's masks per axis (default: 6)")
    p.add_argument("--images", type=int, default=2,
                   help="images PatchCleanser predicts and certifies per round (default: 2)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch of the cheap runs (default: 32)")
    p.add_argument("--chunk", type=int, default=32, help="masked images per pass of the DNN (default: 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of the cheap runs (default: 3)")
    p.add_argument("--cleanser-repeats", type=int, default=1,
                   help="timed rounds of PatchCleanser's runs, without a warm-up: the DNN's inference rows warm "
                        "it up (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from bagnet.models._spec import load_spec, parse_spec
    from bagnet.robust import PatchCleanser, RobustBagNet, mask_set

    torch.manual_seed(0)
    bagnet = load_spec(parse_spec(args.bagnet)).eval()
    dnn = load_spec(parse_spec(args.dnn)).eval()
    size = args.img_size
    x = torch.randn(args.batch_size, 3, size, size)
    few = x[:args.images]
    masks = mask_set(size, args.patch, args.masks)
    robust = RobustBagNet(bagnet, args.patch, "mask").eval()
    cleanser = PatchCleanser(dnn, args.patch, args.masks, chunk=args.chunk).eval()

    def no_grad(f):
        def run():
            with torch.no_grad():
                return f()
        return run

    n = len(x)
    rows = [  # (defence, what, passes per image, seconds per image)
        ("none", f"{args.bagnet} inference", 1, _median_seconds(no_grad(lambda: bagnet(x)), args.repeats) / n),
        ("mask", "inference", 1, _median_seconds(no_grad(lambda: robust(x)), args.repeats) / n),
        ("mask", "certificate", 1, _median_seconds(lambda: robust.certify(x), args.repeats) / n),
        ("none", f"{args.dnn} inference", 1, _median_seconds(no_grad(lambda: dnn(x)), args.repeats) / n),
    ]
    decisions = []
    rows.append(("cleanser", "inference", None,
                 _median_seconds(lambda: decisions.append(cleanser.predict(few)), args.cleanser_repeats, False)
                 / len(few)))
    decision = decisions[-1]
    rows[-1] = (*rows[-1][:2], float(decision.passes.float().mean()), rows[-1][3])
    rows.append(("cleanser", "certificate", masks.certification_passes,
                 _median_seconds(lambda: cleanser.certify(few), args.cleanser_repeats, False) / len(few)))

    k2 = len(masks)
    print(f"{args.img_size} px images, {masks.patch_size} px sticker ({args.patch}); PatchCleanser: {masks.describe()}; "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"passes per image: BagNet defences 1 (inference and certificate); cleanser inference {k2} (first round) "
          f"+ {k2 - 1} per disagreeing mask tried (at most {masks.certification_passes}; here "
          f"{float(decision.passes.float().mean()):.1f} on average, cases {torch.bincount(decision.case, minlength=4)[1:].tolist()} "
          f"of I/II/III), certificate {k2} + {k2 * (k2 - 1) // 2} = {masks.certification_passes}")
    print(f"{'defence':<9} {'run':<34} {'passes/image':>12} {'s/image':>9} {'x its model':>12}")
    model_seconds = rows[0][3]
    for defense, what, passes, seconds in rows:
        if defense == "none":  # the plain model the rows below it defend
            model_seconds = seconds
        ratio = seconds / model_seconds
        print(f"{defense:<9} {what:<34} {passes:>12.4g} {seconds:>9.4f} {ratio:>12.1f}")
    mask_cert = next(s for d, w, _, s in rows if d == "mask" and w == "certificate")
    cleanser_cert = rows[-1][3]
    print(f"certificate: cleanser on {args.dnn} / mask on {args.bagnet} = {cleanser_cert / mask_cert:.0f}x the time per image")


if __name__ == "__main__":
    main()
