"""Prediction: a detector over image files (inference), pooled image embeddings, prediction files.

Owns: inference (batched prediction, device choice), embedding (features `typical` clusters, cached
by content hash), files (VOC/COCO prediction files in and out). May import: the root modules,
formats/, detectors/; files.py alone may hand a pool to scale.ray_scoring (--workers).
"""
