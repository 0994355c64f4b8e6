"""Bags -> synchronised frames -> paired point / pixel / superpixel training samples."""
