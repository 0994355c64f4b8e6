"""On-vehicle recording and replay, ROS-free: what the ``fleet_recorder`` and ``bag_player`` nodes run.

- :mod:`.cdr`: header stamp and frame id of a serialized (CDR) message, without deserializing it;
- :mod:`.shards`: rotating, crash-safe mcap shards with a disk quota and disk-full handling;
- :mod:`.keep`: which synchronized samples are worth keeping (keyframe rate, ego travel, low confidence);
- :mod:`.ring`: the last N seconds of every topic, for on-demand snapshots;
- :mod:`.recorder`: the recorder itself (synchronizer + keep policy + bounded queue + writer thread);
- :mod:`.player`: replaying a bag's messages at a chosen rate through any publish function;
- :mod:`.calibration_file`: static extrinsics from a YAML file when ``/tf_static`` is not available.
"""
