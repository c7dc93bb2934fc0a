"""Replay evaluation: rosbag2 reading/writing, Cityscapes metrics, reports."""
