"""Downstream semantic segmentation: class maps, label-fraction splits, metrics, losses and reports."""
