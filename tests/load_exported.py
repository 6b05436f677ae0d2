"""Loads an exported student in a fresh process that never imports seed_hf, the ways a Hub user
does, and prints the max abs difference of each path's features from seed_hf's evaluation ones.

argv: export folder, reference .pt holding {"images": uint8 (n, h, w) gray images,
"features": (n, d) the features seed_hf's evaluation computed for them}.
"""

import json
import sys

import timm
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline


def main(folder: str, reference: str) -> dict:
    assert "seed_hf" not in sys.modules
    ref = torch.load(reference)
    images = [Image.fromarray(a.numpy()) for a in ref["images"]]  # grayscale "L" images
    rgb = [image.convert("RGB") for image in images]
    expected = ref["features"]
    result = {}
    with torch.no_grad():
        model = AutoModel.from_pretrained(folder).eval()
        processor = AutoImageProcessor.from_pretrained(folder)
        pixel_values = processor(rgb, return_tensors="pt")["pixel_values"]
        result["automodel"] = (model(pixel_values=pixel_values).pooler_output - expected).abs().max().item()

        timm_model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
        transform = timm.data.create_transform(**timm.data.resolve_model_data_config(timm_model))
        batch = torch.stack([transform(image) for image in rgb])
        result["timm"] = (timm_model(batch) - expected).abs().max().item()

    extractor = pipeline("image-feature-extraction", model=folder)
    vectors = torch.tensor([extractor(image, pool=True) for image in images]).reshape(len(images), -1)
    result["pipeline"] = (vectors - expected).abs().max().item()  # the gray images as they are
    result["feature_dim"] = vectors.shape[-1]
    try:  # a gray image straight into the processor of a 3-channel model (the card says convert)
        processor(images[0], return_tensors="pt")
        result["gray_processor"] = "ok"
    except Exception as error:  # noqa: BLE001
        result["gray_processor"] = type(error).__name__
    result["seed_hf_imported"] = "seed_hf" in sys.modules
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
