"""Deployment: model packages and one inference engine over the torch, spconv, ONNX Runtime and TensorRT
backends (:func:`lidar_ssl_core.deploy.engine.load_engine`), and the segmented-cloud layout shared by
``lidar-ssl segment`` and the live node (:mod:`lidar_ssl_core.deploy.cloud`)."""
