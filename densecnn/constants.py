"""Values several layers share (data files, losses, metrics, pictures), defined once."""

#: The label of unlabelled / "don't care" pixels in semantic label maps (PNG ``labels/`` files, NYU's class 0):
#: ignored by the loss (``F.cross_entropy(ignore_index=...)``), by the metrics and drawn black in pictures.
IGNORE_LABEL = 255
