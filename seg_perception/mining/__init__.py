"""Mining: find the frames of recorded drives that the model is unsure of (``seg-perception mine``).

A team's work after deployment is to find where the model fails on their own drives and to fix it
with a few hundred labelled frames. Mining runs the model over drives that have no ground truth
(any camera, raw or compressed images), scores every frame by how unsure the model is, drops
near-duplicates and writes the top frames as a Cityscapes folder with the model's labels as
pseudo-labels, ready to be corrected in a labelling tool and trained on (``train --data DIR``).

* :mod:`.scores`: how unsure the model is about a frame (the choice and why).
* :mod:`.job`: what a worker does with a task: every frame scored, a small thumbnail kept.
* :mod:`.select`: ranking, the documented tie-break, and near-duplicate suppression.
* :mod:`.export`: the output folder: images, pseudo-labels, ``mined.csv``, ``contact_sheet.png``.
* :mod:`.mine`: one mining run, :func:`~.mine.mine` (planning, runners, failed drives, summary).
* :mod:`.command`: the CLI subcommand.

The drives, tasks and runners are the evaluation's (:mod:`seg_perception.evaluation.drives`): one
process or Ray workers, a failed drive reported while the others are mined.
"""
