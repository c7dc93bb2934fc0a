"""Offline evaluation of drives: which drives and how they are cut into tasks (:mod:`.plan`), what
a worker does with a task (:mod:`.task`), and who runs the tasks: this process (:mod:`.local`) or
Ray workers on this machine or a cluster (:mod:`.ray_runner`)."""
