"""Downstream semantic segmentation: class maps, label-fraction splits, labelled sweeps, probing and
fine-tuning, metrics, the Lovasz loss, reports and segmented bags.

The modules are imported where used (``from lidar_ssl_core.downstream.train import SegmentationTrainer``):
``lidar_ssl_core.config`` imports ``downstream.config``, so this package must stay light to import.
"""
