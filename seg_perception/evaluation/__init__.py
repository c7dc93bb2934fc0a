"""Evaluation: how well and how fast the node segments recorded drives, in ONE report format.

Start at :func:`.evaluate.evaluate` (``seg-perception eval``, :mod:`.commands`).

* Data: :mod:`.bag_io` (drive bags: camera images + ground truth, read and written with
  ``rosbags``), :mod:`.cityscapes_folder` (Cityscapes layout <-> bag), :mod:`.sample_drive`
  (the synthetic drive of the demo and the tests).
* Offline, many drives: :mod:`.drives` -- :mod:`~.drives.plan` (which drives, tags, tasks),
  :mod:`~.drives.task` (a worker: frames through the engine), :mod:`~.drives.local` (this
  process), :mod:`~.drives.ray_runner` (Ray workers).
* Live, through the node over DDS: :mod:`.live` -- :mod:`~.live.node_process`,
  :mod:`~.live.probe`, :mod:`~.live.replay`, :mod:`~.live.run`.
* Results and report: :mod:`.ledger` (per-frame records of a camera), :mod:`.metrics`
  (Cityscapes metrics), :mod:`.results` (cameras -> drives -> pooled, by summing confusion
  matrices), :mod:`.report` (report.json, report.md, frames.csv), :mod:`.plots`, :mod:`.overlays`.

Images are converted and decoded by the node's own code (:func:`seg_perception.compressed.message_to_rgb`).
"""
