"""``bagnet attack``: accuracy under an adversarial sticker attack, for any classifier.

PGD on the pixels of a p x p sticker (any colours of the image range) at a grid of
positions, then longer at the most promising ones, per image and patch size (pixels, or a
share of the image area: 1%, 2%, 3%). Works on BagNets, on BagNets defended with --defense
mask|clip, and on any classifier (torchvision's too: --model resnet50 ...) undefended or
defended by PatchCleanser (--defense cleanser; the attack follows the gradient of the
one-mask predictions' mean softmax through every masked copy and counts a sticker only
where it changes the double-masking decision). Prints clean accuracy
and accuracy under attack; writes OUT/summary.json and OUT/per_image.json (the sticker's
position and the prediction it caused). ``bagnet certify --attack`` adds certificates.
"""

from __future__ import annotations

import argparse

from .certify import (
    add_attack_args,
    add_shared_args,
    attack_options,
    cleanser_options,
    clip_options,
    evaluate,
    parse_defenses,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="accuracy under an adversarial sticker (patch) attack", description=__doc__)
    add_shared_args(p, "out/attack", "sticker", "none",
                    "comma-separated: none (the model as it is), mask, clip (BagNets only), cleanser "
                    "(PatchCleanser, any classifier) (default: none)")
    add_attack_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    defenses = parse_defenses(args.defense)
    return evaluate(args, defenses, clip_options(args, defenses), certify=False, attack=attack_options(args),
                    cleanser=cleanser_options(args, defenses))
