"""Predict a depth map from a photo with a densecnn dense export (onnxruntime, numpy and pillow only) and save it
as a 16-bit PNG in millimetres (0 = no depth), at the network's input size.

    python onnx_depth.py EXPORT_DIR photo.jpg depth.png
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

export_dir, photo, out = sys.argv[1], sys.argv[2], sys.argv[3]
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
names = [o.name for o in session.get_outputs()]
outputs = session.run(None, {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None].astype(np.float32)})
depth_m = outputs[names.index("depth") if "depth" in names else 0][0]  # (H, W) metres
Image.fromarray(np.clip(np.round(np.nan_to_num(depth_m) * 1000), 0, 65535).astype(np.uint16)).save(out)
print(f"{out}: {depth_m.shape[1]}x{depth_m.shape[0]}, {depth_m.min():.3f}-{depth_m.max():.3f} m")
