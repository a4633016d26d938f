"""Video pipeline throughput: decoding + augmentation clips/s with 0, 1 and 2 DataLoader workers, and C3D
forward clips/s (CPU float32; on a GPU also bf16 autocast, to set against the paper's 313 fps claim).

    python benchmarks/video.py                  # writes a small synthetic dataset to a temp folder
    python benchmarks/video.py --root data/UCF101 --resize 128 171 --crop 112
    python benchmarks/video.py --decode-only    # whole-video against seek decoding only

Whole-video against seek decoding: 10-second 25 fps H.264 MP4s (250 frames of 320x240, a keyframe every
``--gop`` frames, 12 by default, as in MPEG-style GOPs; YouTube/Kinetics files often use 2-5 s) are loaded as
random 16-frame clips resized to 128x171 and cropped to 112 (C3D's training input), by the same dataset and
transform with 0 workers, once decoding each whole video and once seeking to the keyframe before the clip.

Throughput is measured side by side in one process, so the figures compare with each other; absolute numbers
depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from densecnn import create_backbone
from densecnn.data.synthetic.common import textured_background
from densecnn.data.synthetic.video import rgb_to_yuv420p, write_video_dataset
from densecnn.data.video import FrameStore, VideoClipDataset, video_splits
from tasks.datamodules.video import video_pipeline


def loader_clips_per_second(dataset, workers: int, batch_size: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=False, generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # worker start-up and first decode are not throughput
    start, clips, done = time.perf_counter(), 0, 0
    while done < batches:
        try:
            clips += len(next(it)["video"])
            done += 1
        except StopIteration:
            it = iter(loader)
    return clips / (time.perf_counter() - start)


def model_clips_per_second(model, clip_shape, batch_size: int, rounds: int, device: str, dtype=None) -> float:
    x = torch.randn(batch_size, *clip_shape, device=device).contiguous(memory_format=torch.channels_last_3d)
    model = model.to(device).eval().to(memory_format=torch.channels_last_3d)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None)
    with torch.no_grad(), autocast:
        model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(rounds):
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return rounds * batch_size / (time.perf_counter() - start)


def write_panning_mp4(path: Path, rng: np.random.Generator, *, num_frames: int = 250, height: int = 240,
                      width: int = 320, fps: int = 25, gop: int = 12) -> None:
    """A textured scene panning 2 px a frame with a square crossing it: ``num_frames`` frames of H.264
    (libx264 veryfast, a keyframe every ``gop`` frames, x264's adaptive B-frames)."""
    scene = textured_background(rng, height, width + 2 * num_frames, rng.uniform(40, 200, size=3))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for t in range(num_frames):
            rgb = scene[:, 2 * t:2 * t + width].copy()
            y, x = (40 + t) % (height - 40), (3 * t) % (width - 40)
            rgb[y:y + 40, x:x + 40] = (250, 240, 30)
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb), format="yuv420p")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def seek_against_whole(folder: Path, *, videos: int, gop: int, clips: int, batch_size: int) -> None:
    """Random-clip loader clips/s, whole-video decoding against seek decoding (same files, dataset, transform,
    0 workers), and their ratio."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(videos):
        write_panning_mp4(folder / f"v{i}.mp4", rng, gop=gop)
        samples.append((str(folder / f"v{i}.mp4"), 0))
    transform = video_pipeline("c3d", crop_size=112, train=True, mean=(0.45,) * 3, std=(0.225,) * 3,
                               where="benchmark")
    rates = {}
    for name, seek in (("whole video", False), ("seek", True)):
        dataset = VideoClipDataset(samples, clip_len=16, transform=transform, seed=0,  # the same clips both ways
                                   frames=FrameStore((128, 171), seek=seek))
        rates[name] = loader_clips_per_second(dataset, 0, batch_size, clips // batch_size)
    print(f"random 16-frame clips (128x171 -> 112x112) of {videos} 10 s 25 fps 320x240 H.264 MP4s (250 frames, "
          f"keyframe every {gop}), 0 workers:")
    for name, rate in rates.items():
        print(f"  {name:12s}: {rate:7.2f} clips/s")
    print(f"  seek / whole: {rates['seek'] / rates['whole video']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="video folder (default: a synthetic dataset in a temp folder)")
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--resize", type=int, nargs=2, default=(64, 86))
    parser.add_argument("--crop", type=int, default=56)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--model-batch", type=int, default=4)
    parser.add_argument("--model-rounds", type=int, default=3)
    parser.add_argument("--decode-only", action="store_true", help="only whole-video against seek decoding")
    parser.add_argument("--gop", type=int, default=12, help="keyframe interval of the seek benchmark's MP4s")
    parser.add_argument("--seek-videos", type=int, default=8)
    parser.add_argument("--seek-clips", type=int, default=48, help="clips timed per decoding mode")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        seek_against_whole(Path(tmp) / "seek", videos=args.seek_videos, gop=args.gop, clips=args.seek_clips,
                           batch_size=args.batch_size)
    if args.decode_only:
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else write_video_dataset(
            Path(tmp) / "videos", videos_per_class={"train": 8, "test": 1}, num_frames=48,
            frame_size=tuple(args.resize))
        _, splits = video_splits(root)
        transform = video_pipeline("c3d", crop_size=args.crop, train=True, mean=(0.45,) * 3, std=(0.225,) * 3,
                                   where="benchmark")
        dataset = VideoClipDataset(splits["train"], clip_len=args.clip_len, transform=transform,
                                   frames=FrameStore(tuple(args.resize)))
        print(f"decode + augment, {len(dataset)} videos, clips of {args.clip_len}x{args.crop}x{args.crop} "
              f"from frames resized to {args.resize[0]}x{args.resize[1]}:")
        for workers in (0, 1, 2):
            rate = loader_clips_per_second(dataset, workers, args.batch_size, args.batches)
            print(f"  workers={workers}: {rate:7.1f} clips/s")
        cached = VideoClipDataset(splits["train"], clip_len=args.clip_len, transform=transform,
                                  frames=FrameStore(tuple(args.resize), cache_dir=Path(tmp) / "cache"))
        for i in range(len(cached)):
            cached.frames.load(cached.samples[i][0])  # fill the cache
        print(f"  workers=0, frames cached on disk: {loader_clips_per_second(cached, 0, args.batch_size, args.batches):7.1f}"
              " clips/s")

    torch.manual_seed(0)
    print("C3D forward (no grad, channels_last_3d):")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        configs = [("full C3D, 3x16x112x112", {}, (3, 16, 112, 112)),
                   ("C3D x1/4 width + BN (quickstart), 3x8x32x32", {"width_mult": 0.25, "batch_norm": True},
                    (3, 8, 32, 32))]
        for label, kwargs, shape in configs:
            model = create_backbone("c3d", num_classes=101, input_size=shape, **kwargs)
            dtypes = [None] + ([torch.bfloat16] if device == "cuda" else [])
            for dtype in dtypes:
                batch = args.model_batch if device == "cpu" else 64
                rate = model_clips_per_second(model, shape, batch, args.model_rounds if device == "cpu" else 20,
                                              device, dtype)
                precision = "bf16" if dtype is not None else "fp32"
                print(f"  {device} {precision} {label}: {rate:8.1f} clips/s ({rate * shape[1]:9.1f} frames/s)")


if __name__ == "__main__":
    main()
