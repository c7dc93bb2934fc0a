"""Real-time semantic segmentation for ROS 2.

The package is layered so that data flows one way: ``node`` (ROS adapter) -> ``engine``
(device, precision, pre/post-processing) -> ``models`` (networks returning logits). Only
``node`` and ``evaluation.live`` (the replay through the node) import ROS; everything else runs
without it.
"""

__version__ = "0.1.0"
