"""Composed image retrieval benchmarks: loaders, official metrics, submission files.

Pure Python + numpy: nothing here loads a model. Annotations are read from a DATA_DIR laid out as::

    DATA_DIR/cirr/captions/cap.rc2.{val,test1}.json
    DATA_DIR/cirr/image_splits/split.rc2.{val,test1}.json
    DATA_DIR/cirr/img_raw/{dev,test1}/*.png                         (NLVR2 images, as the split files say)
    DATA_DIR/circo/annotations/{val,test}.json
    DATA_DIR/circo/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
        (or DATA_DIR/circo/coco_unlabeled2017_gallery_ids.txt, one COCO id per line)
    DATA_DIR/circo/COCO2017_unlabeled/unlabeled2017/000000xxxxxx.jpg
    DATA_DIR/fashioniq/captions/cap.{dress,shirt,toptee}.{val,test}.json
    DATA_DIR/fashioniq/image_splits/split.{dress,shirt,toptee}.{val,test}.json
    DATA_DIR/fashioniq/images/<asin>.jpg                            (.png also found)
    DATA_DIR/genecis/{focus,change}_{object,attribute}.json
    DATA_DIR/genecis/val2017/000000xxxxxx.jpg                       (COCO val2017: object tasks)
    DATA_DIR/genecis/VG_100K_all/<id>.jpg                           (Visual Genome 1.2: attribute tasks)
    DATA_DIR/<split>.jsonl + images                                 (your own triplets)

Typical use::

    from cirkit.benchmarks import load, evaluate, write_cirr_submission, score_predictions
    bench = load("cirr", DATA_DIR, "val")
    rankings = {q.id: my_ranker(q) for q in bench.queries}        # gallery names, best first
    evaluate(bench, rankings)                                       # {"R@1": ..., "R_subset@1": ...}
    score_predictions("circo", DATA_DIR, "circo_val.json", "val")  # score a file, no model
"""

from cirkit.benchmarks.base import Benchmark, Box, CirQuery, ImageCheck
from cirkit.benchmarks.evaluation import evaluate, evaluate_group, score_predictions
from cirkit.benchmarks.crops import crop_box, crop_instance
from cirkit.benchmarks.metrics import (
    average_precision_at_k,
    circo_metrics,
    cirr_metrics,
    fashioniq_metrics,
    genecis_metrics,
    rank_by_scores,
    recall_at_k,
    triplets_metrics,
)
from cirkit.benchmarks.registry import BENCHMARKS, load, load_group
from cirkit.benchmarks.submission import (
    circo_submission,
    cirr_submission,
    validate_circo_submission,
    validate_cirr_submission,
    write_circo_submission,
    write_cirr_submission,
)
from cirkit.benchmarks.triplets import load_triplets

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Box",
    "CirQuery",
    "ImageCheck",
    "average_precision_at_k",
    "circo_metrics",
    "circo_submission",
    "cirr_metrics",
    "cirr_submission",
    "crop_box",
    "crop_instance",
    "evaluate",
    "evaluate_group",
    "fashioniq_metrics",
    "genecis_metrics",
    "load",
    "load_group",
    "load_triplets",
    "rank_by_scores",
    "recall_at_k",
    "score_predictions",
    "triplets_metrics",
    "validate_circo_submission",
    "validate_cirr_submission",
    "write_circo_submission",
    "write_cirr_submission",
]
