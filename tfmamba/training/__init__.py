"""The pieces of the fold trainer (`tfmamba.train.train_fold`): data loaders and input statistics,
the distributed helpers, one epoch of training and one evaluation, and the output folder."""
