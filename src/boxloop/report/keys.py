"""The keys of the results schema that the report reads, spelled once.

OUT/results.json (written by `boxloop simulate`) is {"runs": [run, ...]}; a run is {strategy, seed,
unit, semi, rounds}; a round's row is what history.round_history returns (images and boxes labelled,
cost, mAP50, per-class AP, labelled objects per class, thresholds, pseudo-label counts).
OUT/gallery.json is a list of items {image, boxes, labels, scores, sources}.

Why constants: the report reads rows with `.get`, so a misspelt literal would turn a metric into a
silent NaN; a misspelt constant is a NameError. The writers (history.round_history, simulate, autolabel)
still spell the same keys by hand; the report's own outputs (table rows, the summary dict) are its
public shape and stay literal where they are built.
"""

from __future__ import annotations

# results.json
RUNS = "runs"

# one run
STRATEGY = "strategy"
SEED = "seed"
UNIT = "unit"
SEMI = "semi"
ROUNDS = "rounds"
DEFAULT_UNIT = "images"  # a run without a unit counted whole images

# one round's row
ROUND = "round"
IMAGES_LABELLED = "images_labelled"
BOXES_LABELLED = "boxes_labelled"
COST_SECONDS = "cost_seconds"
MAP50 = "map50"
COCO_AP = "coco_ap"
FULL_DATA_MAP50 = "full_data_map50"
PER_CLASS = "per_class"  # class -> {ap50, coco_ap, num_gt}
AP50 = "ap50"  # inside PER_CLASS
LABELLED_PER_CLASS = "labelled_per_class"  # class -> objects labelled so far
RARE_CLASSES = "rare_classes"  # on a run: the classes present in the fewest pool images (benchmarks set it)
RARE_MEAN = "rare classes"  # the per-class line of their mean AP50
THRESHOLDS = "thresholds"  # class -> selection threshold (localization_aware only)
PSEUDO_IMAGES = "pseudo_images"
PSEUDO_BOXES = "pseudo_boxes"

# one gallery item
IMAGE = "image"
BOXES = "boxes"
LABELS = "labels"
SCORES = "scores"
SOURCES = "sources"
