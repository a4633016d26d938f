"""Detection speed, side by side in one process (ratios, not absolute times, are the result).

1. OverFeat: the convolutional evaluation (one forward pass over the whole image scores every window)
   against a naive loop that crops each window and classifies it on its own, on the same windows. The
   scores must be identical (allclose) and the convolutional pass >= 20x faster. The backbone is unpadded
   (LeNet-5), so each window's features are exactly those of its crop.
2. Fast R-CNN against R-CNN at test time on the same proposals (2000 per image): features once per image
   and RoI pooling, against a CNN pass per warped region. Target >= 20x per image (the papers report
   about 213x on GPUs with VGG-16 and truncated SVD). Default: ResNet-18 for both; R-CNN warps each
   region to the network's 224 px input, Fast R-CNN pools 7x7 RoIs from conv4_x (stride 16) into a
   256-wide fc6/fc7 (the quickstart's width). The ratio grows with the per-region CNN's cost relative to
   the RoI head's: with small warps (``--crop-size 64``) or CIFAR nets it drops below 10x on a CPU,
   where one large image runs far less efficiently per FLOP than a batch of small crops.
3. Fast R-CNN's truncated SVD (Section 3.1) at test time: VGG-16's fc6 (25088 -> 4096) and fc7 (4096 ->
   4096) against their rank-1024 and rank-256 factorisations, on the same 2000 RoIs of one image: the
   fc6/fc7 head alone and the whole ``detect`` (convolutions, RoI pooling, head, NMS). The paper reports
   the head's time down by ~45% and the detection time by ~30% on a GPU (Fig. 2: 320 -> 223 ms).

    python benchmarks/detection.py                    # both, default sizes
    python benchmarks/detection.py --threads 2 --images 2 --proposals 2000 --json figures.json
    python benchmarks/detection.py --only svd --svd-image-size 224      # the truncated SVD ratio alone
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: `tasks` sits next to it
from tasks import FastRCNNTask, OverFeatTask, RCNNTask  # noqa: E402


def timed(fn, repeats: int = 1, warmup: bool = True):
    if warmup:
        fn()  # allocator, kernels
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.perf_counter() - start) / repeats


def overfeat_benchmark(image_size: int, num_classes: int = 20) -> dict:
    torch.manual_seed(0)
    task = OverFeatTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, num_classes=num_classes, window=32,
                        hidden_dim=256).eval()
    image = torch.randn(1, 3, image_size, image_size)
    with torch.no_grad():
        (logits, deltas), dense_s = timed(lambda: task.score_maps(image), repeats=3)
        rows, cols = logits.shape[-2:]
        windows = task.window_boxes(rows, cols).long().tolist()

        def naive():
            scores, regs = [], []
            for x0, y0, x1, y1 in windows:  # crop and classify each window separately
                s, r = task.score_windows(image[:, :, y0:y1, x0:x1])
                scores.append(s), regs.append(r)
            return torch.cat(scores), torch.cat(regs)

        task.score_windows(image[:, :, :task.window, :task.window])  # warm-up for the naive path
        (naive_logits, naive_deltas), naive_s = timed(naive, warmup=False)
    dense_logits, dense_deltas = logits[0].flatten(1).T, deltas[0].flatten(1).T
    identical = (torch.allclose(naive_logits, dense_logits, rtol=1e-4, atol=1e-5)
                 and torch.allclose(naive_deltas, dense_deltas, rtol=1e-4, atol=1e-5))
    return {"image_size": image_size, "windows": len(windows), "window_px": task.window, "stride_px": task.stride,
            "naive_s": naive_s, "convolutional_s": dense_s, "speedup": naive_s / dense_s,
            "identical_scores": bool(identical),
            "max_abs_diff": float((naive_logits - dense_logits).abs().max())}


def rcnn_vs_fast_rcnn(backbone: str, image_size: int, proposals: int, images: int, hidden_dim: int = 256,
                      crop_size: int | None = None, feature_index: int = -1, num_classes: int = 20) -> dict:
    from densecnn.backbones import get_entry

    crop_size = crop_size or get_entry(backbone).input_size[-1]
    context = max(1, round(16 * crop_size / 227))  # the paper's 16 px at 227 px
    torch.manual_seed(0)
    fast = FastRCNNTask(backbone=backbone, num_classes=num_classes, roi_op="pool", roi_size=7,
                        hidden_dim=hidden_dim, feature_index=feature_index).eval()
    slow = RCNNTask(backbone=backbone, num_classes=num_classes, crop_batch_size=250, crop_size=crop_size,
                    context=context).eval()
    batch_images = torch.randn(images, 3, image_size, image_size)
    xy = torch.rand(images, proposals, 2) * image_size * 0.8
    wh = torch.rand(images, proposals, 2) * image_size * 0.5 + 8
    boxes = [torch.cat([xy[i], (xy[i] + wh[i]).clamp(max=image_size)], dim=1) for i in range(images)]
    def run(task, count=None):  # each image on its own, as a test-time loop would run
        return [task.detect(batch_images[i:i + 1], {"image": batch_images[i:i + 1],
                                                    "proposals": [boxes[i][:count]]}) for i in range(images)]

    with torch.no_grad():
        _, fast_s = timed(lambda: run(fast))
        run(slow, 50)  # warm-up on a few regions: the full R-CNN pass is the slow part being measured
        _, slow_s = timed(lambda: run(slow), warmup=False)
    return {"backbone": backbone, "image_size": image_size, "proposals_per_image": proposals,
            "fast_rcnn_hidden_dim": hidden_dim,
            "rcnn_crop_px": slow.crop_size, "rcnn_s_per_image": slow_s / images,
            "fast_rcnn_s_per_image": fast_s / images, "speedup": slow_s / fast_s}


def truncated_svd_benchmark(image_size: int, proposals: int, rank_fc6: int = 1024, rank_fc7: int = 256,
                            backbone: str = "vgg16", num_classes: int = 20) -> dict:
    torch.manual_seed(0)
    task = FastRCNNTask(backbone=backbone, num_classes=num_classes, roi_op="pool", roi_size=7,
                        hidden_dim=4096, score_thresh=0.0).eval()
    image = torch.randn(1, 3, image_size, image_size)
    xy = torch.rand(proposals, 2) * image_size * 0.8
    boxes = torch.cat([xy, (xy + torch.rand(proposals, 2) * image_size * 0.5 + 8).clamp(max=image_size)], dim=1)
    batch = {"image": image, "proposals": [boxes]}
    with torch.no_grad():
        pooled = task.pooled_rois(image, [boxes])
        (full_logits, _), full_head_s = timed(lambda: task.box_head(pooled))
        _, full_detect_s = timed(lambda: task.detect(image, batch), warmup=False)
        task.compress_fc(rank_fc6, rank_fc7)
        (svd_logits, _), svd_head_s = timed(lambda: task.box_head(pooled))
        _, svd_detect_s = timed(lambda: task.detect(image, batch), warmup=False)
    return {"backbone": backbone, "image_size": image_size, "rois": proposals, "rank_fc6": rank_fc6,
            "rank_fc7": rank_fc7, "full_head_s": full_head_s, "svd_head_s": svd_head_s,
            "head_speedup": full_head_s / svd_head_s, "full_detect_s": full_detect_s,
            "svd_detect_s": svd_detect_s, "detect_speedup": full_detect_s / svd_detect_s,
            # untrained (random) fc6/fc7 have a flat spectrum: this difference says nothing about accuracy
            "max_abs_logit_diff": float((full_logits - svd_logits).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--overfeat-image-size", type=int, default=160)
    parser.add_argument("--backbone", default="resnet18", help="backbone for R-CNN vs Fast R-CNN")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--hidden-dim", type=int, default=256, help="Fast R-CNN's fc6/fc7 width (the quickstart's)")
    parser.add_argument("--crop-size", type=int, default=None, help="R-CNN's warp size (default: the backbone's input)")
    parser.add_argument("--feature-index", type=int, default=-2,
                        help="Fast R-CNN's RoI feature map (-2: conv4_x of a ResNet, stride 16)")
    parser.add_argument("--proposals", type=int, default=2000)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--svd-image-size", type=int, default=224, help="image side for the truncated SVD ratio")
    parser.add_argument("--only", choices=("overfeat", "rcnn", "svd"), default=None, help="run one of the comparisons")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    figures = {}
    if args.only in (None, "overfeat"):
        figures["overfeat"] = overfeat = overfeat_benchmark(args.overfeat_image_size)
        print(f"[1] OverFeat, {overfeat['windows']} windows of {overfeat['window_px']} px (stride "
              f"{overfeat['stride_px']}) on a {overfeat['image_size']} px image: naive crop loop "
              f"{overfeat['naive_s']:.3f} s, convolutional {overfeat['convolutional_s']:.4f} s -> "
              f"{overfeat['speedup']:.0f}x; identical scores: {overfeat['identical_scores']} "
              f"(max |diff| {overfeat['max_abs_diff']:.1e})", flush=True)
    if args.only in (None, "rcnn"):
        figures["rcnn_vs_fast_rcnn"] = family = rcnn_vs_fast_rcnn(args.backbone, args.image_size, args.proposals,
                                                                  args.images, args.hidden_dim, args.crop_size,
                                                                  args.feature_index)
        print(f"[2] {family['backbone']}, {family['proposals_per_image']} proposals per {family['image_size']} "
              f"px image: R-CNN {family['rcnn_s_per_image']:.2f} s/image (crops of {family['rcnn_crop_px']} px), "
              f"Fast R-CNN {family['fast_rcnn_s_per_image']:.3f} s/image -> {family['speedup']:.0f}x", flush=True)
    if args.only in (None, "svd"):
        figures["truncated_svd"] = svd = truncated_svd_benchmark(args.svd_image_size, args.proposals)
        print(f"[3] Fast R-CNN {svd['backbone']}, {svd['rois']} RoIs on a {svd['image_size']} px image, fc6/fc7 "
              f"whole vs truncated SVD (t = {svd['rank_fc6']}, {svd['rank_fc7']}): head {svd['full_head_s']:.2f} s "
              f"-> {svd['svd_head_s']:.2f} s ({svd['head_speedup']:.1f}x), detect {svd['full_detect_s']:.2f} s -> "
              f"{svd['svd_detect_s']:.2f} s ({svd['detect_speedup']:.1f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
