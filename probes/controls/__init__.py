"""Control baselines: what a probe learns without an encoder, and the floor.

- ``image-stats``: the same linear probe on the same folds over simple image statistics (a
  32-bin intensity histogram of the [0, 1] image, its height and width) and manifest metadata
  columns the user names (:mod:`probes.controls.image_stats`): what is learnable from
  acquisition and metadata alone (a portable film, a scanner's size, the view);
- ``shuffled-label``: the linear probe on an encoder's features with the training labels
  permuted (:class:`probes.controls.shuffled.ShuffledLabelProbe`), validation and test truth
  kept: the floor any real signal must clear.

``probes.run_control`` / ``probes control`` run them (:mod:`probes.controls.run`).
"""
