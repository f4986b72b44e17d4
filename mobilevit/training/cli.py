"""`mobilevit train`: fine-tune a checkpoint folder or train a variant from scratch with transformers' Trainer.

    mobilevit train --task classification --data my_images/ --variant xx-small --epochs 30 --output-dir out
    mobilevit train --task segmentation --data my_masks_dataset/ --model deeplabv3-mobilevit-small/ \\
        --labels background,road,car --epochs 20 --output-dir out-seg
    mobilevit train --task object-detection --data my_coco_folder/ --model ssdlite-mobilevit-xx-small/ \\
        --epochs 30 --output-dir out-det           # COCO-format or datasets folder with boxes
    torchrun --nproc_per_node 2 -m mobilevit train ...      # DistributedDataParallel, one output (rank 0)
    mobilevit train ... --compile                            # torch.compile'd training (docs/compile.md)

Checkpoints are written every epoch to `<output-dir>.partial/`; `--resume` continues a killed run from the
last whole one. Arguments and every example are checked before training (errors are one line, exit 2 for a
wrong argument, 1 for unusable data or folders), and nothing is written before they pass. The finished folder
(config.json, model.safetensors, preprocessor_config.json, README.md, metrics.json, training_history.png) is
moved into place only at the end. The arguments are parsed before torch and transformers are imported.
"""

from __future__ import annotations

import argparse
import math


def _pair(kind):
    def parse(text: str):
        parts = text.replace(",", " ").split()
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected two values 'MIN,MAX', got {text!r}")
        return tuple(kind(p) for p in parts)
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--task", default="classification",
                      help="classification (image-classification), segmentation (semantic-segmentation) or "
                           "detection (object-detection)")
    data.add_argument("--data", required=True,
                      help="an image folder tree (class sub-folders) or a datasets.save_to_disk folder; detection: "
                           "a COCO-format folder (instances JSON + images, per split) or a datasets.save_to_disk "
                           "folder with an 'objects' column (bbox [x, y, w, h] and category per box)")
    data.add_argument("--labels", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                      help="comma-separated class names in id order (needed for segmentation data without names; "
                           "class folders are matched to them by name)")
    data.add_argument("--skip-bad-images", action="store_true",
                      help="leave out examples that cannot be read (truncated files, bad masks, ...) and list them, "
                           "instead of stopping before training")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="a local checkpoint folder to fine-tune (the head is re-initialised for "
                                       "the new labels); without it, --variant is trained from scratch. Detection: "
                                       "a detector (its head kept when its classes include the data's) or a "
                                       "classifier, whose backbone gets new SSD layers")
    model.add_argument("--variant", default="xx-small",
                       help="size to train from scratch, a released size of any family: MobileViT v1 xx-small, "
                            "x-small, small; MobileViTv2 mobilevitv2-0.5 ... mobilevitv2-2.0 (also timm's "
                            "mobilevitv2_050 ...)")
    model.add_argument("--output-stride", type=int, choices=(8, 16, 32),
                       help="segmentation models: 8 or 16 (default: the config's; 16 for a new model)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=10, help="passes over the training data")
    train.add_argument("--batch-size", type=int, default=32, help="per process, at the base resolution")
    train.add_argument("--eval-batch-size", type=int, help="per process (default: --batch-size)")
    train.add_argument("--learning-rate", "--lr", type=float,
                       help="peak of the cosine schedule (AdamW; default 2e-3, detection: ml-cvnets' 9e-4)")
    train.add_argument("--weight-decay", type=float,
                       help="AdamW's decoupled weight decay (default 0.01; detection: ml-cvnets' 0.01 for MobileViT "
                            "v1, 0.05 for MobileViTv2)")
    train.add_argument("--warmup-ratio", type=float, default=0.1, help="share of the steps spent warming up")
    train.add_argument("--image-size", type=int, help="training crop, at least 32 (default: the model config's "
                                                      "image_size; detection: 320, or the detector folder's)")
    train.add_argument("--eval-resize", type=int, help="shortest edge before the centre crop at evaluation (default: "
                                                       "image size x 288/256; segmentation: the image size)")
    train.add_argument("--multi-scale", action=argparse.BooleanOptionalAction, default=None,
                       help="the paper's multi-scale sampler (default: on for classification, off for "
                            "segmentation, as in ml-cvnets)")
    train.add_argument("--multi-scale-range", type=_pair(int), metavar="MIN,MAX",
                       help="resolutions drawn by the sampler (default: 0.625x..1.25x the image size)")
    train.add_argument("--crop-scale", type=_pair(float), default=(0.08, 1.0), metavar="MIN,MAX",
                       help="area range of the random resized crop (default: 0.08,1.0)")
    train.add_argument("--crop-ratio", type=_pair(float), default=(3 / 4, 4 / 3), metavar="MIN,MAX",
                       help="aspect-ratio range of the random resized crop (default: 0.75,1.333)")
    train.add_argument("--flip-prob", type=float, default=0.5, help="horizontal flip probability")
    train.add_argument("--seed", type=int, default=0, help="seeds the initial weights, the split and the augmentation")
    train.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the model (Inductor; Trainer's torch_compile): one graph per training input "
                            "size, each compiled at its first step (minutes on a small CPU), faster steps after; "
                            "see docs/compile.md")
    train.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: every CPU this process may use); while other processes hold "
                            "the CPUs, training steps drop to one thread (on a busy 2-core machine 2 threads trained "
                            "20-30x slower than 1) and come back when they are idle")
    train.add_argument("--bf16", action="store_true",
                       help="train in bfloat16 autocast (CPU and CUDA; 1.2-1.4x faster than float32 on an AVX-512-BF16 "
                            "CPU here, measure yours: docs/training-speed.md); weights, optimizer and evaluation stay "
                            "float32")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", required=True, help="the finished model folder; checkpoints go to "
                                                         "<output-dir>.partial while training")
    out.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    out.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                     help="continue from the last whole checkpoint in <output-dir>.partial (or the one given)")
    out.add_argument("--keep-checkpoints", action="store_true", help="keep <output-dir>.partial after success")


def job_from_args(args: argparse.Namespace):
    """The `TrainJob` of the command line's arguments."""
    from ..limits import usable_cpus
    from .job import TrainJob

    overrides = {"output_stride": args.output_stride} if args.output_stride else {}
    return TrainJob(
        task=args.task, data=args.data, output_dir=args.output_dir, model=args.model, variant=args.variant,
        epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        image_size=args.image_size, eval_resize=args.eval_resize, multi_scale=args.multi_scale,
        multi_scale_range=args.multi_scale_range, crop_scale=args.crop_scale, crop_ratio=args.crop_ratio,
        flip_prob=args.flip_prob, labels=args.labels, config_overrides=overrides, seed=args.seed, resume=args.resume,
        overwrite=args.overwrite, keep_checkpoints=args.keep_checkpoints, num_workers=args.num_workers,
        threads=usable_cpus() if args.threads is None else args.threads, bf16=args.bf16, skip_bad_images=args.skip_bad_images,
        compile=args.compile)


def run(args: argparse.Namespace) -> int:
    """`mobilevit train`: a UserError (bad argument or data) reaches `mobilevit.cli`, which prints it as one line."""
    from .job import train_and_save

    result = train_and_save(job_from_args(args))
    metrics = result.metrics
    split = "test" if "test" in metrics else "validation"
    main = metrics["main_metric"]
    if result.trainer.is_world_process_zero():
        value = metrics[split][main]
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "undefined"
        print(f"{split} {main}: {shown}  ({metrics['train_seconds']:.0f} s of training)")
        print(f"saved to {result.output_dir}")
    return 0


__all__ = ["add_arguments", "run", "job_from_args"]
