"""Logic of the live ROS nodes, ROS-free: the segmenter's newest-only worker and latency statistics
(:mod:`.segment`), continual pretraining over a recorder's shards (:mod:`.pretrain`), their settings
(:mod:`.config`)."""
