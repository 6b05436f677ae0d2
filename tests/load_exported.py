"""Loads an exported student in a fresh process that never imports seed_hf; prints max diffs.

argv: export folder, reference .pt holding {"x": RGB input, "f": the student's pooled features}.
"""

import json
import sys

import numpy as np
import timm
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline


def main(folder: str, reference: str) -> dict:
    assert "seed_hf" not in sys.modules
    ref = torch.load(reference)
    x, features = ref["x"], ref["f"]
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        result = {"automodel": (model(pixel_values=x).pooler_output - features).abs().max().item()}
        timm_model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
        result["timm"] = (timm_model(x) - features).abs().max().item()
    processor = AutoImageProcessor.from_pretrained(folder)
    image = Image.fromarray((np.random.rand(40, 40) * 255).astype("uint8")).convert("RGB")
    vector = pipeline("image-feature-extraction", model=folder, image_processor=processor)(image, pool=True)
    with torch.no_grad():
        direct = model(pixel_values=processor(image, return_tensors="pt")["pixel_values"]).pooler_output
    vector = torch.tensor(vector)
    result["pipeline"] = (vector.reshape(-1) - direct.reshape(-1)).abs().max().item()
    result["pipeline_shape"] = list(vector.shape)
    result["seed_hf_imported"] = "seed_hf" in sys.modules
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
