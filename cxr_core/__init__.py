"""The core every other package imports: what an image is and what a record holds.

`contract` (tf.Example keys, classes, splits, shard naming, size limits, serving names),
`imaging` (the one decode → normalise → frame → resize, from file bytes to a uint8
square, used for training and prediction alike), `augmentation` (the augmentation
parameters, and the offline copies), `rejection` (why an input did not become a
record) and `decision_rule` (from probabilities to a class). It imports neither Beam,
TensorFlow nor any other package of this project, so each of them can import it.
"""
