"""Attack only images certified at 2%, harder than `bagnet certify --attack`: is any flipped?

    python docs/robustness/strong_check.py out/certify/per_image.json ../shared/data/imagenette/val

The per-image JSON must come from `bagnet certify --model bagnet17_slim --weights imagenette --patch 2%
--defense mask,clip --tanh-scale 1 --tanh-shift -2` (any other patch sizes may be there too).
"""

import json
import sys

import torch

import bagnet
from bagnet.data.folder import ImageFolder, eval_transform
from bagnet.robust import RobustBagNet, patch_attack

per_image, val = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
model = bagnet.load_model("imagenette").eval()
cfg = model.pretrained_cfg
ds = ImageFolder(val, transform=eval_transform(112, cfg["mean"], cfg["std"]))
index = {p[len(val.rstrip("/")) + 1:]: i for i, (p, _) in enumerate(ds.samples)}
records = json.load(open(per_image))["images"]
for defense in ("mask", "clip"):
    picked = [r for r in records for o in r["results"]
              if o["defense"] == defense and o["patch"] == "2%" and o["certified"] and o["prediction"] == r["target"]]
    picked = picked[:: max(1, len(picked) // 12)][:12]  # 12 images spread over the certified ones
    x = torch.stack([ds[index[r["path"]]][0] for r in picked])
    y = torch.tensor([r["target"] for r in picked])
    opts = {"tanh_scale": 1.0, "tanh_shift": -2.0} if defense == "clip" else {}
    robust = RobustBagNet(model, "2%", defense, **opts).eval()
    result = patch_attack(robust, x, y, "2%", steps=30, positions=7, search_steps=4, refine=3, seed=1)
    print(defense, {"images": len(picked), "flipped": int(result.flipped.sum()),
                    "steps_per_image": result.tried, "still_right": int(result.correct(y).sum())})
