"""Classify a photo with a densecnn export, using nothing but onnxruntime, numpy and pillow.

    python onnx_classify.py EXPORT_DIR photo.jpg    # EXPORT_DIR holds model.onnx and preprocess.json
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

export_dir, photo = sys.argv[1], sys.argv[2]
pre = json.load(open(f"{export_dir}/preprocess.json"))
image = Image.open(photo).convert(pre["channel_order"])
for step in pre["resize"]:  # the evaluation resize and crop, in order
    size, filters = step.get("size"), {"nearest": Image.NEAREST, "bicubic": Image.BICUBIC, "area": Image.BOX}
    if step["op"] == "resize_shorter_side":
        scale = size / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             filters.get(step.get("interpolation"), Image.BILINEAR))
    elif step["op"] == "resize":
        image = image.resize((size[1], size[0]), filters.get(step.get("interpolation"), Image.BILINEAR))
    elif step["op"] == "center_crop":
        top, left = (image.height - size[0]) // 2, (image.width - size[1]) // 2
        image = image.crop((left, top, left + size[1], top + size[0]))
x = (np.asarray(image, np.float32) / pre["max_pixel_value"] - pre["mean"]) / pre["std"]
session = ort.InferenceSession(f"{export_dir}/{pre['model_file']}")
probs = session.run(None, {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
best = int(probs.argmax())
print(f"{pre['class_names'][best]}\t{probs[best]:.4f}")
