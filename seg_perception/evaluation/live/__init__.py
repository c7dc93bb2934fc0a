"""Live evaluation: one drive replayed through a ``seg_node`` process over DDS, as on the car.

:mod:`.node_process` starts and stops the node and reads its ``/diagnostics``; :mod:`.probe` is
the evaluator's end of DDS; :mod:`.replay` publishes on the recorded schedule and reconciles
every frame with the node's books; :mod:`.run` turns a drive into camera results, like an
offline worker does.
"""
