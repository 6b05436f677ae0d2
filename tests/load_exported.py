"""Loads an exported student in a fresh process that never imports seed_hf; prints max diffs.

argv: export folder, reference .pt holding {"x": RGB input, "f": the student's pooled features}.
"""

import sys, json, torch
assert "seed_hf" not in sys.modules
from transformers import AutoModel, AutoImageProcessor, pipeline
import timm
from PIL import Image
import numpy as np
d = sys.argv[1]; ref = torch.load(sys.argv[2])
x, f = ref["x"], ref["f"]
m = AutoModel.from_pretrained(d).eval()
with torch.no_grad():
    out = m(pixel_values=x).pooler_output
r = {"automodel": (out - f).abs().max().item()}
t = timm.create_model("local-dir:" + d, pretrained=True).eval()
with torch.no_grad():
    r["timm"] = (t(x) - f).abs().max().item()
proc = AutoImageProcessor.from_pretrained(d)
img = Image.fromarray((np.random.rand(40, 40) * 255).astype("uint8")).convert("RGB")
pipe = pipeline("image-feature-extraction", model=d, image_processor=proc)
v = pipe(img, pool=True)
pv = proc(img, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    direct = m(pixel_values=pv).pooler_output
r["pipeline"] = (torch.tensor(v).reshape(-1) - direct.reshape(-1)).abs().max().item()
r["pipeline_shape"] = list(torch.tensor(v).shape)
r["seed_hf_imported"] = "seed_hf" in sys.modules
print(json.dumps(r))
