"""The fold trainer, `tfmamba.training.fold.train_fold`, and its pieces: the fold's datasets and loaders
(`loaders`), the input standardisation (`input_norm`), the distributed helpers, one epoch of training and
one evaluation (`loop`), and the output folder and `load_trained_model` (`outputs`)."""
