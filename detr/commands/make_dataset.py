"""``detr-edge make-dataset shapes|shapes-hard --out DIR``: write a synthetic COCO 'shapes' dataset.

``shapes-hard`` is the same generator with ``detr.data.synthetic.HARD_DEFAULTS``:
portrait and landscape images of six sizes, nested sub-folders, odd file names,
grayscale PNGs among RGB JPEGs, 5 classes with non-contiguous ids. Options given
on the command line override either kind's defaults."""

from __future__ import annotations

import argparse

from runtime import options as opt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["shapes", "shapes-hard", "shapes-video"],
                        help="'shapes': square images, flat folders; 'shapes-hard': mixed "
                        "portrait/landscape sizes, sub-folders, odd names, grayscale files; "
                        "'shapes-video': clips of moving shapes with MOTChallenge ground truth")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-train", type=int, default=1000, help="training images (default 1000)")
    parser.add_argument("--num-val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the square images in pixels (default 320)")
    parser.add_argument("--variable-size", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="random image width/height in [MIN, MAX] instead of square images")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="HxW",
                        help="image sizes drawn per image, e.g. 120x160 160x120 "
                        "(shapes-hard default: six sizes from 96 to 192 px)")
    parser.add_argument("--max-objects", type=int, default=None,
                        help="at most this many objects per image (default 20; shapes-hard 4)")
    parser.add_argument("--size-band-probs", type=float, nargs=3, metavar=("SMALL", "MEDIUM", "LARGE"),
                        default=None, help="probabilities of COCO small/medium/large objects "
                        "(default 0.35 0.45 0.2)")
    parser.add_argument("--max-large", type=int, default=None,
                        help="at most this many large objects per image (default 2)")
    parser.add_argument("--format", choices=["jpg", "png"], default="jpg",
                        help="image file format (default jpg, fixed quality)")
    parser.add_argument("--clips", type=int, default=3, help="shapes-video: clips (default 3)")
    parser.add_argument("--frames", type=int, default=40,
                        help="shapes-video: frames per clip (default 40; --image-size sets the "
                        "frame side, default 192 for videos)")


def _parse_sizes(items: list[str]) -> tuple[tuple[int, int], ...]:
    from runtime.errors import InputError

    sizes = []
    for item in items:
        h, sep, w = item.lower().partition("x")
        if not sep or not h.isdigit() or not w.isdigit():
            raise InputError("--sizes", f"expected HEIGHTxWIDTH like 120x160, got {item!r}")
        sizes.append((int(h), int(w)))
    return tuple(sizes)


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, seed=opt.seed, num_train=opt.count_or_zero, num_val=opt.count_or_zero,
        image_size=opt.image_side, variable_size=opt.image_side, max_objects=opt.int_range(0, 1000),
        size_band_probs=opt.probability, max_large=opt.count_or_zero, clips=opt.int_range(1, 10000),
        frames=opt.int_range(2, 100000))

    if args.kind == "shapes-video":
        return _run_video(args)
    from detr.data.synthetic import HARD_DEFAULTS, ShapesConfig, make_shapes_dataset

    options = dict(HARD_DEFAULTS) if args.kind == "shapes-hard" else {}
    given = {"size_band_probs": tuple(args.size_band_probs) if args.size_band_probs else None,
             "max_large": args.max_large, "max_objects": args.max_objects,
             "variable_size": tuple(args.variable_size) if args.variable_size else None,
             "sizes": _parse_sizes(args.sizes) if args.sizes else None}
    options.update({k: v for k, v in given.items() if v is not None})
    if args.variable_size and not args.sizes:  # a size range replaces the kind's size list
        options.pop("sizes", None)
    config = ShapesConfig(seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                          image_size=args.image_size or 320, image_format=args.format, **options)
    try:
        out = make_shapes_dataset(args.out, config)
    except KeyboardInterrupt:
        # Generation is deterministic and writes are atomic: rerunning redoes it exactly.
        print(f"\ninterrupted; rerun the same command to regenerate {args.out} from scratch")
        raise
    print(f"wrote {config.num_train} train + {config.num_val} val images to {out}/{{train,val}}/ "
          f"and COCO annotations to {out}/annotations/instances_{{train,val}}.json")
    return 0


def _run_video(args: argparse.Namespace) -> int:
    from detr.data.shapes_video import ShapesVideoConfig, make_shapes_video

    side = args.image_size or 192
    config = ShapesVideoConfig(seed=args.seed, num_clips=args.clips, num_frames=args.frames,
                               height=side, width=side)
    clips = make_shapes_video(args.out, config)
    for c in clips:
        print(f"{args.out}/{c['clip']}: {config.num_frames} frames, {c['tracks']} tracks, "
              f"{c['rows']} ground-truth boxes ({c['codec']})")
    return 0
