"""Metrics: detection AP (VOC, COCO), box matching, IoU calibration, paired comparison of two models.

Owns: evaluate, box_matching, calibration, compare. May import: the root modules (structures);
numpy and pycocotools; no torch, no store, no other stage.
"""
